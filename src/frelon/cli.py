"""The `frelon` command: every pipeline step, runnable outside Snakemake too."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Callable

from frelon.errors import FrelonError, FrelonWarning

EXAMPLE_RUN = "results/runs/<study>/<experiment>"


def version() -> str:
    """The installed frelon's version (its package metadata), else the source tree's `__version__`."""
    from importlib import metadata

    try:
        return metadata.version("frelon")
    except metadata.PackageNotFoundError:
        import frelon

        return getattr(frelon, "__version__", "unknown")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help; not the None or False of an option that is off unless given,
    whose help says what happens without it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def number(kind: type, low: float, high: float | None = None, above: bool = False,
           below: bool = False) -> Callable[[str], float]:
    """An argparse type: a `kind` (int or float) from `low` (`above`: above it) to `high` (`below`: under it)
    or with no upper end; a value out of range, NaN, or not a number is an error naming the range."""
    noun = "a whole number" if kind is int else "a number"
    if high is not None:
        wanted = f"{noun} in {'(' if above else '['}{low:g}, {high:g}{')' if below else ']'}"
    else:
        wanted = f"{noun} above {low:g}" if above else f"{noun}, {low:g} or more"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}: give {wanted}") from None
        in_range = (value > low if above else value >= low) and (
            high is None or (value < high if below else value <= high))
        if not in_range or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {wanted}")
        return value

    return parse


WHOLE = number(int, 1)  # counts, sizes, threads, frame steps
SCORE = number(float, 0, 1)
SHARE = number(float, 0, 1, below=True)  # a split's share of the images
RATE = number(float, 0, above=True)
TOLERANCE = number(float, 0)


def check_file_out(path: str, option: str, example: str) -> None:
    """Stop before any work when `path`, a file to write, cannot be one: it is a folder, or a file stands
    where one of its folders would be (found otherwise only when writing, after the work)."""
    target = Path(path)
    if target.is_dir():
        raise FrelonError(f"{option} {target} is a folder: name a file to write, e.g. {target / example}")
    _check_parents(target, option)


def check_folder_out(path: str, option: str) -> None:
    """Stop before any work when `path`, a folder to write into, cannot be one (a file is there, or where one
    of its folders would be)."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise FrelonError(f"{option} {target} is a file, not a folder: name a folder for the drawings")
    _check_parents(target, option)


def _check_parents(target: Path, option: str) -> None:
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FrelonError(f"{option} {target}: {parent} is a file, not a folder; choose another path, or "
                                  f"move {parent} away")
            return


def warn(command: str, message: str) -> None:
    """One line on stderr; the command goes on."""
    print(f"frelon {command}: warning: {message}", file=sys.stderr)


def _skipped(command: str, unreadable: list) -> None:
    """The files a command could not read, and so skipped: how many and which."""
    if unreadable:
        names = ", ".join(str(path) for path, *_ in unreadable)
        warn(command, f"{len(unreadable)} unreadable file{'s' * (len(unreadable) != 1)} skipped: {names}")


def read_spec(path: str) -> dict:
    """A run's spec.json; a missing or foreign file is named with its fix."""
    where = f"give a run's spec.json ({EXAMPLE_RUN}/spec.json, which the pipeline writes)"
    if Path(path).is_dir():
        beside = Path(path) / "spec.json"
        raise FrelonError(f"{path} is a folder: " + (f"pass {beside}" if beside.is_file() else where))
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise FrelonError(f"{path} does not exist: {where}") from None
    except (OSError, ValueError) as exc:  # unreadable, not JSON, not text
        raise FrelonError(f"{path} is not a run's spec.json ({str(exc).splitlines()[0][:200]}): {where}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("train"), dict) or "world_size" not in spec["train"]:
        raise FrelonError(f"{path} is not a run's spec.json (no train.world_size in it): {where}")
    return spec


def _demo_data(args: argparse.Namespace) -> None:
    from frelon.data import demo

    if args.kind == "hornet":
        demo.generate_hornet(args.out, args.presence, args.absence, args.size, args.seed)
    elif args.kind == "source":
        demo.generate_source(args.out, args.per_class, args.size, args.seed)
    elif args.kind == "hornet-detection":
        from frelon.data import demo_hornet_detection

        print(demo_hornet_detection.generate(args.out, args.images, args.size, args.seed))
    else:
        from frelon.data import demo_detection
        from frelon.data.sources import write_checksum

        if args.kind == "voc":
            written = demo_detection.write_voc_archives(args.out, args.images, args.size, seed=args.seed)
        else:
            written = demo_detection.write_coco_archives(args.out, args.images, max(1, args.images // 2), args.size,
                                                         seed=args.seed)
        for path in written.values():
            write_checksum(path)


def _fetch(args: argparse.Namespace) -> None:
    from frelon.data.sources import fetch

    fetch(args.url, args.dest, sha256=args.sha256, sha256_url=args.sha256_url, md5=args.md5)


def _prepare(args: argparse.Namespace) -> None:
    from frelon.data.folder import prepare

    manifest = prepare(args.source, args.classes.split(","), args.val, args.test, args.size, args.seed, args.out,
                       resize=args.resize, on_bad_image=args.on_bad_image)
    print(manifest.groupby(["split", "class"]).size().unstack(fill_value=0).to_string())


def _extract(args: argparse.Namespace) -> None:
    from frelon.data.archives import extract_all

    print(extract_all(args.archives, args.out))


def _voc_to_coco(args: argparse.Namespace) -> None:
    from frelon.data import voc

    coco = voc.write_coco(args.devkit, voc.parse_sets(args.sets), args.out)
    print(f"{args.out}: {len(coco['images'])} images, {len(coco['annotations'])} objects "
          f"({sum(a['iscrowd'] for a in coco['annotations'])} difficult, kept as ignored)")


def _prepare_voc(args: argparse.Namespace) -> None:
    from frelon.data import voc

    print(json.dumps(voc.prepare(args.devkit, args.out, args.train, args.val), indent=2))


def _prepare_coco(args: argparse.Namespace) -> None:
    from frelon.data import coco

    print(json.dumps(coco.prepare(args.root, args.out), indent=2))


def _prepare_detection(args: argparse.Namespace) -> None:
    from frelon.data import own_detection

    if args.format == "yolo":
        report = own_detection.prepare_yolo(args.root, args.out, args.classes.split(",") if args.classes else None)
    else:
        report = own_detection.prepare_coco_files(args.out, {"train": (args.train_annotations, args.train_images),
                                                             "val": (args.val_annotations, args.val_images)})
    print(json.dumps(report, indent=2))


def _coco_eval(args: argparse.Namespace) -> None:
    from frelon.atomic import write_json
    from frelon.evaluate.detection import coco_eval

    scores = coco_eval(args.gt, args.dt)
    if args.out:
        write_json(args.out, scores)


def _augment(args: argparse.Namespace) -> None:
    from frelon.data.augment import augment_split

    options = json.loads(args.options) if args.options else {}
    if args.multiplier is not None:
        options["multiplier"] = args.multiplier
    print(json.dumps(augment_split(args.prepared, args.out, options, args.seed), indent=2))


def _launch(args: argparse.Namespace, spec: dict, worker_args: list[str]) -> int:
    from frelon.launch.launcher import launch

    return launch(worker_args, spec["train"]["world_size"], spec.get("device", "auto"), args.threads,
                  as_job=args.as_job)


def _train(args: argparse.Namespace) -> int:
    if args.metrics:
        check_file_out(args.metrics, "--metrics", "metrics.json")
    return _launch(args, read_spec(args.spec), ["train", args.spec, *(["--out", args.metrics] if args.metrics else [])])


def _evaluate(args: argparse.Namespace) -> int:
    from frelon.tasks.trained import load_run

    if args.checkpoint and args.checkpoint_option:
        raise FrelonError(f"two checkpoints, {args.checkpoint} and --checkpoint {args.checkpoint_option}: give one, "
                          f"as the first argument (frelon evaluate CHECKPOINT SPEC --out METRICS.json)")
    checkpoint = args.checkpoint or args.checkpoint_option
    if not checkpoint:
        raise FrelonError(f"no checkpoint: give it first, frelon evaluate {EXAMPLE_RUN}/model.pt "
                          f"{EXAMPLE_RUN}/spec.json --out METRICS.json")
    if Path(checkpoint).suffix == ".json" and Path(args.spec).suffix == ".pt":
        raise FrelonError(f"the checkpoint comes first: frelon evaluate {args.spec} {checkpoint} --out {args.out}")
    spec = read_spec(args.spec)
    check_file_out(args.out, "--out", "metrics.json")
    state = load_run(checkpoint, diverged=True)  # a run that diverged is scored as such
    if state["spec"]["task"] != spec.get("task"):
        raise FrelonError(f"{checkpoint} is a {state['spec']['task']} model but {args.spec} is a {spec.get('task')} "
                          f"spec: give the model.pt of the run this spec.json describes "
                          f"({Path(args.spec).parent / 'model.pt'})")
    return _launch(args, spec, ["evaluate", args.spec, "--checkpoint", checkpoint, "--out", args.out])


def _gpus(args: argparse.Namespace) -> None:
    from frelon.launch.launcher import gpu_count

    print(gpu_count())


def _detect(args: argparse.Namespace) -> None:
    from frelon.atomic import write_json
    from frelon.tasks.detection.inference import detect, detect_frames
    from frelon.tasks.detection.video import DEFAULT_FPS, as_frames

    check_file_out(args.out, "--out", "detections.json")
    if args.counts:
        check_file_out(args.counts, "--counts", "counts.csv")
    if args.draw:
        check_folder_out(args.draw, "--draw")
    unreadable: list = []
    if as_frames(args.images, args.out, args.fps, args.every, args.counts):
        def report(source, frames, per_class):
            found = ", ".join(f"{name} {n}" for name, n in per_class.items() if n) or "nothing"
            print(f"{source.path}: {frames} frame{'s' * (frames != 1)}, {found}")

        table = detect_frames(args.checkpoint, args.images, args.out, counts=args.counts, draw=args.draw,
                              fps=DEFAULT_FPS if args.fps is None else args.fps,
                              every=1 if args.every is None else args.every, flip_test=args.flip_test,
                              min_score=args.min_score, device=args.device, recursive=args.recursive,
                              report=report, unreadable=unreadable)
        print(f"{len(table)} detections: {args.out}" + (f"; counts per minute: {args.counts}" if args.counts else ""))
        _skipped(args.command, unreadable)
        return

    found = detect(args.checkpoint, args.images, flip_test=args.flip_test, min_score=args.min_score,
                   device=args.device, recursive=args.recursive, draw=args.draw, unreadable=unreadable)
    write_json(args.out, [d for _, _, detections in found for d in detections])
    for path, _, detections in found:
        print(f"{path}: " + (", ".join(f"{d['category']} {d['score']:.2f}" for d in detections) or "nothing"))
    _skipped(args.command, unreadable)


def _classify(args: argparse.Namespace) -> None:
    from frelon.atomic import write_text
    from frelon.tasks.classify import classify

    check_file_out(args.out, "--out", "predictions.csv")
    table = classify(args.checkpoint, args.images, device=args.device, recursive=args.recursive)
    write_text(args.out, table.to_csv(index=False))
    for row in table.itertuples():
        print(f"{row.file}: " + (row.error if isinstance(row.error, str) else f"{row.predicted} {row.probability:.3f}"))
    unreadable = table[table["error"].notna()]
    print(f"{len(table) - len(unreadable)} images classified, {len(unreadable)} unreadable"
          + (f" ({', '.join(unreadable['file'])})" if len(unreadable) else "") + f": {args.out}")
    _skipped(args.command, list(zip(unreadable["file"])))


def _export_weights(args: argparse.Namespace) -> None:
    from frelon.models.weights import export

    print(export(args.checkpoint, args.out))


def _export(args: argparse.Namespace) -> None:
    from frelon.tasks.export import export_onnx

    check_file_out(args.onnx, "--onnx", "model.onnx")
    done = export_onnx(args.checkpoint, args.onnx, images=args.images, tolerance=args.tolerance,
                       recursive=args.recursive)
    source = "generated images" if done["generated"] else "images"
    print(f"{args.onnx}: {done['task']} ({len(done['classes'])} classes), input image (batch, 3, {done['size']}, "
          f"{done['size']}); onnxruntime against PyTorch on {done['images']} {source}, max abs difference "
          f"(tolerance {args.tolerance:g}):")
    for name, difference in done["differences"].items():
        print(f"  {name}: {difference:.3g}")


def _table(args: argparse.Namespace) -> None:
    import pandas as pd

    from frelon.atomic import write_text
    from frelon.report.tables import aggregate, run_table, write_table

    runs = run_table(args.runs, json.loads(args.references) if args.references else None)
    if args.runs_csv:
        write_text(args.runs_csv, runs.to_csv(index=False))
    table = aggregate(runs)
    write_table(table, args.csv, args.md, args.tex)
    missing = runs[runs.status == "missing"]
    print(Path(args.md).read_text())
    if len(missing):
        names = [r.experiment + ("" if pd.isna(r.seed) else f" seed {r.seed}") for r in missing.itertuples()]
        print(f"{len(missing)} of {len(runs)} runs have no metrics.json (shown as missing): {', '.join(names)}")


def _metrics(args: argparse.Namespace) -> None:
    from frelon.report.tables import write_metrics

    write_metrics({Path(p).stem: p for p in args.tables}, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frelon", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"frelon {version()}",
                        help="print frelon's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(parent, name: str, **kwargs) -> argparse.ArgumentParser:  # each with defaults in its --help
        return parent.add_parser(name, formatter_class=HelpFormatter, **kwargs)

    p = command(sub, "demo-data", help="generate the demo's hornet or pretraining source set, its VOC tars and COCO "
                                       "zips (with .sha256 files), or a YOLO hornet detection set")
    p.add_argument("kind", choices=["hornet", "source", "voc", "coco", "hornet-detection"], help="which set")
    p.add_argument("out", help="the folder to write it to")
    p.add_argument("--presence", type=WHOLE, default=140, help="hornet: images with a hornet")
    p.add_argument("--absence", type=WHOLE, default=248, help="hornet: images without one")
    p.add_argument("--per-class", type=WHOLE, default=100, help="source: images per class")
    p.add_argument("--images", type=WHOLE, default=12, help="voc: images per image set; coco: train images (val: "
                                                            "half); hornet-detection: train images (val: a quarter)")
    p.add_argument("--size", type=WHOLE, default=96, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same images")
    p.set_defaults(func=_demo_data)

    p = command(sub, "fetch", help="download a file and verify its SHA-256")
    p.add_argument("url", help="the file's URL")
    p.add_argument("dest", help="where to write it (it appears only once its digest matches)")
    p.add_argument("--sha256", help="full digest or a hex prefix (torchvision's 8 characters)")
    p.add_argument("--sha256-url", help="URL of a checksum file ('<digest>  <name>')")
    p.add_argument("--md5", help="full MD5 digest, for datasets that publish only that (VOC, COCO)")
    p.set_defaults(func=_fetch)

    p = command(sub, "extract", help="extract tar/zip archives into one folder, refusing unsafe members")
    p.add_argument("archives", nargs="+", help="tar or zip files")
    p.add_argument("--out", required=True, help="the folder to extract into")
    p.set_defaults(func=_extract)

    p = command(sub, "voc-to-coco", help="Pascal VOC annotations to a COCO JSON file")
    p.add_argument("devkit", metavar="VOCDEVKIT_DIR", help="the extracted VOCdevkit folder")
    p.add_argument("--sets", required=True, help="YEAR:SET,... e.g. 2007:trainval,2012:trainval or 2007:test")
    p.add_argument("--out", required=True, metavar="FILE.json", help="the COCO JSON file to write")
    p.set_defaults(func=_voc_to_coco)

    p = command(sub, "prepare-voc", help="VOCdevkit -> train.json and val.json (COCO format) + report")
    p.add_argument("devkit", metavar="VOCDEVKIT_DIR", help="the extracted VOCdevkit folder")
    p.add_argument("out", help="the folder to write train.json, val.json and report.json to")
    p.add_argument("--train", default="2007:trainval,2012:trainval", help="YEAR:SET,... of the train split")
    p.add_argument("--val", default="2007:test", help="YEAR:SET,... of the validation split")
    p.set_defaults(func=_prepare_voc)

    p = command(sub, "prepare-coco", help="check an extracted COCO 2017 folder; annotations, categories, report")
    p.add_argument("root", metavar="COCO_DIR", help="the folder holding annotations/, train2017/ and val2017/")
    p.add_argument("out", help="the folder to write the checked annotations and report to")
    p.set_defaults(func=_prepare_coco)

    p = command(sub, "prepare-detection", help="check your own detection set (YOLO folders or COCO JSON files); "
                                               "train.json, val.json (COCO format), categories, report")
    formats = p.add_subparsers(dest="format", required=True)
    q = command(formats, "yolo", help="a YOLO export: data.yaml, images/ and labels/ (Ultralytics, Roboflow)")
    q.add_argument("root", metavar="YOLO_DIR", help="the folder holding data.yaml, or images/{train,val} and "
                                                   "labels/{train,val}")
    q.add_argument("out", help="the folder to write train.json, val.json and report.json to")
    q.add_argument("--classes", help="comma-separated class names in class id order (0, 1, ...); required without "
                                     "data.yaml, else checked against its names")
    q.set_defaults(func=_prepare_detection)
    q = command(formats, "coco", help="COCO instances files of your own, one per split, and their image folders")
    q.add_argument("out", help="the folder to write train.json, val.json and report.json to")
    for split in ("train", "val"):
        q.add_argument(f"--{split}-annotations", required=True, metavar="FILE.json",
                       help=f"the {split} split's COCO instances file")
        q.add_argument(f"--{split}-images", required=True, metavar="DIR", help="the folder file_name is relative to")
    q.set_defaults(func=_prepare_detection)

    p = command(sub, "coco-eval", help="COCO mAP of detections: prints the 12 summary numbers")
    p.add_argument("--gt", required=True, metavar="GT.json", help="the ground truth, a COCO instances file")
    p.add_argument("--dt", required=True, metavar="DETECTIONS.json", help="the detections, COCO results")
    p.add_argument("--out", help="also write the 12 numbers as JSON")
    p.set_defaults(func=_coco_eval)

    p = command(sub, "augment", help="seeded augmented copies of a prepared train split, and a preview grid")
    p.add_argument("prepared", help="a folder `frelon prepare` wrote")
    p.add_argument("out", help="the folder to write the augmented copy to")
    p.add_argument("--multiplier", type=WHOLE, help="images per original in the train split (default 4)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same copies")
    p.add_argument("--options", help="JSON object overriding the transforms' settings (default: none)")
    p.set_defaults(func=_augment)

    p = command(sub, "prepare", help="split a folder-per-class image set and cache it at training size")
    p.add_argument("source", help="a folder with one subfolder of images per class")
    p.add_argument("out", help="the folder to write the splits, manifest.csv and report.json to")
    p.add_argument("--classes", required=True, help="comma-separated class folder names, in label order")
    p.add_argument("--val", type=SHARE, default=0.2, help="share of the images in the validation split")
    p.add_argument("--test", type=SHARE, default=0.2, help="share of the images in the test split")
    p.add_argument("--size", type=WHOLE, required=True, help="side of the centre crop")
    p.add_argument("--resize", type=WHOLE, help="shorter side before the crop (default: --size)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same splits")
    p.add_argument("--on-bad-image", choices=["fail", "skip"], default="fail",
                   help="an unreadable file fails the step, or is left out and counted")
    p.set_defaults(func=_prepare)

    for name, func, help_text in (("train", _train, "train a spec through torchrun"),
                                  ("evaluate", _evaluate, "score a checkpoint on its spec's test split")):
        p = command(sub, name, help=help_text)
        if name == "evaluate":
            p.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                           help=f"model.pt of a run ({EXAMPLE_RUN}/model.pt)")
        p.add_argument("spec", metavar="SPEC", help=f"a run's spec.json ({EXAMPLE_RUN}/spec.json)")
        p.add_argument("--threads", type=WHOLE, help="CPU threads for the job, shared among processes (default: "
                                                     "the machine's cores)")
        p.add_argument("--as-job", action="store_true",
                       help="a pipeline job (Snakemake's rules pass it): if the shell that started it dies, the "
                            "job was reported failed and its outputs removed, so the run stops and writes none")
        if name == "evaluate":
            p.add_argument("--checkpoint", dest="checkpoint_option", metavar="CHECKPOINT",
                           help="the checkpoint, as an option (frelon evaluate SPEC --checkpoint CHECKPOINT)")
            p.add_argument("--out", required=True, metavar="METRICS.json", help="the scores to write")
        else:
            p.add_argument("--metrics", help="then score the test split, in the same processes, into this "
                                             "metrics.json (as `frelon evaluate` would)")
        p.set_defaults(func=func)

    p = command(sub, "gpus", help="print how many GPUs a job may use here (CUDA_VISIBLE_DEVICES respected), "
                                  "for snakemake --resources gpu=$(frelon gpus)")
    p.set_defaults(func=_gpus)

    recursive = "search the folders named recursively"
    device = "where the model runs: auto takes the GPU if there is one"
    p = command(sub, "detect", help="run a trained detector on images, videos or folders of frames: detections "
                                    "with class names")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model.pt of a detection run")
    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="images, folders of images, videos (.mp4 .avi .mov .mkv .webm). With a video among them, or "
                        "--fps, --every, --counts or a .csv --out, inputs are read as frames: a folder is a sequence "
                        "of frames in name order (number them with leading zeros), an image one frame; otherwise "
                        "images are separate photos (COCO-style detections). An image that cannot be read is "
                        "skipped and listed")
    p.add_argument("--out", required=True, metavar="DETECTIONS.json|.csv",
                   help="photos: a JSON list of COCO-style detections (file_name, category, score, bbox). Frames: "
                        "one record per detection (source, frame, time_s, file, category, category_id, score, bbox "
                        "[x, y, w, h] in the frame's pixels), as a JSON list or CSV rows (bbox as x, y, w, h); a "
                        "frame without detections has no row, so rows per frame count its detections")
    p.add_argument("--counts", metavar="COUNTS.csv",
                   help="frames: per source, minute (time_s // 60) and class, the frames looked at, the detections "
                        "scoring --min-score or more (a sum over frames: an insect that stays is counted in every "
                        "frame) and max_per_frame, the most in any one frame: the honest count of the insects in a "
                        "trap")
    p.add_argument("--fps", type=RATE, metavar="RATE",
                   help="a folder of frames' frame rate, for time_s (default 1 frame a second, a timelapse trap's "
                        "pace; a video's timestamps are its own)")
    p.add_argument("--every", type=WHOLE, metavar="N", help="frames: look at every Nth frame only, from the first "
                                                            "(default: every frame)")
    p.add_argument("--draw", metavar="DIR", help="also write each input with its boxes drawn, an image in its own "
                                                 "format: DIR/<name> for an image, DIR/<stem>.mp4 for a video, "
                                                 "DIR/<folder>/<frame> for a folder of frames")
    p.add_argument("-r", "--recursive", action="store_true",
                   help=f"{recursive}: the photos in their subfolders, at any depth, too; read as frames, each "
                        f"subfolder holding images is a sequence of its own (default: only the images directly in a "
                        f"folder named)")
    p.add_argument("--min-score", type=SCORE, default=0.3, help="keep detections scoring at least this")
    p.add_argument("--flip-test", action="store_true", help="average with the mirrored image (slower)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help=device)
    p.set_defaults(func=_detect)

    p = command(sub, "classify", help="run a trained classifier on images: class probabilities per image (CSV)")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model.pt of a classification run")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files, and folders of them (in name order); an image that cannot be read is listed "
                        "with the reason, its probabilities left empty")
    p.add_argument("--out", required=True, metavar="PREDICTIONS.csv",
                   help="a row per image: file, predicted, probability, p_<class> per class, error")
    p.add_argument("-r", "--recursive", action="store_true",
                   help=f"{recursive}: the images in their subfolders, at any depth, too (default: only the images "
                        f"directly in a folder named)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help=device)
    p.set_defaults(func=_classify)

    p = command(sub, "export-weights", help="write a checkpoint's model as torchvision weights + .sha256")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model.pt of a run")
    p.add_argument("out", help="the weights file to write (and OUT.sha256 beside it)")
    p.set_defaults(func=_export_weights)

    p = command(sub, "export", help="write a run's model as ONNX for small devices (preprocessing and classes in its "
                                    "metadata), checked with onnxruntime against PyTorch")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model.pt of a classification or detection run")
    p.add_argument("--onnx", required=True, metavar="MODEL.onnx", help="the ONNX file to write")
    p.add_argument("--images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="check on these images, with the checkpoint's preprocessing (default: generated ones)")
    p.add_argument("-r", "--recursive", action="store_true",
                   help=f"{recursive}: the images in their subfolders, at any depth, too (default: only the images "
                        f"directly in a folder named)")
    p.add_argument("--tolerance", type=TOLERANCE, default=1e-4,
                   help="largest absolute difference between onnxruntime's and PyTorch's outputs that passes")
    p.set_defaults(func=_export)

    p = command(sub, "table", help="one study's table (CSV, Markdown, LaTeX): each experiment's mean, std and n "
                                   "over its seeds, from its runs' metrics.json (a run without one is missing)")
    p.add_argument("runs", nargs="+", help="run folders, or their metrics.json")
    p.add_argument("--csv", required=True, help="the table as CSV")
    p.add_argument("--md", required=True, help="the table as Markdown")
    p.add_argument("--tex", help="LaTeX (booktabs) tabular")
    p.add_argument("--runs-csv", help="one row per run (per seed)")
    p.add_argument("--references", help="JSON {experiment: {value, metric, source}}: published numbers to show beside")
    p.set_defaults(func=_table)

    p = command(sub, "metrics", help="results/metrics.json for dvc from the study tables")
    p.add_argument("tables", nargs="+", help="the study tables' CSV files")
    p.add_argument("--out", required=True, help="the metrics JSON to write")
    p.set_defaults(func=_metrics)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shown = warnings.showwarning

    def show(message, category, *where, **kwargs) -> None:  # frelon's own warnings as one line each
        if issubclass(category, FrelonWarning):
            warn(args.command, str(message))
        else:
            shown(message, category, *where, **kwargs)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", FrelonWarning)
            warnings.showwarning = show
            return args.func(args) or 0
    except FrelonError as exc:
        print(f"frelon {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

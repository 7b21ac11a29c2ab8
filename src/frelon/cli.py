"""The `frelon` command: every pipeline step, runnable outside Snakemake too."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from frelon.errors import FrelonError


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


def _launch(args: argparse.Namespace, worker_args: list[str]) -> int:
    from frelon.train.launcher import launch

    with open(args.spec) as f:
        spec = json.load(f)
    return launch(worker_args, spec["train"]["world_size"], spec["device"], args.threads, as_job=args.as_job)


def _train(args: argparse.Namespace) -> int:
    return _launch(args, ["train", args.spec, *(["--out", args.metrics] if args.metrics else [])])


def _evaluate(args: argparse.Namespace) -> int:
    return _launch(args, ["evaluate", args.spec, "--checkpoint", args.checkpoint, "--out", args.out])


def _gpus(args: argparse.Namespace) -> None:
    from frelon.train.launcher import gpu_count

    print(gpu_count())


def _detect(args: argparse.Namespace) -> None:
    from frelon.atomic import write_json
    from frelon.report.detections import draw, save_grid
    from frelon.tasks.detection.inference import detect, detect_frames
    from frelon.tasks.detection.video import DEFAULT_FPS, as_frames

    if as_frames(args.images, args.out, args.fps, args.every, args.counts):
        def report(source, frames, per_class):
            found = ", ".join(f"{name} {n}" for name, n in per_class.items() if n) or "nothing"
            print(f"{source.path}: {frames} frame{'s' * (frames != 1)}, {found}")

        table = detect_frames(args.checkpoint, args.images, args.out, counts=args.counts, draw=args.draw,
                              fps=DEFAULT_FPS if args.fps is None else args.fps,
                              every=1 if args.every is None else args.every, flip_test=args.flip_test,
                              min_score=args.min_score, device=args.device, report=report)
        print(f"{len(table)} detections: {args.out}" + (f"; counts per minute: {args.counts}" if args.counts else ""))
        return

    found = detect(args.checkpoint, args.images, flip_test=args.flip_test, min_score=args.min_score,
                   device=args.device)
    write_json(args.out, [d for _, _, detections in found for d in detections])
    for path, image, detections in found:
        print(f"{path}: " + (", ".join(f"{d['category']} {d['score']:.2f}" for d in detections) or "nothing"))
        if args.draw:
            save_grid([draw(image, [{**d, "name": d["category"]} for d in detections], min_score=args.min_score)],
                      Path(args.draw) / f"{path.stem}.png", columns=1)


def _classify(args: argparse.Namespace) -> None:
    from frelon.atomic import write_text
    from frelon.tasks.classify import classify

    table = classify(args.checkpoint, args.images, device=args.device)
    write_text(args.out, table.to_csv(index=False))
    for row in table.itertuples():
        print(f"{row.file}: " + (row.error if isinstance(row.error, str) else f"{row.predicted} {row.probability:.3f}"))
    unreadable = table[table["error"].notna()]
    print(f"{len(table) - len(unreadable)} images classified, {len(unreadable)} unreadable"
          + (f" ({', '.join(unreadable['file'])})" if len(unreadable) else "") + f": {args.out}")


def _export_weights(args: argparse.Namespace) -> None:
    from frelon.models.weights import export

    print(export(args.checkpoint, args.out))


def _export(args: argparse.Namespace) -> None:
    from frelon.tasks.export import export_onnx

    done = export_onnx(args.checkpoint, args.onnx, images=args.images, tolerance=args.tolerance)
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
    parser = argparse.ArgumentParser(prog="frelon", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="generate the demo's hornet or pretraining source set, its "
                                         "VOC tars and COCO zips (with .sha256 files), or a YOLO hornet detection set")
    p.add_argument("kind", choices=["hornet", "source", "voc", "coco", "hornet-detection"])
    p.add_argument("out")
    p.add_argument("--presence", type=int, default=140)
    p.add_argument("--absence", type=int, default=248)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--images", type=int, default=12, help="voc: images per image set; coco: train images (val: "
                                                          "half); hornet-detection: train images (val: a quarter)")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("fetch", help="download a file and verify its SHA-256")
    p.add_argument("url")
    p.add_argument("dest")
    p.add_argument("--sha256", help="full digest or a hex prefix (torchvision's 8 characters)")
    p.add_argument("--sha256-url", help="URL of a checksum file ('<digest>  <name>')")
    p.add_argument("--md5", help="full MD5 digest, for datasets that publish only that (VOC, COCO)")
    p.set_defaults(func=_fetch)

    p = sub.add_parser("extract", help="extract tar/zip archives into one folder, refusing unsafe members")
    p.add_argument("archives", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_extract)

    p = sub.add_parser("voc-to-coco", help="Pascal VOC annotations to a COCO JSON file")
    p.add_argument("devkit", metavar="VOCDEVKIT_DIR")
    p.add_argument("--sets", required=True, help="YEAR:SET,... e.g. 2007:trainval,2012:trainval or 2007:test")
    p.add_argument("--out", required=True, metavar="FILE.json")
    p.set_defaults(func=_voc_to_coco)

    p = sub.add_parser("prepare-voc", help="VOCdevkit -> train.json and val.json (COCO format) + report")
    p.add_argument("devkit", metavar="VOCDEVKIT_DIR")
    p.add_argument("out")
    p.add_argument("--train", default="2007:trainval,2012:trainval")
    p.add_argument("--val", default="2007:test")
    p.set_defaults(func=_prepare_voc)

    p = sub.add_parser("prepare-coco", help="check an extracted COCO 2017 folder; annotations, categories, report")
    p.add_argument("root", metavar="COCO_DIR")
    p.add_argument("out")
    p.set_defaults(func=_prepare_coco)

    p = sub.add_parser("prepare-detection", help="check your own detection set (YOLO folders or COCO JSON files); "
                                                 "train.json, val.json (COCO format), categories, report")
    formats = p.add_subparsers(dest="format", required=True)
    q = formats.add_parser("yolo", help="a YOLO export: data.yaml, images/ and labels/ (Ultralytics, Roboflow)")
    q.add_argument("root", metavar="YOLO_DIR", help="the folder holding data.yaml, or images/{train,val} and "
                                                   "labels/{train,val}")
    q.add_argument("out")
    q.add_argument("--classes", help="comma-separated class names in class id order (0, 1, ...); required without "
                                     "data.yaml, else checked against its names")
    q.set_defaults(func=_prepare_detection)
    q = formats.add_parser("coco", help="COCO instances files of your own, one per split, and their image folders")
    q.add_argument("out")
    for split in ("train", "val"):
        q.add_argument(f"--{split}-annotations", required=True, metavar="FILE.json")
        q.add_argument(f"--{split}-images", required=True, metavar="DIR", help="the folder file_name is relative to")
    q.set_defaults(func=_prepare_detection)

    p = sub.add_parser("coco-eval", help="COCO mAP of detections: prints the 12 summary numbers")
    p.add_argument("--gt", required=True, metavar="GT.json")
    p.add_argument("--dt", required=True, metavar="DETECTIONS.json")
    p.add_argument("--out", help="also write the 12 numbers as JSON")
    p.set_defaults(func=_coco_eval)

    p = sub.add_parser("augment", help="seeded augmented copies of a prepared train split, and a preview grid")
    p.add_argument("prepared")
    p.add_argument("out")
    p.add_argument("--multiplier", type=int, help="images per original in the train split (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--options", help="JSON object overriding the transforms' settings")
    p.set_defaults(func=_augment)

    p = sub.add_parser("prepare", help="split a folder-per-class image set and cache it at training size")
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("--classes", required=True, help="comma-separated class folder names, in label order")
    p.add_argument("--val", type=float, default=0.2)
    p.add_argument("--test", type=float, default=0.2)
    p.add_argument("--size", type=int, required=True, help="side of the centre crop")
    p.add_argument("--resize", type=int, help="shorter side before the crop (default: --size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--on-bad-image", choices=["fail", "skip"], default="fail",
                   help="an unreadable file fails the step, or is left out and counted")
    p.set_defaults(func=_prepare)

    for name, func, help_text in (("train", _train, "train a spec through torchrun"),
                                  ("evaluate", _evaluate, "score a checkpoint on the test split")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("spec")
        p.add_argument("--threads", type=int, help="CPU threads for the job, shared among processes")
        p.add_argument("--as-job", action="store_true",
                       help="a pipeline job (Snakemake's rules pass it): if the shell that started it dies, the "
                            "job was reported failed and its outputs removed, so the run stops and writes none")
        if name == "evaluate":
            p.add_argument("--checkpoint", required=True)
            p.add_argument("--out", required=True)
        else:
            p.add_argument("--metrics", help="then score the test split, in the same processes, into this "
                                             "metrics.json (as `frelon evaluate` would)")
        p.set_defaults(func=func)

    p = sub.add_parser("gpus", help="print how many GPUs a job may use here (CUDA_VISIBLE_DEVICES respected), "
                                    "for snakemake --resources gpu=$(frelon gpus)")
    p.set_defaults(func=_gpus)

    p = sub.add_parser("detect", help="run a trained detector on images, videos or folders of frames: detections "
                                      "with class names")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model.pt of a detection run")
    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="images, folders of images, videos (.mp4 .avi .mov .mkv .webm). With a video among them, or "
                        "--fps, --every, --counts or a .csv --out, inputs are read as frames: a folder is a sequence "
                        "of frames in name order (number them with leading zeros), an image one frame; otherwise "
                        "images are separate photos (COCO-style detections)")
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
    p.add_argument("--fps", type=float, metavar="RATE",
                   help="a folder of frames' frame rate, for time_s (default 1 frame a second, a timelapse trap's "
                        "pace; a video's timestamps are its own)")
    p.add_argument("--every", type=int, metavar="N", help="frames: look at every Nth frame only, from the first "
                                                          "(default: every frame)")
    p.add_argument("--draw", metavar="DIR", help="also write each input with its boxes drawn: DIR/<name>.png for an "
                                                 "image, DIR/<stem>.mp4 for a video, DIR/<folder>/<frame>.png for a "
                                                 "folder of frames")
    p.add_argument("--min-score", type=float, default=0.3, help="keep detections scoring at least this")
    p.add_argument("--flip-test", action="store_true", help="average with the mirrored image (slower)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(func=_detect)

    p = sub.add_parser("classify", help="run a trained classifier on images: class probabilities per image (CSV)")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model.pt of a classification run")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--out", required=True, metavar="PREDICTIONS.csv")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(func=_classify)

    p = sub.add_parser("export-weights", help="write a checkpoint's model as torchvision weights + .sha256")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.set_defaults(func=_export_weights)

    p = sub.add_parser("export", help="write a run's model as ONNX for small devices (preprocessing and classes in "
                                      "its metadata), checked with onnxruntime against PyTorch")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model.pt of a classification or detection run")
    p.add_argument("--onnx", required=True, metavar="MODEL.onnx")
    p.add_argument("--images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="check on these images, with the checkpoint's preprocessing (default: generated ones)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest absolute difference between onnxruntime's and PyTorch's outputs that passes")
    p.set_defaults(func=_export)

    p = sub.add_parser("table", help="one study's table (CSV, Markdown, LaTeX): each experiment's mean, std and n "
                                      "over its seeds, from its runs' metrics.json (a run without one is missing)")
    p.add_argument("runs", nargs="+", help="run folders, or their metrics.json")
    p.add_argument("--csv", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--tex", help="LaTeX (booktabs) tabular")
    p.add_argument("--runs-csv", help="one row per run (per seed)")
    p.add_argument("--references", help="JSON {experiment: {value, metric, source}}: published numbers to show beside")
    p.set_defaults(func=_table)

    p = sub.add_parser("metrics", help="results/metrics.json for dvc from the study tables")
    p.add_argument("tables", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_metrics)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except FrelonError as exc:
        print(f"frelon {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

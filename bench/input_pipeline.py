"""Input pipeline: frelon's training loaders against the usual PIL ones, on the same JPEGs and workers.

    python bench/input_pipeline.py                                   # CPU: loader images/s and ratios
    python bench/input_pipeline.py --device cuda --images 4000 --detection-images 800   # + keeps the GPU fed?

Classification at `--size` (224): `--images` generated hornet JPEGs (ImageFolder layout, 2 classes)
go through frelon's prepare step (checked, resized and cropped once, cached as uint8 tensors); one
epoch of frelon's training set (online `mirror`, normalised) is timed against
`torchvision.datasets.ImageFolder` decoding the same JPEGs with PIL every epoch (RandomResizedCrop,
flip, ToTensor, Normalize). Detection at `--detection-size` (512): generated COCO-layout JPEGs
through frelon's detection loader (letterbox, the paper's scale/shift/flip/colour augmentation,
CenterNet's heatmap targets) against a PIL loader that only letterboxes, flips and normalises.
Same batch, workers and pinning on both sides, and both keep their workers from epoch to epoch, as
frelon's engine does (`persistent_workers`); after one untimed epoch each, epochs alternate and the
median is reported. Target: frelon's loader >= 3x the PIL one. Then what the workers deliver:
uint8 batches with their draws (the engine's on a GPU) against the float32 batches it made before,
with `--workers` and with none, what `workers: auto` picks for them on a GPU (target >= 4x), and
the rate with every online augmentation (affine, colour, noise, erasing: draws in the workers,
transforms batched where the batch trains).
Beside it, each sample's work alone (one process, one thread, no batching or transfer between
processes): what the loader would reach if the workers' hand-over of float batches cost nothing.

On a GPU, "keeps the GPU fed": the loader's images/s divided by the training images/s of ResNet-18
at 224 and of CenterNet-ResNet-18 at 512 (bf16, channels-last, synthetic batches already on the
GPU); target >= 1.5. On a CPU only the loader rates are reported: the ratio is GPU-only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

TARGET, FED_TARGET = 3.0, 1.5
DETECTION_WORK_MS = 8.0  # a detection sample's whole CPU work at 512 px, one thread
UINT8_TARGET = 4.0  # uint8 batches against the float32 batches the loader delivered before, same workers
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def epoch_rate(loader: DataLoader, device: torch.device, finish: bool = True) -> float:
    """Images/s of one pass, each batch ready for the network on `device` (a raw batch of uint8 images is
    moved there and finished: augmented, scaled and normalised, as the engine does), or with `finish`
    False, as the loader delivers it."""
    from frelon.train.engine import move

    start, seen = time.perf_counter(), 0
    for batch in loader:
        if hasattr(batch, "finish") and finish:
            batch = move(batch, device, channels_last=False).finish()
        seen += len(batch[0])
    common.sync(device)
    return seen / (time.perf_counter() - start)


def per_image_ms(dataset: Dataset, n: int = 32, whole: bool = False) -> float:
    """Median milliseconds of one sample's work in this process on one thread, as in a loader worker:
    what the loader costs before batching and the workers' transfer to the main process (`whole`: the
    sample as a batch of one, finished as the dataset finishes its batches)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    for i in range(min(n, len(dataset))):
        start = time.perf_counter()
        dataset.__getitems__([i]) if whole else dataset[i]
        times.append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    return 1000 * statistics.median(times)


def work_rows(label: str, ours: Dataset, theirs: Dataset, names: tuple[str, str]) -> tuple[list[dict], dict]:
    mine, base = per_image_ms(ours), per_image_ms(theirs)
    return ([common.row(f"{label}: {names[0]} per-image work (1 thread)", round(mine, 3), "ms"),
             common.row(f"{label}: {names[1]} per-image work (1 thread)", round(base, 3), "ms")],
            {"per_image_ms": {names[0]: round(mine, 3), names[1]: round(base, 3)}})


def ratio_rows(label: str, mine: float, base: float, ratio_name: str, names: tuple[str, str]) -> list[dict]:
    """The ratio of two loaders' images/s against the target, then each loader's rate."""
    ratio = mine / base
    return [common.row(f"{label}: {ratio_name}", round(ratio, 2), "x", f">= {TARGET}", ratio >= TARGET),
            common.row(f"{label}: {names[0]}", round(mine, 1), "images/s"),
            common.row(f"{label}: {names[1]}", round(base, 1), "images/s")]


def compare(ours: Dataset, theirs: Dataset, args: argparse.Namespace, batch: int, collate=None,
            their_collate=None, finish: tuple[bool, bool] = (True, True),
            workers: int | None = None) -> tuple[float, float, list, list]:
    """Median images/s of frelon's and the baseline's loader over alternating epochs (`workers`: the
    loader processes of both, `--workers` unless given)."""
    workers = args.workers if workers is None else workers
    if len(ours) < batch:  # drop_last would leave an epoch of nothing to time
        raise SystemExit(f"input_pipeline: {len(ours)} training images, fewer than a batch of {batch}: "
                         f"give more images (--images, --detection-images) or a smaller batch")
    options = {"shuffle": True, "num_workers": workers, "pin_memory": args.device == "cuda", "drop_last": True,
               "persistent_workers": workers > 0}
    loaders = DataLoader(ours, batch, collate_fn=collate, **options), \
        DataLoader(theirs, batch, collate_fn=their_collate, **options)
    mine, base = [], []
    for epoch in range(args.epochs + 1):  # the first, untimed, starts the workers
        if hasattr(ours, "set_epoch"):
            ours.set_epoch(epoch)
        rates = [epoch_rate(loader, torch.device(args.device), done) for loader, done in zip(loaders, finish)]
        if epoch:
            mine.append(rates[0])
            base.append(rates[1])
    return statistics.median(mine), statistics.median(base), mine, base


class PilDetection(Dataset):
    """The usual detection loader: PIL decode, letterbox to `size`, flip, ToTensor, Normalize; boxes scaled."""

    def __init__(self, dataset, size: int):
        from torchvision import transforms

        self.files = [dataset.image_root / info["file_name"] for info in dataset.images]
        self.boxes = [torch.tensor(info["boxes"], dtype=torch.float32).reshape(-1, 4) for info in dataset.images]
        self.size = size
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as opened:
            image = opened.convert("RGB")
        scale = self.size / max(image.size)
        w, h = round(image.width * scale), round(image.height * scale)
        canvas = Image.new("RGB", (self.size, self.size))
        canvas.paste(image.resize((w, h), Image.Resampling.BILINEAR), ((self.size - w) // 2, (self.size - h) // 2))
        boxes = self.boxes[i] * scale
        if torch.rand(1) < 0.5:
            canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self.to_tensor(canvas), boxes


def boxes_collate(samples):
    return torch.stack([s[0] for s in samples]), [s[1] for s in samples]


def training_rate(model: torch.nn.Module, batch: int, size: int, steps: int, loss_of, device) -> float:
    """Training images/s on one synthetic batch resident on the device: what the loader has to keep up with."""
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(steps + 3):
        common.sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_of(model(x))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        common.sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def classification(root: Path, args: argparse.Namespace) -> tuple[list[dict], dict]:
    from torchvision import datasets, transforms

    from frelon.data.dataset import CachedSplit, collate

    start = time.perf_counter()
    raw = common.hornet_jpegs(root, args.images, args.jpeg_size)
    prepared = common.prepared_hornet(raw, root / "prepared", args.size)
    prepare_seconds = time.perf_counter() - start
    preprocessing = {"resize": args.size, "crop": args.size, "mean": MEAN, "std": STD}
    # the training default; uint8 batches finished on the GPU, as the engine has them there
    ours = CachedSplit(prepared / "train.pt", preprocessing, ["mirror"], raw=args.device == "cuda")
    theirs = datasets.ImageFolder(str(raw), transforms.Compose([
        transforms.RandomResizedCrop(args.size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(MEAN, STD)]))
    mine, base, mine_all, base_all = compare(ours, theirs, args, args.batch, collate)
    rows = ratio_rows(f"loader {args.size}px", mine, base, "prepared hornet / ImageFolder+PIL",
                      ("frelon prepared (mirror)", "ImageFolder + PIL"))
    more, work = work_rows(f"loader {args.size}px", ours, theirs, ("frelon", "ImageFolder"))
    # what the loader delivers: uint8 batches and their draws against the float32 batches it made before,
    # with the same workers: --workers, and none (what `workers: auto` picks for them on a GPU)
    uint8 = CachedSplit(prepared / "train.pt", preprocessing, ["mirror"], raw=True)
    floats = CachedSplit(prepared / "train.pt", preprocessing, ["mirror"], raw=False)
    delivered = {}
    for workers in dict.fromkeys((args.workers, 0)):
        raw_rate, float_rate, raw_all, float_all = compare(uint8, floats, args, args.batch, collate, collate,
                                                           finish=(False, True), workers=workers)
        ratio = raw_rate / float_rate
        judged = workers == 0
        rows += [common.row(f"loader {args.size}px, {workers} workers: uint8 / float32 batches delivered (mirror)",
                            round(ratio, 2), "x", f">= {UINT8_TARGET}" if judged else None,
                            ratio >= UINT8_TARGET if judged else None),
                 common.row(f"loader {args.size}px, {workers} workers: uint8 / float32 batches delivered",
                            f"{raw_rate:.0f} / {float_rate:.0f}", "images/s")]
        delivered[workers] = {"uint8": raw_all, "float32": float_all}
    # every online augmentation: the draws in the workers, the batched transforms where the batch trains
    augmented = CachedSplit(prepared / "train.pt", preprocessing, ["mirror", "affine", "colour", "noise", "erasing"],
                            raw=True)
    every = compare(augmented, floats, args, args.batch, collate, collate)[2]
    rows.append(common.row(f"loader {args.size}px: every online augmentation, finished on {args.device}",
                           round(statistics.median(every), 1), "images/s"))
    return rows + more, {"classification": {**work, "frelon": mine_all, "imagefolder": base_all, "loader": mine,
                                            "delivered_by_workers": delivered,
                                            "every_augmentation": every,
                                            "train_images": len(ours), "jpeg_size": args.jpeg_size,
                                            "prepare_seconds": round(prepare_seconds, 1)}}


def detection(root: Path, args: argparse.Namespace) -> tuple[list[dict], dict]:
    from frelon.spec import DETECTION_DEFAULTS
    from frelon.tasks.detection.data import DetectionSet, collate

    size = args.detection_size
    prepared = common.prepared_coco(root / "coco", train=args.detection_images, val=2, size=size * 15 // 16)
    preprocessing = {"input_size": size, "mean": MEAN, "std": STD}
    # batches finished where they train, as the engine has them: on a GPU there, on a CPU in the workers
    ours = DetectionSet(prepared, "train", preprocessing, DETECTION_DEFAULTS, train=True, raw=args.device == "cuda")
    theirs = PilDetection(ours, size)
    mine, base, mine_all, base_all = compare(ours, theirs, args, args.detection_batch, collate, boxes_collate)
    rows = ratio_rows(f"loader {size}px", mine, base, "frelon detection / PIL letterbox",
                      ("frelon detection (augment + targets)", "PIL letterbox + flip"))
    more, work = work_rows(f"loader {size}px", ours, theirs, ("frelon", "PIL"))
    # the whole of a sample's work on a CPU: decode, warp, boxes, then colour, normalisation and targets
    # (on a GPU run the second half runs on the GPU, on the batch)
    ours.raw = False
    whole = per_image_ms(ours, whole=True)
    more.append(common.row(f"loader {size}px: frelon per-image work with colour and targets (1 thread)",
                           round(whole, 3), "ms", f"<= {DETECTION_WORK_MS}", whole <= DETECTION_WORK_MS))
    work["per_image_ms"]["frelon_finished"] = round(whole, 3)
    return rows + more, {"detection": {**work, "frelon": mine_all, "pil": base_all, "images": len(ours),
                                       "loader": mine}}


def fed(details: dict, args: argparse.Namespace) -> list[dict]:
    """Loader images/s over training images/s, at 224 (ResNet-18) and 512 (CenterNet)."""
    metrics = [f"loader/training ResNet-18 {args.size}px", f"loader/training CenterNet {args.detection_size}px"]
    if args.device != "cuda":
        return [common.skipped_row(m, "GPU-only (training rate of a GPU)", f">= {FED_TARGET}") for m in metrics]
    from frelon.models.centernet import CenterNet
    from frelon.models.resnet import ResNet

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    rates = {"resnet": training_rate(ResNet("resnet18", 1000), args.train_batch, args.size, 20,
                                     lambda out: out.float().logsumexp(1).mean(), device),
             "centernet": training_rate(CenterNet(80), args.detection_train_batch, args.detection_size, 10,
                                        lambda out: sum(o.float().square().mean() for o in out.values()), device)}
    details["training_images_per_second"] = {k: round(v, 1) for k, v in rates.items()}
    rows = []
    for metric, loader, rate, name in zip(metrics, (details["classification"]["loader"],
                                                    details["detection"]["loader"]), rates.values(), rates):
        ratio = loader / rate
        rows += [common.row(metric, round(ratio, 2), "x", f">= {FED_TARGET}", ratio >= FED_TARGET),
                 common.row(f"{name} training bf16 CL (synthetic batch)", round(rate, 1), "images/s")]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=224, help="classification training size")
    parser.add_argument("--jpeg-size", type=int, default=256, help="side of the generated hornet JPEGs")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--detection-size", type=int, default=512)
    parser.add_argument("--detection-images", type=int, default=64)
    parser.add_argument("--detection-batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=common.cpu_count(), help="default: this machine's cores")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of each loader, alternating, after an untimed one")
    parser.add_argument("--train-batch", type=int, default=256, help="GPU: ResNet-18 training batch")
    parser.add_argument("--detection-train-batch", type=int, default=32, help="GPU: CenterNet training batch")
    common.arguments(parser, "input_pipeline")
    args = parser.parse_args()
    if not common.cuda_or_skip(args, "input_pipeline"):
        return 0
    if reason := common.missing("pandas"):  # frelon's prepare step writes its manifest with pandas
        return common.skip(args, "input_pipeline", reason)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        rows, details = classification(Path(tmp), args)
        more, detail = detection(Path(tmp), args)
    rows += more
    details.update(detail)
    rows += fed(details, args)
    common.write(args, "input_pipeline", rows, args.device, workers=args.workers, batch=args.batch,
                 detection_batch=args.detection_batch, **details)
    return 0


if __name__ == "__main__":
    sys.exit(main())

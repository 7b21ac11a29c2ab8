"""The one training engine: loop, devices, precision, distribution, schedule, checkpoints, logging.

A task (classification, detection) supplies its model, data, loss and evaluation; everything
else happens here, top to bottom, the same way for every experiment of the project.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from frelon import atomic
from frelon.atomic import torch_save
from frelon.data.dataset import loader_workers
from frelon.errors import FrelonError
from frelon.models import checkpointing
from frelon.tasks.base import Task
from frelon.train import checkpoints
from frelon.parallel import parentage
from frelon.parallel import preemption as stopping
from frelon.parallel.distributed import World, all_gather_objects, all_reduce_max, all_reduce_sum, barrier
from frelon.train.history import History, peak_memory_mb
from frelon.train.optim import build_optimizer
from frelon.parallel.preemption import Preempted, Preemption, StopRequested
from frelon.train.samplers import ResumableSampler
from frelon.train.schedules import build_scheduler

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX, Arm BF16), where autocast's
    bf16 is faster than float32. torch.ops.mkldnn._is_mkldnn_bf16_supported() also says yes for any
    AVX512BW CPU, which only emulates it."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith(("flags", "Features"))), [])
    except OSError:  # not Linux
        return False
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(flags))


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run uses; `auto`: on a GPU, bf16 where it computes it natively (compute capability
    8.0 on: Ampere, Hopper...), else fp16 with a loss scaler (V100, T4, RTX 20xx emulate bf16, slower than
    fp32); on a CPU, bf16 with AVX512-BF16, AMX or Arm BF16, else fp32. The others as they are."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def configure_backends(device: torch.device) -> None:
    """cuDNN picks its fastest convolution algorithms for the run's shapes (fixed within a run): not
    bit-reproducible on a GPU, which the CPU runs are."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def move(batch: Any, device: torch.device, channels_last: bool) -> Any:
    """Put a batch (tensors in tuples, lists, dicts) on the device; images in channels-last if asked."""
    if isinstance(batch, torch.Tensor):
        fmt = torch.channels_last if channels_last and batch.ndim == 4 else torch.preserve_format
        return batch.to(device, non_blocking=True, memory_format=fmt)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a NamedTuple (a raw batch)
        return type(batch)(*(move(b, device, channels_last) for b in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: move(v, device, channels_last) for k, v in batch.items()}
    return batch


def state_dir(spec: dict) -> Path:
    return Path(spec["output"]) / "state"


def should_compile(setting: bool | str, device: torch.device) -> bool:
    """Whether a run on `device` torch.compiles its model, for `train.compile`: true,
    false, or auto, which compiles on a GPU only: there the compiled step is faster, gradient
    checkpointing's recomputation included, while on a CPU a short run would spend minutes compiling."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def _wrap(model: nn.Module, cfg: dict, world: World) -> nn.Module:
    """DDP (with SyncBatchNorm if asked) and torch.compile (train.compile; auto: on a GPU) around the bare model."""
    net = model
    if cfg.get("sync_bn"):
        if world.device.type != "cuda":
            raise FrelonError("train.sync_bn needs GPUs (SyncBatchNorm is GPU-only); set it to false on CPU")
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if world.world_size > 1:
        net = DistributedDataParallel(net, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    if should_compile(cfg.get("compile", False), world.device):
        net = torch.compile(net)
    return net


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler, grad_clip) -> float:
    """Clip (if asked), step the optimizer through the grad scaler, advance the schedule; returns the lr used."""
    if grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    lr = optimizer.param_groups[0]["lr"]
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return lr


class _Diverged(Exception):
    """The loss became non-finite on some rank and the config says to end the run there."""


def _agree_to_stop(nonfinite: torch.Tensor, preemption: Preemption, world: World, step: int, epoch: int,
                   state_path: Path, on_divergence: str) -> bool:
    """All ranks learn whether any saw a non-finite loss or was asked to stop (True).

    A non-finite loss is an error (`train.on_divergence: fail`), or ends the run as diverged
    (`stop`: a learning-rate sweep expects some runs to blow up and reports where they did).
    """
    requested = torch.tensor(float(preemption.requested), device=world.device)
    flags = all_reduce_max(torch.stack([nonfinite, requested]))
    if flags[0] > 0:
        if on_divergence == "stop":
            raise _Diverged()
        raise FrelonError(
            f"the loss became NaN or infinite by iteration {step} (epoch {epoch + 1}); "
            f"last good checkpoint: {state_path if state_path.exists() else 'none'}. "
            f"Lower the learning rate, set train.grad_clip, or use bf16 instead of fp16 "
            f"(or train.on_divergence: stop to record the run as diverged)."
        )
    return bool(flags[1] > 0)


def _on(value: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`value` as float64 on `device`; a host tensor's copy does not wait for the device's queued work."""
    value = value.detach()
    return value.to(torch.float64) if value.device == device else value.to(device, torch.float64, non_blocking=True)


def _accumulate(sums: dict[str, torch.Tensor], stats: dict[str, torch.Tensor], device: torch.device) -> None:
    """Add a micro-batch's per-sample sums (some computed on the host, as its sample count) to the epoch's."""
    for key, value in stats.items():
        sums[key] = sums[key] + _on(value, device) if key in sums else _on(value, device)


def _epoch_means(sums: dict[str, torch.Tensor], timed: torch.Tensor) -> tuple[dict[str, float], float]:
    """Per-sample means of the task's sums over every rank (`train_<name>`), and the samples all ranks
    processed while this process timed the epoch (`timed`: this rank's; after a resume, fewer than the
    epoch's, whose sums include the batches done before the interruption)."""
    keys = list(sums)
    *values, timed_total = all_reduce_sum(torch.stack([*(sums[k] for k in keys), timed])).tolist()
    totals = dict(zip(keys, values))
    samples = totals.pop("samples")
    return {f"train_{k}": v / samples for k, v in totals.items()}, timed_total


def _group_size(batch_in_epoch: int, accumulate: int, batches_per_epoch: int) -> int:
    """Micro-batches in the accumulation group of batch `batch_in_epoch` (1-based): `accumulate`, fewer
    in an epoch's last group when the epoch's batches are not a multiple of it."""
    start = (batch_in_epoch - 1) // accumulate * accumulate
    return min(accumulate, batches_per_epoch - start)


def _broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank. DDP broadcasts them only at the
    start of a training forward, so after the epoch's last step each rank holds the statistics updated
    by its own last batch, and sharded validation would score every shard with another model."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


_LOCKED: set[Path] = set()  # run folders whose lock this process holds


@contextlib.contextmanager
def run_lock(out: Path, world: World):
    """Rank 0 holds `<run>/.train.lock` while it trains and scores: a rerun started while the ranks of a
    killed launch still save their state (a warm run's ranks outlive their launcher by a step) waits for
    them, then resumes from what they saved, instead of training beside them. Held already: nothing."""
    out = Path(out).resolve()
    if out in _LOCKED:
        yield
        return
    fd = None
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / ".train.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{out}: another process is still training this run; waiting until it has saved and exited",
                  flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
    _LOCKED.add(out)
    try:
        barrier(world)  # no rank reads the run's state before rank 0 holds the lock
        yield
    finally:
        _LOCKED.discard(out)
        if fd is not None:
            os.close(fd)


@dataclass
class Trained:
    """A finished run: the bare model (on the run's device), its epoch rows and what model.pt records."""
    model: nn.Module
    epochs: list[dict]
    diverged: dict | None
    precision: str
    train_seconds: float


def fit(task: Task, spec: dict, world: World) -> Trained:
    """Train the spec's model to the end, resuming from saved state if any; rank 0 writes model.pt.

    The run's state/ stays until `finish`: a run that fails after training (while it is scored, or stopped
    there) starts again from the trained model, not from its last checkpoint."""
    with run_lock(Path(spec["output"]), world), stopping.handling() as preemption:
        return _restore_finished(task, spec, world) or _fit(task, spec, world, preemption)


def finish(spec: dict, world: World) -> None:
    """The run is complete (model.pt and its scores written): its resumable state goes; kept if the launcher
    is gone meanwhile (its job's outputs were removed: the rerun scores the trained model again)."""
    if world.is_main and parentage.gone() is None:
        shutil.rmtree(state_dir(spec), ignore_errors=True)


def _finished_paths(spec: dict) -> tuple[Path, Path]:
    """A trained run's record and a second link to its model.pt, kept in state/ until `finish`."""
    return state_dir(spec) / "finished.pt", state_dir(spec) / "model.pt"


def _keep_finished(spec: dict, history: History, diverged: dict | None, precision: str) -> None:
    """Rank 0, once model.pt is written: what a rerun needs to skip training (a hard link costs no copy)."""
    record, model_link = _finished_paths(spec)
    model_path = Path(spec["output"]) / "model.pt"
    model_link.parent.mkdir(parents=True, exist_ok=True)
    model_link.unlink(missing_ok=True)
    _link_or_copy(model_path, model_link)
    torch_save({"spec": spec, "history": history.state(), "diverged": diverged, "precision": precision}, record)


def _restore_finished(task: Task, spec: dict, world: World) -> Trained | None:
    """A run trained to the end whose scoring failed or was stopped: its model, from state/, on every rank."""
    record_path, model_link = _finished_paths(spec)
    record = checkpoints.load(record_path, spec)
    if record is None or not model_link.exists():
        return None
    out = Path(spec["output"])
    history = History(out, world.is_main)
    history.restore(record["history"])
    model = with_weights(task, torch.load(model_link, map_location="cpu", weights_only=True)["model"])
    if world.is_main:
        print(f"{out}: trained already ({record_path}); scoring it", flush=True)
        history.write()
        if not (out / "model.pt").exists():
            atomic.check_write(out / "model.pt")
            _link_or_copy(model_link, out / "model.pt")
    return Trained(model.to(world.device), history.epochs, record["diverged"], record["precision"],
                   history.train_seconds())


def with_weights(task: Task, weights: dict) -> nn.Module:
    """The task's network holding `weights` (tensors taken, not copied): built on `meta`, since a random
    initialisation thrown away cost a run of the demo a quarter of a second."""
    model = task.build_model(pretrained=False, empty=True)
    model.load_state_dict(weights, assign=True)
    return model


def _link_or_copy(source: Path, target: Path) -> None:
    """A second name for `source` (a hard link costs no copy), or a copy where links are not possible."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _fit(task: Task, spec: dict, world: World, preemption: Preemption) -> Trained:
    cfg = spec["train"]
    out, state_path = Path(spec["output"]), state_dir(spec) / "last.pt"
    configure_backends(world.device)
    torch.manual_seed(spec["seed"])
    model = checkpointing.apply(task.build_model(pretrained=True), cfg.get("checkpointing", "none"))
    if cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    model.to(world.device)

    train_set = task.dataset("train", train=True)
    if getattr(train_set, "raw", False) is None:
        # uint8 batches to a GPU, finished there: a quarter of the bytes through the workers' shared memory
        # and the copy, no float work on the host. On the CPU, the workers finish them, in parallel with
        # training (the main process would spend 0.5 ms an image at 224 px on it, serially).
        train_set.raw = world.device.type == "cuda"
    sampler = ResumableSampler(DistributedSampler(train_set, num_replicas=world.world_size, rank=world.rank,
                                                  shuffle=True, seed=spec["seed"]), cfg["batch_size"])
    workers = loader_workers(cfg.get("workers", 0), train_set, world.device)
    loader = DataLoader(train_set, batch_size=cfg["batch_size"], sampler=sampler, collate_fn=task.collate,
                        num_workers=workers, pin_memory=world.device.type == "cuda",
                        persistent_workers=workers > 0)  # started once; they read the epoch from SharedEpoch
    accumulate = cfg.get("accumulate", 1)
    batches_per_epoch = sampler.batches_per_epoch
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg["lr_schedule"], steps_per_epoch, cfg["epochs"] * steps_per_epoch)
    precision = resolve_precision(cfg.get("precision", "fp32"), world.device)
    if world.is_main and cfg.get("precision") == "auto":
        print(f"precision: auto -> {precision} on {world.device.type}", flush=True)
    scaler = torch.amp.GradScaler(world.device.type, enabled=precision == "fp16")

    saved = checkpoints.load(state_path, spec)
    epoch, batch_in_epoch, step = 0, 0, 0
    history = History(out, world.is_main, cfg.get("log_every", 1))
    sums: dict[str, torch.Tensor] = {}
    if saved:
        for name, part in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
            part.load_state_dict(saved[name])
        epoch, batch_in_epoch, step = saved["epoch"], saved["batch_in_epoch"], saved["step"]
        mine = saved["ranks"][world.rank]
        sums = {k: v.to(world.device) for k, v in mine["sums"].items()}
        checkpoints.set_rng_state(mine["rng"])
        history.restore(saved["history"])
        if world.is_main:
            print(f"resumed from {state_path}: epoch {epoch + 1}, batch {batch_in_epoch}, step {step}", flush=True)
    else:
        torch.manual_seed(spec["seed"] + 1 + world.rank)
    net = _wrap(model, cfg, world)

    def end_epoch(seconds: float, validate: bool) -> None:
        """`seconds` and `timed_images` cover what this process ran of the epoch: after a resume, only the
        batches since (the train_* means still cover the whole epoch). A stop asked for while the ranks
        validate saves the epoch as trained but not validated: the rerun validates it."""
        means, images = _epoch_means(sums, timed)
        if validate:
            _broadcast_buffers(model)
            try:
                scores = task.evaluate(model, "val", world)
            except StopRequested:
                save_state()
                raise Preempted(f"stopped on request while validating epoch {epoch + 1}; state saved to "
                                f"{state_path}") from None
        else:
            scores = {}
        history.epoch({
            "epoch": epoch + 1, "step": step, "lr": cfg["lr"] * scheduler.lr_lambdas[0](step - 1), **means,
            **{f"val_{k}": v for k, v in scores.items() if isinstance(v, float)},
            "epoch_seconds": seconds, "images_per_second": images / seconds if images else math.nan,
            # the share of the epoch the training waited for its loader (0: the input never held it up)
            "data_wait_fraction": waited[0] / seconds if seconds else math.nan,
            "timed_images": images, "peak_memory_mb": peak_memory_mb(world.device),
        })

    last_saved = [time.monotonic()]  # the run's start counts as a save: nothing is lost before it
    waited = [0.0]  # seconds this epoch's batches kept the training waiting (since a resume, as `seconds`)

    def save_state() -> None:
        last_saved[0] = time.monotonic()
        ranks = all_gather_objects({"rng": checkpoints.rng_state(), "sums": {k: v.cpu() for k, v in sums.items()}})
        if world.is_main:
            checkpoints.save(state_path, {
                "spec": spec, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                "batch_in_epoch": batch_in_epoch, "step": step, "ranks": ranks, "history": history.state(),
            })

    checkpoint_every = cfg.get("checkpoint_every", 0)
    autocast = torch.autocast(world.device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")
    nonfinite = torch.zeros((), device=world.device)
    on_divergence, diverged = cfg.get("on_divergence", "fail"), None
    try:
        while epoch < cfg["epochs"]:
            sampler.set_epoch(epoch, skip_batches=batch_in_epoch)
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            net.train()
            if batch_in_epoch == 0:
                sums = {}
            timed = torch.zeros((), device=world.device, dtype=torch.float64)  # this rank's samples since epoch_start
            epoch_start = tick = row_tick = time.perf_counter()
            waited[0] = 0.0
            row_images = 0.0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg['epochs']}", total=batches_per_epoch,
                       initial=batch_in_epoch, disable=not world.is_main, leave=False,
                       mininterval=0.5 if sys.stderr.isatty() else 30)  # a log file gets a line now and then
            for batch in bar:
                data_time = time.perf_counter() - tick
                waited[0] += data_time
                batch = move(batch, world.device, cfg.get("channels_last", False))
                if hasattr(batch, "finish"):  # a raw batch (uint8 images): made the network's input here, on the device
                    batch = move(batch.finish(), world.device, cfg.get("channels_last", False))
                batch_in_epoch += 1
                boundary = batch_in_epoch % accumulate == 0 or batch_in_epoch == batches_per_epoch
                sync = contextlib.nullcontext() if boundary or world.world_size == 1 else net.no_sync()
                with sync:
                    with autocast:
                        loss, stats = task.loss(net, batch)
                    scaler.scale(loss / _group_size(batch_in_epoch, accumulate, batches_per_epoch)).backward()
                loss = loss.detach()
                nonfinite = torch.maximum(nonfinite, (~torch.isfinite(loss)).float())
                stats = {"loss": loss.float() * stats["samples"], **stats}
                _accumulate(sums, stats, world.device)
                timed += _on(stats["samples"], world.device)
                if not boundary:
                    tick = time.perf_counter()
                    continue
                lr = _optimizer_step(model, optimizer, scheduler, scaler, cfg.get("grad_clip"))
                step += 1
                save_now = bool(checkpoint_every) and step % checkpoint_every == 0
                if history.due(step) or save_now or batch_in_epoch == batches_per_epoch:
                    if _agree_to_stop(nonfinite, preemption, world, step, epoch, state_path, on_divergence):
                        save_state()
                        raise Preempted(f"stopped on request at iteration {step}; state saved to {state_path}")
                    now, images = time.perf_counter(), timed.item()  # every rank has as many (DistributedSampler pads)
                    history.iteration(step, epoch, loss.item(), lr, data_time, now - tick,
                                      (images - row_images) * world.world_size / (now - row_tick))
                    row_tick, row_images = now, images
                    bar.set_postfix(loss=f"{history.iterations[-1]['loss']:.3f}", lr=f"{lr:.3g}", refresh=False)
                if save_now:
                    save_state()
                tick = time.perf_counter()
            val_every = cfg.get("val_every", 1)
            end_epoch(time.perf_counter() - epoch_start, validate=bool(val_every) and (epoch + 1) % val_every == 0)
            epoch, batch_in_epoch = epoch + 1, 0
            # at an epoch end, unless one was saved less than checkpoint_minutes ago: a state of a short
            # run's epoch costs more than the seconds it protects (a stop on request saves in any case)
            if epoch < cfg["epochs"] and time.monotonic() - last_saved[0] >= 60 * cfg.get("checkpoint_minutes", 0):
                save_state()
    except _Diverged:
        end_epoch(time.perf_counter() - epoch_start, validate=False)  # non-finite weights: nothing to score
        diverged = {"step": step, "epoch": epoch + 1}
        if world.is_main:
            print(f"diverged: the loss became NaN or infinite by iteration {step} (epoch {epoch + 1}); "
                  f"the run ends here and is reported as diverged", flush=True)
    finally:
        history.close()
    if world.is_main:
        torch_save({"model": model.state_dict(), "spec": spec, "epochs": cfg["epochs"], "classes": task.classes(),
                    "preprocessing": spec["data"]["preprocessing"], "diverged": diverged,
                    "train_seconds": history.train_seconds(), "precision": precision}, out / "model.pt")
        _keep_finished(spec, history, diverged, precision)
    return Trained(model, history.epochs, diverged, precision, history.train_seconds())

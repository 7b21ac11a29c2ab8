"""Memory against time for gradient checkpointing: what each policy stores, costs and allows.

For one model, input size, batch and policy:

- **saved activations**: bytes of the tensors kept for backward, counted exactly on any device:
  autograd's saved tensors, through `torch.autograd.graph.saved_tensors_hooks`, which include the
  input each checkpointed segment keeps for its recomputation (`torch.utils.checkpoint` saves it as
  one); each storage counted once; parameters left out (they are not activations). The hooks are
  thread-local and the innermost win, so the count belongs to the measurement that installed them;
- **peak memory**: `torch.cuda.max_memory_allocated` over a training step (GPU only);
- **step time**: median of `steps` timed training steps (forward, backward, SGD step) after
  `warmup` untimed ones;
- **largest batch** within a memory budget: on GPU by peak memory, on CPU by the counted training
  memory (parameters, gradients and momentum, plus the saved activations); predicted from two
  batch sizes (memory grows linearly with the batch), then checked by measuring it. On the CPU that
  count runs on the `meta` device: shapes only, no arithmetic, the same bytes (a test compares
  them) in milliseconds instead of a forward pass at every batch the search tries.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch
from torch import nn

from frelon.errors import FrelonError
from frelon.models import checkpointing
from frelon.models.centernet import CenterNet
from frelon.models.resnet import ResNet

MB = 2 ** 20


def device_name(device: torch.device) -> str:
    """The GPU's name (e.g. "NVIDIA H200"), or "cpu": the study's rows say where they were measured."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def policy_label(policy: checkpointing.Policy) -> str:
    return policy if isinstance(policy, str) else "+".join(policy)


MODELS = ("resnet18", "resnet34", "centernet-resnet18", "centernet-resnet34")


def build(name: str, policy: checkpointing.Policy, device: torch.device, seed: int = 0) -> nn.Module:
    """A classifier (`resnet18`, 10 classes) or a detector (`centernet-resnet18`, VOC's 20 classes)."""
    torch.manual_seed(seed)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    model = (CenterNet(20, arch=name.split("-", 1)[1]) if name.startswith("centernet-")
             else ResNet(name, num_classes=10))
    return checkpointing.apply(model, policy).to(device).train()


def _loss(outputs: torch.Tensor | dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for a classifier. For CenterNet a stand-in that reaches every output map: the
    network's activations, which is what is measured, do not depend on the loss."""
    if isinstance(outputs, dict):
        return sum(out.float().square().mean() for out in outputs.values())
    return nn.functional.cross_entropy(outputs, y)


def _batch(batch: int, size: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, size, size, generator=g).to(device),
            torch.randint(0, 10, (batch,), generator=g).to(device))


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes stored for backward by one training forward pass (see the module docstring)."""
    # a storage is known by its StorageImpl (`_cdata`): on `meta` every data pointer is 0
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    stored: dict[int, int] = {}

    def note(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in parameters:
            stored[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(note, lambda t: t):
        loss = _loss(model(x), y)
    loss.backward()  # frees what was stored
    model.zero_grad(set_to_none=True)
    return sum(stored.values())


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    _loss(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int) -> float:
    """Median time of a training step, after `warmup` untimed steps."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    times = []
    for i in range(warmup + steps):
        _sync(x.device)
        start = time.perf_counter()
        _train_step(model, optimizer, x, y)
        _sync(x.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _shadow(name: str, policy: checkpointing.Policy) -> nn.Module:
    """The model on `meta`: shapes without storage, to count bytes without arithmetic."""
    with torch.device("meta"):
        return build(name, policy, torch.device("meta"))


def training_memory_bytes(name: str, policy: checkpointing.Policy, batch: int, size: int,
                          device: torch.device, shadow: nn.Module | None = None) -> int | None:
    """Memory a training step needs: peak allocated on GPU; on CPU, counted (weights, gradients and
    momentum, plus saved activations) on `shadow`, the model built on `meta` (one is built if not
    given). None on GPU when the batch does not fit at all."""
    if device.type != "cuda":
        shadow = _shadow(name, policy) if shadow is None else shadow
        x, y = torch.empty(batch, 3, size, size, device="meta"), torch.zeros(batch, dtype=torch.long, device="meta")
        weights = sum(p.numel() * p.element_size() for p in shadow.parameters())
        return 3 * weights + saved_activation_bytes(shadow, x, y)
    model = build(name, policy, device)
    x, y = _batch(batch, size, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    try:
        _train_step(model, optimizer, x, y)  # momentum buffers exist from here on
        torch.cuda.reset_peak_memory_stats(device)
        _train_step(model, optimizer, x, y)
        _sync(device)
        return torch.cuda.max_memory_allocated(device)
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        del model, optimizer, x, y
        torch.cuda.empty_cache()


def largest_batch(memory: Callable[[int], int | None], budget: int, probe: int, limit: int = 1 << 16,
                  at_probe: int | None = None) -> int:
    """The largest batch whose `memory(batch)` fits `budget` (None: it did not fit at all), found by
    measuring: a linear prediction from `probe` and 2 x `probe` (`at_probe`, if already measured),
    then a search between the largest batch seen to fit and the smallest seen not to. When memory is
    linear in the batch (counted bytes) that takes two more measurements. 0 when one sample does not fit."""
    fits = lambda b: (used := memory(b)) is not None and used <= budget  # noqa: E731
    low = memory(probe) if at_probe is None else at_probe
    high = memory(2 * probe) if low is not None else None
    if low is not None and high is not None and high > low:
        candidate = int(probe + (budget - low) // ((high - low) / probe))
    else:
        candidate = probe
    candidate = max(1, min(candidate, limit))
    good, bad = 0, limit + 1  # largest batch known to fit, smallest known not to
    step = max(1, candidate // 8)
    if fits(candidate):
        good = candidate
        if fits(candidate + 1):  # the prediction was low: go up, doubling the step
            good += 1
            while good + step < bad and fits(good + step):
                good, step = good + step, 2 * step
            bad = min(bad, good + step)
        else:
            bad = candidate + 1
    else:  # the prediction was high: go down, doubling the step
        bad = candidate
        while bad - step >= 1 and not fits(bad - step):
            bad, step = bad - step, 2 * step
        good = max(0, bad - step)
    while bad - good > 1:  # bisect what remains
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good


def affine_largest_batch(at_probe: int, at_twice: int, probe: int, budget: int) -> int:
    """The largest batch within `budget` for memory that is affine in the batch, from its values at
    `probe` and 2 x `probe`; 0 when not even one sample fits."""
    per_probe = at_twice - at_probe  # bytes per `probe` samples (integers: no rounding)
    if per_probe <= 0:
        raise FrelonError(f"memory {at_probe} bytes at batch {probe} and {at_twice} at {2 * probe}: it does not "
                          f"grow with the batch, so no largest batch follows from it")
    return max(0, probe + (budget - at_probe) * probe // per_probe)


def measure(name: str, size: int, batch: int, policy: checkpointing.Policy, device: torch.device,
            steps: int, warmup: int, budget_mb: float) -> dict:
    """One row of the checkpointing study."""
    model = build(name, policy, device)
    x, y = _batch(batch, size, device)
    saved = saved_activation_bytes(model, x, y)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    seconds = step_seconds(model, x, y, steps, warmup)
    del model, x, y  # nothing of this measurement stays allocated during the next ones
    shadow = None if device.type == "cuda" else _shadow(name, policy)  # built once for the whole search
    # on CPU the count at this batch is the one just made (training_memory_bytes on `meta` gives the same
    # bytes, tested), not a second pass
    used = training_memory_bytes(name, policy, batch, size, device, shadow) if device.type == "cuda" \
        else 3 * weights + saved
    peak = used if device.type == "cuda" else None
    try:
        if device.type == "cuda":
            fits = largest_batch(lambda b: training_memory_bytes(name, policy, b, size, device, shadow),
                                 int(budget_mb * MB), probe=batch, at_probe=used)
        else:  # counted bytes are affine in the batch (tested): two counts give the largest batch exactly
            fits = affine_largest_batch(used, training_memory_bytes(name, policy, 2 * batch, size, device, shadow),
                                        batch, int(budget_mb * MB))
            if fits == 0:
                raise FrelonError(f"checkpointing: {name} at {size} px, policy {policy_label(policy)}: "
                                  f"memory_budget_mb {budget_mb} holds no batch (weights, gradients and momentum "
                                  f"alone take {3 * weights / MB:.0f} MB); raise memory_budget_mb")
    except ValueError as exc:  # batch norm cannot train on one value per channel
        raise FrelonError(f"checkpointing: {name} at {size} px, policy {policy_label(policy)}: the search for the "
                          f"largest batch within memory_budget_mb {budget_mb} went down to a batch too small to "
                          f"train ({exc}); raise memory_budget_mb") from exc
    return {
        "model": name, "image_size": size, "batch_size": batch, "policy": policy_label(policy),
        "device": device_name(device), "saved_activation_mb": round(saved / MB, 2),
        "peak_memory_mb": None if peak is None else round(peak / MB, 1),
        "step_ms": round(seconds * 1000, 1), "memory_budget_mb": budget_mb, "max_batch": fits,
    }


def study(settings: dict, device: torch.device, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Every case (model, input size, batches) x policy of `settings` (the config's `checkpointing`);
    each row also gets its saved bytes and step time relative to `none` of the same model, size, batch.
    `on_row` sees each row as soon as it is measured (a long study on GPU shows its progress)."""
    rows = []
    for case in settings["cases"]:
        for batch in case["batch_sizes"]:
            group = []
            for policy in settings["policies"]:
                group.append(measure(case["model"], case["image_size"], batch, policy, device, settings["steps"],
                                     settings["warmup"], settings["memory_budget_mb"]))
                if on_row:
                    on_row(group[-1])
            base = next((r for r in group if r["policy"] == "none"), None)
            for row in group:
                row["saved_ratio"] = round(row["saved_activation_mb"] / base["saved_activation_mb"], 3) if base else None
                row["time_ratio"] = round(row["step_ms"] / base["step_ms"], 3) if base else None
            rows.extend(group)
    return rows


def plot(rows: Sequence[dict], out: str) -> None:
    """Memory against time, one point per policy, one line per model x size x batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["image_size"], row["batch_size"]), []).append(row)
    gpu = all(row["peak_memory_mb"] is not None for row in rows)
    key = "peak_memory_mb" if gpu else "saved_activation_mb"
    for (name, size, batch), group in groups.items():
        ax.plot([r["step_ms"] for r in group], [r[key] for r in group], "o", label=f"{name} {size}px batch {batch}")
        for r in group:
            ax.annotate(r["policy"], (r["step_ms"], r[key]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("time per training step (ms, median)")
    ax.set_ylabel("peak memory (MB)" if gpu else "activations saved for backward (MB)")
    ax.set_title("Gradient checkpointing: memory against time")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120, format="png")
    plt.close(fig)


def run_study(settings: dict, device: str, csv: str, md: str, figure: str) -> list[dict]:
    """The checkpointing study of a config: measure, then write the table (CSV + Markdown) and figure."""
    import pandas as pd

    from frelon.atomic import atomic_path
    from frelon.report.tables import write_table

    if device == "cuda" and not torch.cuda.is_available():
        raise FrelonError("device: cuda but no GPU is visible; set device: cpu or auto in the config")
    target = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    print(f"checkpointing study on {device_name(target)}", flush=True)
    rows = study({"steps": 5, "warmup": 2, **settings}, target,
                 on_row=lambda row: print(", ".join(f"{k} {v}" for k, v in row.items()), flush=True))
    write_table(pd.DataFrame(rows), csv, md)
    with atomic_path(figure) as tmp:
        plot(rows, tmp)
    return rows

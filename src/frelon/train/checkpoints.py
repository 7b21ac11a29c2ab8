"""Resumable training state: written atomically, refused when it belongs to another spec."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from frelon.atomic import torch_save
from frelon.errors import FrelonError

# Keys of the spec that do not change what is computed: where the run is written, how long ranks wait.
NEUTRAL_KEYS = ("output", "train.collective_timeout_minutes")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def spec_differences(saved: dict, current: dict) -> list[str]:
    """`key: saved -> current` for every setting that differs (neutral keys ignored)."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in NEUTRAL_KEYS and a.get(k) != b.get(k)]


def rng_state() -> dict:
    """Every random number generator this process uses, in a form `weights_only` loading accepts. On a
    GPU only the rank's own device's (`torch.cuda.current_device()`, which `distributed.init` sets): a
    resumed rank may see fewer GPUs than the one that saved (another node layout, a requeue)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(torch.cuda.current_device()) if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved, whatever GPUs this process sees now. A state saved before it kept
    one CUDA state per visible GPU: the one of this process's device is taken, if it has one."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if torch.cuda.is_available() and cuda is not None and len(cuda):
        device = torch.cuda.current_device()
        if isinstance(cuda, list):
            cuda = cuda[device] if device < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def save(path: str | os.PathLike, state: dict) -> None:
    """Write the training state; the previous file stays whole until the new one is complete."""
    torch_save(state, path)


def load(path: str | os.PathLike, spec: dict) -> dict | None:
    """The saved state to resume from, or None; a state written for another spec is refused."""
    path = Path(path)
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    changed = spec_differences(state["spec"], spec)
    if changed:
        raise FrelonError(
            f"{path} was saved by a run with another spec ({'; '.join(changed[:5])}); it will not be "
            f"loaded into this one. Restore the config to resume that run, or delete {path.parent} "
            f"to start this spec from scratch."
        )
    return state


# What each task's model is called in errors, and where its model.pt files are
_TRAINED = {"classification": ("classifier", "results/runs/<study>/<experiment>/model.pt"),
            "detection": ("detector", "results/runs/<detection study>/<experiment>/model.pt")}


def load_trained(checkpoint: str | os.PathLike, task: str) -> dict:
    """A run's model.pt, checked to hold a trained `task` model with finite weights."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    found = state.get("spec", {}).get("task")
    if found != task:
        noun, where = _TRAINED[task]
        raise FrelonError(f"{checkpoint} is a {found or 'unknown'} model, not a {noun}: give the model.pt of a "
                          f"{task} run ({where})")
    if state.get("diverged"):
        raise FrelonError(f"{checkpoint} diverged during training (iteration {state['diverged']['step']}): "
                          f"its weights are not finite")
    return state

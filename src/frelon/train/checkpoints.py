"""Resumable training state: written atomically, refused when it belongs to another spec."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from frelon.atomic import torch_save
from frelon.errors import FrelonError

# Keys of the spec that do not change what is computed: where the run is written.
NEUTRAL_KEYS = ("output",)


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
    """Every random number generator this process uses, in a form `weights_only` loading accepts."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
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

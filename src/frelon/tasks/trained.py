"""A run's model.pt as the commands that take one read it (`frelon classify`, `detect`, `export`, `evaluate`):
checked once, the same way for each, so that a wrong file (a missing one, a run's folder, a text file, weights
without their spec, the other task's model) is named with its fix rather than ending in a traceback."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from frelon.errors import FrelonError

# Where each task's model.pt files are, what its model is called, and the command that runs it
WHERE = {"classification": "results/runs/<study>/<experiment>/model.pt",
         "detection": "results/runs/<detection study>/<experiment>/model.pt"}
NOUNS = {"classification": "classifier", "detection": "detector"}
COMMANDS = {"classification": "frelon classify", "detection": "frelon detect"}
ANY_RUN = "results/runs/<study>/<experiment>/model.pt"

# What a trained model.pt holds besides its weights, per task: the keys its model and preprocessing are built from
MODEL_KEYS = {"classification": ("arch", "num_classes", "norm", "residual", "zero_init_residual"),
              "detection": ("arch", "norm", "decoder")}
PREPROCESSING_KEYS = {"classification": ("crop", "resize", "mean", "std"),
                      "detection": ("input_size", "mean", "std")}


def _reason(exc: Exception) -> str:
    """The first sentence of an exception's message (its type where it has none), at most 200 characters."""
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(exc).strip())  # PyTorch's C++ source line
    return text.splitlines()[0].split(". ")[0][:200] if text else type(exc).__name__


def _what_file(path: Path) -> str | None:
    """What a file that torch cannot load is, where its first bytes tell (torch's own error on a text file is a
    bare KeyError); None where they look like torch.save's (a zip archive, or a pickle)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "it is empty"
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a zip archive or a pickle, as torch.save writes"
    return "it is a text file"


def load_run(checkpoint: str | os.PathLike, task: str | None = None, diverged: bool = False) -> dict:
    """The state a finished run's model.pt holds, checked to be a trained classifier or detector (`task`: that
    one) with its spec's model, its classes and its preprocessing; a run that diverged is refused unless
    `diverged` (scoring it reports the divergence)."""
    path = Path(checkpoint)
    where = WHERE.get(task, ANY_RUN)
    if path.is_dir():
        if (path / "model.pt").is_file():
            raise FrelonError(f"{path} is a run's folder, not its checkpoint: pass {path / 'model.pt'}")
        raise FrelonError(f"{path} is a folder with no model.pt (a run writes it once training ends): give the "
                          f"model.pt of a finished run ({where})")
    if not path.is_file():
        raise FrelonError(f"{path} does not exist: give the model.pt of a finished run ({where})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and format errors alike: not a file torch.save wrote, or not whole
        what = _what_file(path)
        if what is not None:
            raise FrelonError(f"{path} is not a PyTorch checkpoint ({what}): give the model.pt of a finished run "
                              f"({where})") from None
        if isinstance(exc, pickle.UnpicklingError) and str(exc).startswith("Weights only load failed"):
            raise FrelonError(f"{path} is not a run's checkpoint: it holds Python objects besides tensors (a whole "
                              f"model saved with torch.save(model)?), which are not loaded, for safety; give the "
                              f"model.pt of a finished run ({where})") from None
        raise FrelonError(f"{path} is a damaged PyTorch checkpoint ({_reason(exc)}): copied in part, or cut short; "
                          f"copy it again, or give the model.pt of a finished run ({where})") from None
    spec = state.get("spec") if isinstance(state, dict) else None
    found = spec.get("task") if isinstance(spec, dict) else None
    if found not in NOUNS or "model" not in state:
        raise FrelonError(f"{path} holds no trained classifier or detector (no spec.task and model in it; weights "
                          f"from `frelon export-weights` have neither): give the model.pt of a finished run "
                          f"({where})")
    if task is not None and found != task:
        raise FrelonError(f"{path} is a {found} model, not a {NOUNS[task]}: give the model.pt of a {task} run "
                          f"({where}), or run `{COMMANDS[found]}` on it")
    model, pre, classes = spec.get("model"), state.get("preprocessing"), state.get("classes")
    missing = ([f"spec.model.{k}" for k in MODEL_KEYS[found] if not isinstance(model, dict) or k not in model]
               + [f"preprocessing.{k}" for k in PREPROCESSING_KEYS[found] if not isinstance(pre, dict) or k not in pre]
               + ([] if isinstance(classes, list) and classes and all(isinstance(c, dict) and "name" in c
                                                                      for c in classes) else ["classes"]))
    if missing:
        raise FrelonError(f"{path} is incomplete: it has no {', '.join(missing)} (a damaged file, or one written "
                          f"by hand): give the model.pt of a finished run ({where})")
    if state.get("diverged") and not diverged:
        step = state["diverged"].get("step") if isinstance(state["diverged"], dict) else None
        raise FrelonError(f"{path} diverged during training (iteration {step}): its weights are not finite; "
                          f"retrain it (a lower lr, or warmup) or give another run's model.pt")
    return state


def weights_error(checkpoint: str | os.PathLike, exc: Exception) -> FrelonError:
    """The error for weights that do not fit the network their spec describes (renamed or reshaped tensors)."""
    return FrelonError(f"{checkpoint}'s weights do not fit the model its spec describes ({_reason(exc)}): a "
                       f"damaged file, or one from another version of frelon; retrain the run")

"""The adversarial study: the course's fine-tuned hornet classifiers under FGSM, PGD and a patch
(the attacks: `frelon.attacks`), their tables and figures (results/adversarial/)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from frelon.attacks import (ATTACKS, PixelModel, eps_list, paste, patch_side, patch_study, pgd, random_positions,
                            sweep, to_pixels)
from frelon.data.augment import sample_seed
from frelon.errors import FrelonError
from frelon.report.figures import pyplot, save_png

DEFAULTS = {
    "eps": [0, 1, 2, 4, 8],          # L-infinity radii, in 1/255 of the pixel range
    "pgd_steps": 10,
    "pgd_step_size": None,           # None: 2.5 * eps / steps (Madry et al.), in pixels
    "patch_areas": [0.01, 0.02, 0.05, 0.10],
    "patch_steps": 100,
    "patch_lr": 0.05,
    "patch_batch": 16,               # training images per patch optimisation step
    "patch_source": "absence",       # class name or index of the images the patch is pasted on
    "patch_target": "presence",      # class name or index the patch should make the network say
    "patch_model": None,             # None: the first model that did not diverge
    "example_index": None,           # test image of example.png; None: the first one PGD fools
    "max_images": None,              # the first N test images only; None: all
    "batch_size": 64,
    "seed": 0,
}


# --- figures -------------------------------------------------------------------------------------

def _show(ax, pixels: torch.Tensor, title: str) -> None:
    ax.imshow(pixels.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


@torch.no_grad()
def _verdict(model: nn.Module, pixels: torch.Tensor, classes: Sequence[str]) -> str:
    p = model(pixels.unsqueeze(0)).float().softmax(1)[0]
    best = int(p.argmax())
    return f"{classes[best]} ({float(p[best]):.1%})"


def plot_example(model: nn.Module, clean: torch.Tensor, adversarial: torch.Tensor, classes: Sequence[str],
                 eps_255: float, out: str | os.PathLike, label: str = "PGD") -> None:
    """The panda -> gibbon picture of Goodfellow et al.: clean image, perturbation amplified to fill
    [0, 1] around grey 0.5, perturbed image, each with the class `model` (pixels in) gives it."""
    plt = pyplot()
    delta = (adversarial - clean).detach()
    scale = float(delta.abs().max())
    shown = 0.5 + 0.5 * delta / scale if scale > 0 else torch.full_like(delta, 0.5)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    _show(axes[0], clean, f"clean: {_verdict(model, clean, classes)}")
    _show(axes[1], shown, f"+ {label} perturbation, eps {eps_255:g}/255\n(amplified x{0.5 / scale:.0f})"
          if scale > 0 else "no perturbation (eps 0)")
    _show(axes[2], adversarial, f"perturbed: {_verdict(model, adversarial, classes)}")
    fig.tight_layout()
    save_png(fig, out, tight=False)


def plot_patch(model: nn.Module, patches: dict[float, torch.Tensor], example: torch.Tensor,
               positions: dict[float, tuple[int, int]], classes: Sequence[str], rows: Sequence[dict],
               out: str | os.PathLike, target: str = "target", title: str = "") -> None:
    """Each patch, the example image with it pasted (and the class `model`, pixels in, gives it), and
    the success rate against the patch area, beside the base rate of a noise patch."""
    plt = pyplot()
    areas = list(patches)
    fig = plt.figure(figsize=(2.3 * max(len(areas), 2), 7.6))
    grid = fig.add_gridspec(3, max(len(areas), 1), height_ratios=[1, 1, 1.3])
    for k, area in enumerate(areas):
        side = patches[area].shape[-1]
        _show(fig.add_subplot(grid[0, k]), patches[area], f"patch {area:.0%} ({side} px)")
        pasted = paste(example.unsqueeze(0), patches[area], *positions[area])[0]
        _show(fig.add_subplot(grid[1, k]), pasted, f"with it: {_verdict(model, pasted, classes)}")
    ax = fig.add_subplot(grid[2, :])
    done = [r for r in rows if r["success"] is not None]
    ax.plot([100 * r["area"] for r in done], [r["success"] for r in done], "o-", label="adversarial patch")
    ax.plot([100 * r["area"] for r in done], [r["noise_success"] for r in done], "s--", label="noise patch")
    ax.set_xlabel("patch area (% of the image)")
    ax.set_ylabel(f"share classified {target}")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, out, tight=False)


def _placeholder(out: str | os.PathLike, message: str) -> None:
    """A figure that says why there is nothing to show, so the workflow's output still exists."""
    fig, ax = pyplot().subplots(figsize=(5, 2))
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    ax.axis("off")
    save_png(fig, out, tight=False)


# --- the study -----------------------------------------------------------------------------------

def _settings(settings: dict) -> dict:
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise FrelonError(f"unknown adversarial setting(s) {unknown}; known: {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}  # null: the default
    eps_list(s["eps"])
    if not s["patch_areas"]:
        raise FrelonError("adversarial patch_areas is empty: give fractions of the image, e.g. [0.01, 0.05]")
    for key in ("pgd_steps", "patch_steps", "patch_batch", "batch_size"):
        if not isinstance(s[key], int) or s[key] < (0 if key.endswith("steps") else 1):
            raise FrelonError(f"adversarial {key} {s[key]!r}: give a whole number of at least "
                              f"{0 if key.endswith('steps') else 1}")
    if s["max_images"] is not None and (not isinstance(s["max_images"], int) or s["max_images"] < 1):
        raise FrelonError(f"adversarial max_images {s['max_images']!r}: give a positive number or null (all)")
    return s


def _load_split(path: Path) -> dict:
    if not path.exists():
        raise FrelonError(f"{path} is missing: prepare the dataset first (frelon prepare)")
    blob = torch.load(path, weights_only=True)
    missing = [k for k in ("images", "labels", "classes", "resize", "crop") if k not in blob]
    if missing:
        raise FrelonError(f"{path} has no {', '.join(missing)}: prepare the dataset again (frelon prepare)")
    return blob


def _class_index(value: str | int, classes: list[str], key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
        return value
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    raise FrelonError(f"adversarial {key} {value!r} is not a class of the dataset: give one of {classes} "
                      f"or its index")


def _of_class(split: dict, label: int, cap: int | None = None) -> torch.Tensor:
    """The images of one class among the first `cap` of a split."""
    return split["images"][:cap][split["labels"][:cap] == label]


def _peek(path: str | os.PathLike) -> dict:
    """A run's model.pt, its weights mapped but not read: checked before any attack starts."""
    from frelon.train.checkpoints import load_trained

    if not Path(path).exists():
        raise FrelonError(f"{path} is missing: train the run first (snakemake builds it)")
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if state.get("spec", {}).get("task") != "classification":
        load_trained(path, "classification")  # its error names the fix
    return state


def _check_model(path: str, state: dict, test: dict, data_dir: Path) -> None:
    """The model must have been trained on images prepared like the cached split, with its classes."""
    cached = {key: test[key] for key in ("resize", "crop")}
    wanted = {key: state["preprocessing"][key] for key in ("resize", "crop")}
    if cached != wanted:
        raise FrelonError(f"{data_dir / 'test.pt'} was prepared with {cached} but {path} expects {wanted}; "
                          f"attack the model on the dataset it was trained on")
    names = [c["name"] for c in state["classes"]]
    if names != list(test["classes"]):
        raise FrelonError(f"{path} classifies {names} but {data_dir} holds {list(test['classes'])}: attack the "
                          f"model on the dataset it was trained on")


def run_study(models: dict[str, str], data_dir: str, out_dir: str, settings: dict, device: str = "cpu") -> dict:
    """The adversarial study of trained classifiers on a prepared dataset's test split: accuracy under
    FGSM and PGD per model (attacks.csv/.md), an adversarial patch per area for one model (patch.csv/.md,
    patch.png) and the panda -> gibbon figure (example.png). A diverged run gets empty rows."""
    from frelon.report.tables import write_table
    from frelon.tasks.classify import load_classifier

    import pandas as pd

    began = time.perf_counter()
    s = _settings(settings)
    if not models:
        raise FrelonError("no model to attack: give at least one run's model.pt")
    if device == "cuda" and not torch.cuda.is_available():
        raise FrelonError("device: cuda but no GPU is visible; set device: cpu or auto")
    target = torch.device("cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    test, train = _load_split(data_dir / "test.pt"), _load_split(data_dir / "train.pt")
    classes = list(test["classes"])
    images, labels = test["images"][: s["max_images"]], test["labels"][: s["max_images"]]
    if len(labels) == 0:
        raise FrelonError(f"{data_dir / 'test.pt'} holds no image: prepare the dataset with a test split")
    for area in s["patch_areas"]:
        patch_side(area, *images.shape[-2:])
    if s["example_index"] is not None and not 0 <= s["example_index"] < len(labels):
        raise FrelonError(f"example_index {s['example_index']} is outside the {len(labels)} test images attacked: "
                          f"give 0 to {len(labels) - 1}, or null for the first image PGD fools")
    source = _class_index(s["patch_source"], classes, "patch_source")
    goal = _class_index(s["patch_target"], classes, "patch_target")
    if source == goal:
        raise FrelonError(f"patch_source and patch_target are both {classes[goal]!r}: give two classes")
    states = {name: _peek(path) for name, path in models.items()}
    diverged = {name: bool(state.get("diverged")) for name, state in states.items()}
    for name, path in models.items():
        if not diverged[name]:
            _check_model(path, states[name], test, data_dir)
    if s["patch_model"] is not None and s["patch_model"] not in models:
        raise FrelonError(f"patch_model {s['patch_model']!r} is not among the models {list(models)}")
    patch_model = s["patch_model"] or next((n for n in models if not diverged[n]), next(iter(models)))
    example_model = patch_model if not diverged[patch_model] else next((n for n in models if not diverged[n]), None)
    eps_255 = eps_list(s["eps"])

    attack_rows, patch_rows, example = [], [], None
    for name, path in models.items():
        if diverged[name]:
            print(f"adversarial: {name} diverged in training ({path}); its rows are left empty", flush=True)
            attack_rows += [{"model": name, "attack": a, "eps_255": e, "accuracy": None, "n": None}
                            for a in ATTACKS for e in eps_255]
            continue
        model, pre, names = load_classifier(path)
        started = time.perf_counter()
        model.requires_grad_(False)  # only gradients with respect to the pixels are needed
        net = PixelModel(model, pre["mean"], pre["std"]).to(target).eval()
        rows, per_image = sweep(net, images, labels, eps_255, s["pgd_steps"], s["pgd_step_size"], s["seed"],
                                 s["batch_size"], target)
        attack_rows += [{"model": name, **{k: r[k] for k in ("attack", "eps_255", "accuracy", "n")}} for r in rows]
        print(f"adversarial: {name} ({time.perf_counter() - started:.1f} s): "
              + ", ".join(f"{r['attack']} {r['eps_255']:g}/255 {r['accuracy']:.3f}" for r in rows), flush=True)
        if name == example_model:
            example = _example(net, images, labels, per_image, eps_255, names, s, target, out_dir / "example.png")
            example["model"] = name
        if name == patch_model:
            started = time.perf_counter()
            rows, patches = patch_study(model, pre["mean"], pre["std"], _of_class(train, source),
                                        _of_class(test, source, s["max_images"]),
                                        goal, s["patch_areas"], s["patch_steps"], s["patch_lr"], s["patch_batch"],
                                        s["seed"], s["batch_size"], target)
            patch_rows = [{"model": name, **r} for r in rows]
            print(f"adversarial: patch on {name} ({time.perf_counter() - started:.1f} s): " + ", ".join(
                f"{r['area']:.0%} {r['success'] if r['success'] is None else round(r['success'], 3)}"
                f" (noise {r['noise_success'] if r['noise_success'] is None else round(r['noise_success'], 3)})"
                for r in rows), flush=True)
            _patch_figure(net, name, patches, images, labels, source, goal, names, rows, s["seed"],
                          out_dir / "patch.png")
    if not patch_rows:  # the patch model diverged
        patch_rows = [{"model": patch_model, "area": a, "side_px": patch_side(a, *images.shape[-2:]),
                       "success": None, "noise_success": None, "n": None} for a in s["patch_areas"]]
        _placeholder(out_dir / "patch.png", f"{patch_model} diverged in training: no patch")
    if example is None:
        _placeholder(out_dir / "example.png", "every model diverged in training: no example")

    attacks = pd.DataFrame(attack_rows, columns=["model", "attack", "eps_255", "accuracy", "n"]).astype({"n": "Int64"})
    patch = pd.DataFrame(patch_rows, columns=["model", "area", "side_px", "success", "noise_success", "n"])
    write_table(attacks, out_dir / "attacks.csv", out_dir / "attacks.md")
    write_table(patch.astype({"n": "Int64"}), out_dir / "patch.csv", out_dir / "patch.md")
    seconds = time.perf_counter() - began
    print(f"adversarial study: {len(models)} model(s), {len(labels)} test images, {seconds:.1f} s", flush=True)
    return {"attacks": attack_rows, "patch": patch_rows, "example": example, "patch_model": patch_model,
            "seconds": seconds}


def _example(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, per_image: dict, eps_255: list[float],
             classes: list[str], s: dict, device: torch.device, out: Path) -> dict:
    """example.png for the given test image, or the first one classified correctly that PGD at the
    largest eps fooled (else the first classified correctly, else the first)."""
    top = max(eps_255)
    if s["example_index"] is not None:
        index = s["example_index"]
    else:
        flipped = per_image["correct"] & per_image["fooled"]["pgd", top]
        candidates = flipped if flipped.any() else per_image["correct"]
        index = int(candidates.int().argmax()) if candidates.any() else 0
    clean = to_pixels(images[index: index + 1]).to(device)
    generator = torch.Generator().manual_seed(sample_seed(s["seed"], index))
    adversarial = pgd(net, clean, labels[index: index + 1].to(device), top / 255, s["pgd_steps"], s["pgd_step_size"],
                      generator=generator)
    plot_example(net, clean[0], adversarial[0], classes, top, out)
    return {"index": index, "eps_255": top}


def _patch_figure(net: nn.Module, model_name: str, patches: dict, images: torch.Tensor, labels: torch.Tensor,
                  source: int, target: int, classes: list[str], rows: list[dict], seed: int, out: Path) -> None:
    """patch.png on the first test image of the source class (else the first), at seeded positions."""
    of_source = (labels == source).nonzero()
    example = to_pixels(images[int(of_source[0]) if len(of_source) else 0]).to(next(net.buffers()).device)
    generator = torch.Generator().manual_seed(sample_seed(seed, 1))
    positions = {}
    for area, patch in patches.items():
        tops, lefts = random_positions(1, patch.shape[-1], *example.shape[-2:], generator)
        positions[area] = (int(tops[0]), int(lefts[0]))
    plot_patch(net, patches, example, positions, classes, rows, out, target=classes[target],
               title=f"adversarial patch on {model_name}: {classes[source]} -> {classes[target]} "
                     f"({rows[0]['n']} test images of {classes[source]}, each patch at a random place)")

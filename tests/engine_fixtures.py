"""Small prepared data and specs for engine tests (generated images, real prepare step)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from conftest import REPO
from frelon import spec as frelon_spec
from frelon.data.demo import generate_hornet
from frelon.data.folder import prepare


def prepared_hornet(root: Path, presence: int = 20, absence: int = 28, size: int = 32) -> Path:
    generate_hornet(root / "raw", presence, absence, size=48, seed=0)
    prepare(root / "raw", ["absence", "presence"], 0.2, 0.2, size, 0, root / "prepared")
    return root / "prepared"


def make_spec(data_dir: Path, out: Path, **train) -> dict:
    """The demo's finetune/random spec on `data_dir`, writing to `out`, with `train` overrides."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    spec = frelon_spec.resolve(config, "results/runs/finetune/random/seed0")
    spec["data"]["dir"] = str(data_dir)
    report = json.loads((data_dir / "report.json").read_text())
    spec["data"]["preprocessing"].update(resize=report["resize"], crop=report["image_size"])
    spec["output"] = str(out)
    spec["train"].update({"checkpoint_minutes": 0, **train})  # a state at every epoch end, as resume tests expect
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec))
    return spec

"""Snakemake step: the online augmentation a study compares, on the same training images (one row each)."""

import sys
from pathlib import Path

from frelon.report.augmentation import preview_online

sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects it)
preview_online(Path(snakemake.input[0]) / "train.pt", snakemake.params.preprocessing,  # noqa: F821
               snakemake.params.settings, snakemake.output[0], seed=snakemake.params.seed)  # noqa: F821

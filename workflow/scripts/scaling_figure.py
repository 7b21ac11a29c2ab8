"""Snakemake step: a scaling study's speed-up and efficiency (frelon.report.figures)."""

import sys

import pandas as pd

from frelon.errors import FrelonError
from frelon.report.figures import scaling_plot

sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects it)
study = snakemake.wildcards.study  # noqa: F821
if not scaling_plot(pd.read_csv(snakemake.input[0]), study, snakemake.output[0]):  # noqa: F821
    raise FrelonError(f"{snakemake.input[0]} has no speed-up: no run of this study scored on one process")  # noqa: F821

"""Snakemake step: a study's training curves and learning-rate schedules (frelon.report.figures)."""

import sys

from frelon.report.figures import study_curves

sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects it)
study_curves(snakemake.wildcards.study, snakemake.params.runs, snakemake.output[0])  # noqa: F821

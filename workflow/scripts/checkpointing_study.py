"""Snakemake step: the gradient-checkpointing study (logic in frelon.evaluate.memory)."""

import sys

import torch

from frelon.evaluate.memory import run_study

sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects it)
torch.set_num_threads(snakemake.threads)  # noqa: F821
run_study(snakemake.params.settings, snakemake.params.device,  # noqa: F821
          snakemake.output.csv, snakemake.output.md, snakemake.output.figure)  # noqa: F821

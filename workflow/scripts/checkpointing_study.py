"""Snakemake step: the gradient-checkpointing study (logic in frelon.studies.checkpointing)."""

import sys

import torch

from frelon.studies.checkpointing import run_study
from frelon.launch.launcher import study_gpu

sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects it)
torch.set_num_threads(snakemake.threads)  # noqa: F821
device = snakemake.params.device  # noqa: F821
with study_gpu(device):  # "cuda" is then the GPU it holds (the current device)
    run_study(snakemake.params.settings, device,  # noqa: F821
              snakemake.output.csv, snakemake.output.md, snakemake.output.figure)  # noqa: F821

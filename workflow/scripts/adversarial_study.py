"""Snakemake step: the adversarial study (logic in frelon.studies.adversarial)."""

import os
import sys

import torch

from frelon.studies.adversarial import run_study
from frelon.launch.launcher import study_gpu

sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects it)
torch.set_num_threads(snakemake.threads)  # noqa: F821
params = snakemake.params  # noqa: F821
with study_gpu(params.device) as held:
    models = {name: f"{run}/model.pt" for name, run in params.models.items()}
    run_study(models, snakemake.input.data, os.path.dirname(snakemake.output.attacks),  # noqa: F821
              params.settings, "cuda" if held else "cpu")

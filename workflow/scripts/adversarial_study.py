"""Snakemake step: the adversarial study (logic in frelon.studies.adversarial)."""

import contextlib
import os
import sys

import torch

from frelon.studies.adversarial import run_study
from frelon.train.launcher import DEFAULT_LOCK_DIR, LOCK_DIR_VAR, Claim, gpu_slots, visible_gpus

sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects it)
torch.set_num_threads(snakemake.threads)  # noqa: F821
params = snakemake.params  # noqa: F821
# A GPU is taken as training runs take theirs (a lock) on a workstation; under SLURM the allocation is its own.
gpus = [] if "SLURM_JOB_ID" in os.environ else visible_gpus(params.device)
slot = gpu_slots(1, gpus, os.environ.get(LOCK_DIR_VAR, DEFAULT_LOCK_DIR)) if gpus else contextlib.nullcontext(Claim([]))
with slot as claim:
    device = "cpu"
    if claim.gpus and torch.cuda.is_available():
        torch.cuda.set_device(gpus.index(claim.gpus[0]))
        device = "cuda"
    models = {name: f"{run}/model.pt" for name, run in params.models.items()}
    run_study(models, snakemake.input.data, os.path.dirname(snakemake.output.attacks),  # noqa: F821
              params.settings, device)

"""Snakemake step: the gradient-checkpointing study (logic in frelon.studies.checkpointing)."""

import contextlib
import os
import sys

import torch

from frelon.studies.checkpointing import run_study
from frelon.train.launcher import DEFAULT_LOCK_DIR, LOCK_DIR_VAR, Claim, gpu_slots, visible_gpus

sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects it)
torch.set_num_threads(snakemake.threads)  # noqa: F821
device = snakemake.params.device  # noqa: F821
# On a workstation the study takes its GPU as training runs do (a lock), so that no other job, of this
# Snakemake or another user's, is handed that GPU while it measures; under SLURM the allocation is its own.
gpus = [] if "SLURM_JOB_ID" in os.environ else visible_gpus(device)
lock_dir = os.environ.get(LOCK_DIR_VAR, DEFAULT_LOCK_DIR)
slot = gpu_slots(1, gpus, lock_dir) if gpus else contextlib.nullcontext(Claim([]))
with slot as claim:
    if claim.gpus and torch.cuda.is_available():  # "cuda" is then the claimed GPU (the current device)
        torch.cuda.set_device(gpus.index(claim.gpus[0]))
    run_study(snakemake.params.settings, device,  # noqa: F821
              snakemake.output.csv, snakemake.output.md, snakemake.output.figure)  # noqa: F821

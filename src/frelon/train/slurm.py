"""Training inside a SLURM allocation: one job step (`srun`) with one task per node, each starting the
ranks of its node (`python -m frelon.train.node`, which runs torchrun or, for one process, the worker).

Why a job step of its own, not the batch script's processes: SLURM's warning signal
(`sbatch --signal=USR1@<seconds>`) goes to the processes of the job's steps, not to the batch step.
The SLURM executor plugin's batch script is `/bin/sh` running Snakemake, which runs the rule's shell,
which runs this launcher: a signal meant for the ranks kills any of them that does not handle it
(`--signal=B:USR1` signals only that `/bin/sh`, which dies of it, and the job ends). A step that holds
only torchrun (told to ignore USR1) and the ranks receives the warning where it is handled: every rank
saves and exits 75, and the rerun resumes. SIGTERM (preemption, `scancel`, the time limit) reaches the
same processes; torchrun passes it on to the ranks, which do the same.

Several nodes (`train.nodes`): one torchrun per node, c10d rendezvous on the first node (where the batch
script, hence this launcher, runs). Each node starts one rank per GPU SLURM gave it there; torchrun numbers
them across nodes, and the worker checks the total against the spec's world size.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from frelon.errors import FrelonError


def allocation_nodes(job: str) -> int:
    """How many nodes the allocation has (the SLURM executor's job step hides SLURM_JOB_NUM_NODES)."""
    listed = os.environ.get("SLURM_JOB_NUM_NODES")
    if listed:
        return int(listed)
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%D"], capture_output=True, text=True)
    try:
        return int(out.stdout.split()[0])
    except (IndexError, ValueError):
        raise FrelonError(f"cannot tell how many nodes SLURM job {job} has (squeue -j {job}: "
                          f"{(out.stderr or out.stdout).strip() or 'no output'})") from None


def free_port(host: str = "") -> int:
    """A TCP port free on this host now (the rendezvous binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def step_command(worker_args: list[str], world_size: int, nodes: int, device: str,
                 endpoint: str | None = None, python: str = sys.executable) -> list[str]:
    """The `srun` command line that starts the ranks of a run on `nodes` nodes of this allocation.

    One task per node (`--ntasks-per-node=1`): each task is a node agent that starts that node's ranks.
    The step gets the job's GPUs of each node (SLURM's default for a step), and `--kill-on-bad-exit`
    stops the other nodes when one fails, instead of leaving them waiting in the rendezvous.
    """
    rendezvous = endpoint or f"{socket.gethostname()}:{free_port()}"
    job = os.environ.get("SLURM_JOB_ID", "0")
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
            "--export=ALL", python, "-m", "frelon.train.node", f"--nodes={nodes}", f"--world-size={world_size}",
            f"--device={device}", f"--rendezvous={rendezvous}", f"--rendezvous-id=frelon-{job}", "--",
            *worker_args]

"""Training inside a SLURM allocation: one job step (`srun`) with one task per node, each starting the
ranks of its node (`python -m frelon.launch.node`, which runs torchrun or, for one process, the worker).

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
import re
import socket
import subprocess
import sys

from frelon.errors import FrelonError


def allocation(job: str, env: dict[str, str]) -> tuple[int, int | None]:
    """How many nodes the allocation has, and the fewest CPUs it has on one of them (None if unknown). The
    SLURM executor's job step hides SLURM_JOB_NUM_NODES and SLURM_JOB_CPUS_PER_NODE: squeue tells them."""
    listed = env.get("SLURM_JOB_NUM_NODES")
    cpus = _fewest(env.get("SLURM_JOB_CPUS_PER_NODE"))
    if listed and cpus:
        return int(listed), cpus
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%D %C"], capture_output=True, text=True)
    except OSError:
        out = None
    counts = out.stdout.split()[:2] if out else []
    if len(counts) == 2 and all(c.isdigit() and int(c) > 0 for c in counts):
        nodes, total = (int(c) for c in counts)
        return nodes, total // nodes
    if listed:
        return int(listed), None
    reason = (out.stderr or out.stdout).strip() if out else "squeue not found"
    raise FrelonError(f"cannot tell how many nodes SLURM job {job} has (squeue -j {job}: {reason or 'no output'})")


def free_port(host: str = "") -> int:
    """A TCP port free on this host now (the rendezvous binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _fewest(listed: str | None) -> int | None:
    """The smallest count of a SLURM per-node list such as `8(x2),4` (None if empty or unreadable)."""
    counts = [int(m[1]) for m in re.finditer(r"(\d+)(?:\(x\d+\))?(?:,|$)", listed or "")]
    return min(counts) if counts else None


def node_share(env: dict[str, str], nodes: int, device: str, cpus: int | None) -> list[str]:
    """What each node's task of the step gets: the job's `cpus` on a node (srun gives a task one CPU
    unless told, and from SLURM 22.05 on it no longer takes --cpus-per-task from the job; with CPU binding,
    task/affinity or task/cgroup, the node's ranks and their loader workers would share it), and the GPUs
    the job has there, where they are even (--gpus-per-node of the job, or a one-node job's GPUs)."""
    share = [f"--cpus-per-task={cpus}"] if cpus else []
    per_node = env.get("SLURM_GPUS_PER_NODE", "").rsplit(":", 1)[-1]
    visible = [g for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
    gpus = int(per_node) if per_node.isdigit() else len(visible) if nodes == 1 else 0
    if gpus and device != "cpu":
        share.append(f"--gpus-per-node={gpus}")
    return share


def step_command(worker_args: list[str], world_size: int, nodes: int, device: str, cpus: int | None = None,
                 endpoint: str | None = None, python: str = sys.executable,
                 env: dict[str, str] | None = None) -> list[str]:
    """The `srun` command line that starts the ranks of a run on `nodes` nodes of this allocation.

    One task per node (`--ntasks-per-node=1`): each task is a node agent that starts that node's ranks,
    with the node's `cpus` and GPUs (`node_share`); `--kill-on-bad-exit` stops the other nodes when one
    fails, instead of leaving them waiting in the rendezvous.
    """
    env = os.environ if env is None else env
    rendezvous = endpoint or f"{socket.gethostname()}:{free_port()}"
    job = env.get("SLURM_JOB_ID", "0")
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", *node_share(env, nodes, device, cpus),
            "--kill-on-bad-exit=1", "--export=ALL", python, "-m", "frelon.launch.node", f"--nodes={nodes}", f"--world-size={world_size}",
            f"--device={device}", f"--rendezvous={rendezvous}", f"--rendezvous-id=frelon-{job}", "--",
            *worker_args]

"""The task `srun` starts on each node of a SLURM training step (see frelon.launch.slurm): it starts this
node's ranks, one per GPU SLURM gave the node (or world size / nodes processes without GPUs), and
then is torchrun (or the worker itself, for a single process) by `exec`.

USR1 is SLURM's warning before the time limit: it is set to be ignored here, so that torchrun, which
has no handler for it, inherits that and survives it, while the ranks (which install their own handler)
save their state and exit. Without this, torchrun would die of the signal and the step would end before
the ranks finished saving.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from frelon.errors import FrelonError
from frelon.launch.launcher import THREAD_VARIABLES, record_launch


def node_gpus(device: str, env: dict[str, str]) -> list[str]:
    """The GPU ids SLURM gave this node's part of the step (none when the run is pinned to the CPU)."""
    return [g for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g] if device != "cpu" else []


def local_processes(world_size: int, nodes: int, device: str, env: dict[str, str]) -> int:
    """Ranks to start on this node: one per GPU the step has here, else an equal share of world_size."""
    gpus = node_gpus(device, env)
    if gpus:
        if nodes == 1 and len(gpus) != world_size:
            raise FrelonError(f"world_size {world_size} but the allocation has {len(gpus)} GPUs "
                              f"({','.join(gpus)}); ask SLURM for --gpus={world_size}")
        return len(gpus)
    if world_size % nodes:
        raise FrelonError(f"world_size {world_size} does not divide into {nodes} nodes; "
                          f"set train.world_size to a multiple of train.nodes")
    return world_size // nodes


def command(args: argparse.Namespace, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The program this node becomes, and its environment (LOCAL_PROCESSES: the ranks it starts here)."""
    per_node = local_processes(args.world_size, args.nodes, args.device, env)
    env = dict(env)
    cpus = int(env.get("SLURM_CPUS_ON_NODE") or os.cpu_count() or 1)
    env.update({name: str(max(1, cpus // per_node)) for name in THREAD_VARIABLES})
    env["LOCAL_PROCESSES"] = str(per_node)
    if args.nodes == 1 and args.world_size == 1:
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        return [sys.executable, "-m", "frelon.launch.worker", *args.worker_args], env
    if args.nodes == 1:
        topology = ["--standalone"]
    else:
        topology = ["--nnodes", str(args.nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", args.rendezvous,
                    "--rdzv-id", args.rendezvous_id, "--max-restarts", "0"]
    return [sys.executable, "-m", "torch.distributed.run", *topology, f"--nproc-per-node={per_node}",
            "-m", "frelon.launch.worker", *args.worker_args], env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="frelon.launch.node")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rendezvous", default="")
    parser.add_argument("--rendezvous-id", default="frelon")
    parser.add_argument("worker_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.worker_args[:1] == ["--"]:
        args.worker_args = args.worker_args[1:]
    try:
        cmd, env = command(args, dict(os.environ))
    except FrelonError as exc:
        print(f"frelon.launch.node: {exc}", file=sys.stderr, flush=True)
        return 2
    record_launch(env, args.worker_args, node_gpus(args.device, env), args.world_size,
                  local_processes=int(env["LOCAL_PROCESSES"]), cpus=len(os.sched_getaffinity(0)))
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # kept across exec: see the module docstring
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())

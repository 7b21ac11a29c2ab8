"""The one way training starts: pick devices, then `torchrun --standalone` N worker processes
(a single process is started directly: same worker, same environment, 2 s less per launch).

Snakemake counts GPUs (`resources: gpu=N`) but does not say which ones a job may use, so
concurrent local jobs take free GPUs with file locks. Under SLURM the allocation already
names the job's GPUs. Without GPUs, N CPU processes share the job's threads (gloo backend).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from frelon.errors import FrelonError
from frelon.train.preemption import EXIT_PREEMPTED, PREEMPTED_MARKER

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# Every BLAS/OpenMP pool must get the per-process share: Snakemake sets them all to the job's
# threads, and one left at that value oversubscribes the cores (slower, and different numbers).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def visible_gpus(device: str) -> list[str]:
    """GPU ids this job may use: none on CPU, else CUDA_VISIBLE_DEVICES or every GPU present."""
    if device == "cpu":
        return []
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        if device == "cuda":
            raise FrelonError("device: cuda but no GPU is visible; set device: cpu or auto in the config")
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return listed.split(",")[:count] if listed else [str(i) for i in range(count)]


@contextlib.contextmanager
def gpu_slots(n: int, candidates: list[str], lock_dir: str | os.PathLike,
              timeout_s: float = 3600, poll_s: float = 5) -> Iterator[list[str]]:
    """Hold exclusive locks on `n` of `candidates` for the duration of the block."""
    if n > len(candidates):
        raise FrelonError(f"world_size {n} needs {n} GPUs but only {len(candidates)} are visible "
                          f"({','.join(candidates)}); lower train.world_size or ask for more GPUs")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        held: list[tuple[str, int]] = []
        for gpu in candidates:
            fd = os.open(lock_dir / f"gpu{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append((gpu, fd))
            if len(held) == n:
                break
        if len(held) == n:
            break
        for _, fd in held:
            os.close(fd)
        if time.monotonic() > deadline:
            raise FrelonError(f"no {n} free GPUs among {','.join(candidates)} after {timeout_s:.0f} s; "
                              f"check for stale jobs or run snakemake with --resources gpu=<number of GPUs>")
        time.sleep(poll_s)
    try:
        yield [gpu for gpu, _ in held]
    finally:
        for _, fd in held:
            os.close(fd)


def _run_forwarding_signals(cmd: list[str], env: dict[str, str]) -> int:
    """Run `cmd`; SIGTERM/SIGINT/SIGUSR1 sent to us are passed on to it (torchrun relays them to ranks)."""
    child = subprocess.Popen(cmd, env=env)
    previous = {sig: signal.signal(sig, lambda s, _f: child.send_signal(s)) for sig in FORWARDED_SIGNALS}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def launch(worker_args: list[str], world_size: int, device: str, threads: int | None = None) -> int:
    """Start `frelon.train.worker` on `world_size` processes; returns the exit code: 0, 75 when the
    run stopped on request with its state saved (rerun to resume), otherwise the failure's code.
    torchrun turns any failed rank into 1, so ranks that stop on request leave a marker file."""
    env = dict(os.environ)
    gpus = visible_gpus(device)
    under_slurm = "SLURM_JOB_ID" in env
    lock_dir = env.get("FRELON_GPU_LOCK_DIR", "/tmp/frelon-gpu-locks")
    slots = (gpu_slots(world_size, gpus, lock_dir) if gpus and not under_slurm
             else contextlib.nullcontext(gpus[:world_size]))
    with slots as chosen:
        if chosen:
            if len(chosen) < world_size:
                raise FrelonError(f"world_size {world_size} needs {world_size} GPUs but the allocation has "
                                  f"{len(chosen)}; ask SLURM for --gpus={world_size} or lower train.world_size")
            env["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
        else:
            per_process = str(max(1, (threads or os.cpu_count() or 1) // world_size))
            env.update({name: per_process for name in THREAD_VARIABLES})
        if world_size == 1:
            env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
            cmd = [sys.executable, "-m", "frelon.train.worker", *worker_args]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={world_size}", "-m", "frelon.train.worker", *worker_args]
        with tempfile.TemporaryDirectory(prefix="frelon-launch-") as tmp:
            marker = Path(tmp) / "preempted"
            env[PREEMPTED_MARKER] = str(marker)
            code = _run_forwarding_signals(cmd, env)
            return EXIT_PREEMPTED if code != 0 and marker.exists() else code

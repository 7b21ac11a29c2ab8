"""The one way training starts: pick devices, then `torchrun --standalone` N worker processes
(a single process is started directly: same worker, same environment, 2 s less per launch). A CPU
run outside SLURM is instead forked, ranks and all, from a warm server that imported everything
once (`frelon.launch.warm`: 5 s less per run); FRELON_WARM=0 starts it cold.

Snakemake counts GPUs (`resources: gpu=N`) but does not say which ones a job may use, so
concurrent local jobs take free GPUs with file locks (`frelon.parallel.gpu_locks`). Under SLURM the
allocation already names the job's GPUs and no lock is taken. Without GPUs, N CPU processes share the job's threads
(gloo backend).

Environment variables
---------------------
- FRELON_GPU_LOCK_DIR: where the GPU lock files live (default /tmp); every user of the machine's GPUs
  must use the same one, owned by root (or by the only user), mode 1777.
- FRELON_GPU_LOCKS, FRELON_GPU_LEASE: set by the launcher for its ranks (see above).
- FRELON_LAUNCH_RECORD: a file to which each launch appends one JSON line: cuda_visible_devices
  (what the ranks see, or null), gpus (the ids it trains on, [] on CPU), world_size, slurm_job_id
  (or null), host, pid, time (Unix seconds).
- FRELON_FAKE_GPUS (tests only): pretend GPUs are present while the ranks train on the CPU with
  gloo. `N` means "the machine has N GPUs" (ids 0..N-1) unless CUDA_VISIBLE_DEVICES is set, whose
  ids are then taken as the visible GPUs whatever N is (as under SLURM with fake GPU devices,
  where CUDA sees none): FRELON_FAKE_GPUS=1 with CUDA_VISIBLE_DEVICES=0,1 is two GPUs. Unset,
  empty or 0: real GPUs only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from frelon.errors import FrelonError
from frelon.parallel import parentage
from frelon.launch import warm
from frelon.parallel.gpu_locks import (DEFAULT_LOCK_DIR, LEASE_VAR, LOCK_DIR_VAR, RANK_LOCKS_VAR, Claim, fake_gpus,
                                    gpu_slots)
from frelon.parallel.preemption import EXIT_PREEMPTED, PREEMPTED_MARKER

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# Every BLAS/OpenMP pool must get the per-process share: Snakemake sets them all to the job's
# threads, and one left at that value oversubscribes the cores (slower, and different numbers).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
LAUNCH_RECORD_VAR = "FRELON_LAUNCH_RECORD"
WORKER = "frelon.launch.worker"  # the module every rank runs (tests put a stand-in here)


def visible_gpus(device: str) -> list[str]:
    """GPU ids this job may use: none on CPU, else CUDA_VISIBLE_DEVICES or every GPU present."""
    if device == "cpu":
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    fake = fake_gpus()
    if fake is not None:
        gpus = [g.strip() for g in listed.split(",") if g.strip()] if listed is not None \
            else [str(i) for i in range(fake)]
    else:
        import torch

        count = torch.cuda.device_count()
        gpus = listed.split(",")[:count] if listed else [str(i) for i in range(count)]
    if not gpus and device == "cuda":
        raise FrelonError(unusable_gpus() or "device: cuda but no GPU is visible; set device: cpu or auto in the config")
    return gpus


# Present wherever a driver torch.cuda can use is loaded: NVIDIA, WSL2's GPU bridge, AMD ROCm.
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg", "/dev/kfd")


def gpu_count() -> int:
    """How many GPUs this machine shows a job (CUDA_VISIBLE_DEVICES and FRELON_FAKE_GPUS respected):
    the value for `snakemake --resources gpu=N`. Quick where it can be: no torch import (2 s) when
    GPUs are pretended, or on a Linux machine without any GPU driver. Says why, on stderr, when the
    machine has NVIDIA GPUs that torch cannot use."""
    if (fake_gpus() is None and sys.platform.startswith("linux")
            and not any(os.path.exists(p) for p in GPU_DRIVER_FILES)):
        return 0
    count = len(visible_gpus("auto"))
    if count == 0:
        warn_unusable_gpus()
    return count


def unusable_gpus() -> str | None:
    """Why torch sees no GPU on a machine whose `nvidia-smi` lists some (the driver is older than the CUDA
    torch was built for, the build dropped the GPU's architecture, or torch is a CPU-only build); None when
    nvidia-smi lists none, is missing, or torch sees them."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1")  # no GPU for this job, on purpose
    if fake_gpus() is not None or hidden or not shutil.which("nvidia-smi"):
        return None
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = re.findall(r"^GPU \d+: (.+?)(?: \(UUID.*)?$", listed, flags=re.M)
    if not names:
        return None
    import torch

    if torch.cuda.device_count():
        return None
    driver = re.search(r"Driver Version: *([\d.]+)", header)
    supports = re.search(r"CUDA Version: *([\d.]+)", header)
    built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU-only build)"
    cause = ("install a build with CUDA" if not torch.version.cuda else
             f"its driver runs CUDA {supports[1]} at most" if supports else "check its driver (nvidia-smi)")
    return (f"this machine has {len(names)} NVIDIA GPU(s) ({', '.join(sorted(set(names)))}; driver "
            f"{driver[1] if driver else 'unknown'}) but torch {torch.__version__}, built for {built}, sees none: "
            f"{cause}, and CUDA 13 builds no longer run on Volta (V100) or older GPUs. Runs on device: auto "
            f"train on the CPU. Install the torch build for this driver (README, Install: e.g. make install "
            f"TORCH=\"torch torchvision --extra-index-url https://download.pytorch.org/whl/cu126\" for drivers "
            f"from 525), or set device: cpu in the config to train on the CPU without this warning.")


def warn_unusable_gpus() -> None:
    """`unusable_gpus`, loudly, on stderr."""
    reason = unusable_gpus()
    if reason:
        print(f"WARNING: {reason}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def study_gpu(device: str) -> Iterator[bool]:
    """One GPU for a study that runs in its job's own process (checkpointing, adversarial), not through
    `launch`: on a workstation taken with a lock as training runs take theirs, so that no other job is
    handed it while the study measures; under SLURM the allocation is the job's own. Yields whether a
    GPU is held (then the current CUDA device)."""
    gpus = [] if "SLURM_JOB_ID" in os.environ else visible_gpus(device)
    lock_dir = os.environ.get(LOCK_DIR_VAR, DEFAULT_LOCK_DIR)
    with gpu_slots(1, gpus, lock_dir) if gpus else contextlib.nullcontext(Claim([])) as claim:
        import torch

        held = bool(claim.gpus) and torch.cuda.is_available()
        if held:
            torch.cuda.set_device(gpus.index(claim.gpus[0]))
        yield held


# --- launching ------------------------------------------------------------------------------------

def record_launch(env: dict[str, str], worker_args: list[str], gpus: list[str], world_size: int,
                  **more) -> None:
    """Append one JSON line about this launch (or, under SLURM, this node's part of it) to
    $FRELON_LAUNCH_RECORD, if set: mode and spec (the worker's arguments) and what it was given."""
    path = env.get(LAUNCH_RECORD_VAR)
    if not path:
        return
    line = json.dumps({"mode": worker_args[0] if worker_args else None,
                       "spec": worker_args[1] if len(worker_args) > 1 else None,
                       "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"), "gpus": gpus,
                       "world_size": world_size, "slurm_job_id": env.get("SLURM_JOB_ID"),
                       "node": env.get("SLURMD_NODENAME"), "host": socket.gethostname(), "pid": os.getpid(),
                       "time": time.time(), **more})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one whole line per launch, also on a shared file system
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _run_forwarding_signals(cmd: list[str], env: dict[str, str], pass_fds: list[int] = ()) -> int:
    """Run `cmd` (inheriting `pass_fds`); SIGTERM/SIGINT/SIGUSR1 sent to us are passed on to it, as
    SIGTERM where it would not pass them on itself: torchrun dies of SIGUSR1 (its ranks would be left
    mid-save) but relays SIGTERM to them, and srun answers SIGINT with a status line only."""
    # torchrun (or srun) dies with us: killed, we take the run down (SIGTERM: its ranks save and stop)
    child = subprocess.Popen(cmd, env=env, pass_fds=tuple(pass_fds), preexec_fn=parentage.die_with_parent)
    relayed = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
    if "torch.distributed.run" in cmd:
        relayed.discard(signal.SIGUSR1)
    if cmd[0] == "srun":
        relayed.discard(signal.SIGINT)

    def forward(signum: int, _frame) -> None:
        child.send_signal(signum if signum in relayed else signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def launch(worker_args: list[str], world_size: int, device: str, threads: int | None = None,
           as_job: bool = False) -> int:
    """Start `frelon.launch.worker` on `world_size` processes; returns the exit code: 0, 75 when the
    run stopped on request with its state saved (rerun to resume), otherwise the failure's code.
    torchrun turns any failed rank into 1, so ranks that stop on request leave a marker file.

    In a SLURM allocation made for this run (the profile's jobs: exactly its GPUs, or several nodes)
    the ranks run in a job step of their own over the allocation's nodes (frelon.launch.slurm). In an
    allocation with more GPUs than the run needs (Snakemake run inside `salloc` or `sbatch`), runs
    share its GPUs as on a workstation, with locks.

    `as_job` (a pipeline job: `frelon train --as-job`): the launch stops when the job's shell dies, and its
    ranks then write no output (`frelon.parallel.parentage`); in any launch they write none once it is gone."""
    env = dict(os.environ)
    for name in (RANK_LOCKS_VAR, LEASE_VAR):  # an enclosing launch's, never this one's
        env.pop(name, None)
    if as_job:
        parentage.die_with_parent()
    parentage.mark(env, with_parent=as_job)
    gpus = visible_gpus(device)
    if device == "auto" and not gpus:
        warn_unusable_gpus()
    if "SLURM_JOB_ID" in env:
        from frelon.launch import slurm

        nodes, cpus = slurm.allocation(env["SLURM_JOB_ID"], env)
        if nodes > 1 or len(gpus) <= world_size:
            cmd = slurm.step_command(worker_args, world_size, nodes, device, cpus, env=env)
            # the marker goes where every node sees it: rank 0 may run on any node of the step
            with tempfile.TemporaryDirectory(prefix=".frelon-launch-", dir=os.getcwd()) as tmp:
                marker = Path(tmp) / "preempted"
                env[PREEMPTED_MARKER] = str(marker)
                code = _run_forwarding_signals(cmd, env)
                return EXIT_PREEMPTED if code != 0 and marker.exists() else code
    lock_dir = env.get(LOCK_DIR_VAR, DEFAULT_LOCK_DIR)
    slots = gpu_slots(world_size, gpus, lock_dir) if gpus else contextlib.nullcontext(Claim([]))
    with slots as claim:
        if claim.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(claim.gpus)
            env.update(claim.env)
        per_process = str(max(1, (threads or os.cpu_count() or 1) // world_size))
        if not claim.gpus or fake_gpus() is not None:  # pretended GPUs: the ranks run on the CPU
            env.update({name: per_process for name in THREAD_VARIABLES})
        # a CPU run is forked from a process that has imported everything already (frelon.launch.warm)
        use_warm = not claim.gpus and "SLURM_JOB_ID" not in env and warm.enabled(env)
        if world_size == 1:
            env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
            cmd = [sys.executable, "-m", WORKER, *worker_args]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={world_size}", "-m", WORKER, *worker_args]
        record_launch(env, worker_args, claim.gpus, world_size, **({"warm": True} if use_warm else {}))
        with tempfile.TemporaryDirectory(prefix="frelon-launch-") as tmp:
            marker = Path(tmp) / "preempted"
            env[PREEMPTED_MARKER] = str(marker)
            code = None
            if use_warm:
                try:  # warm.run raises only before anything started: then start it cold
                    code = warm.run(WORKER, worker_args, world_size, env, int(per_process))
                except Exception as exc:  # noqa: BLE001 - whatever broke the warm path, the run goes on cold
                    print(f"frelon: no warm server ({type(exc).__name__}: {exc}); starting cold", file=sys.stderr,
                          flush=True)
            if code is None:  # cold: a new interpreter per rank (and torchrun for several)
                code = _run_forwarding_signals(cmd, env, claim.fds)
            return EXIT_PREEMPTED if code != 0 and marker.exists() else code

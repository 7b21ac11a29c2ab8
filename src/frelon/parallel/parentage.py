"""Who a run answers to: a training job is the launcher (`frelon train`) that Snakemake's job shell started;
once that launcher or its shell is gone, the job has been reported failed and its outputs removed, so the
run's ranks must not write them again.

- Every process of a run dies with its parent (`die_with_parent`, Linux's PR_SET_PDEATHSIG): the launcher
  of a pipeline job (`frelon train --as-job`) with its job shell, torchrun with the launcher, each rank with
  torchrun (or a warm supervisor, which itself stops the ranks when its launcher's socket closes). The
  signal is SIGTERM, the usual stop: ranks save their resumable state and exit.
- The launcher names itself to its ranks (`mark`: host, pid, start time and, for a pipeline job, its parent
  pid, in $FRELON_LAUNCH).
  Before a rank puts an output in place (model.pt, history.csv, metrics.json, detections: every atomic
  write outside its resumable state/), `check_output` makes sure that launcher still runs under the same
  parent; else it raises `LaunchGone` and the rank writes nothing more. Without that, a killed launcher's
  ranks finished later and wrote metrics.json into a run folder whose model.pt Snakemake had just removed.

The check reads /proc, so it applies where the rank runs on the launcher's machine; the ranks of other
nodes (SLURM) are stopped by their job step. What it cannot close is the moment between the check and the
rename (microseconds), against Snakemake's reaction to a dead job (milliseconds at least).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

LAUNCH_VAR = "FRELON_LAUNCH"
PR_SET_PDEATHSIG = 1


class LaunchGone(RuntimeError):
    """The launcher of this run is gone (killed, or its job shell was): the run writes nothing more."""


def die_with_parent(parent: int | None = None, sig: int = signal.SIGTERM) -> None:
    """Have Linux send `sig` to this process when its parent dies (the usual save-and-exit path); if the parent
    is gone already (not `parent`, or, without it, changed while this was set), end now, as that signal's
    default action would: nothing trains on without a parent watching it. Nothing elsewhere than Linux."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    expected = os.getppid() if parent is None else parent
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != expected:
        os._exit(128 + sig)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process from /proc, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (command) ": state is field 3 of proc(5)
    return fields[0], int(fields[1]), int(fields[19])


def mark(env: dict[str, str], with_parent: bool) -> None:
    """Name this process (the launcher) to the ranks it starts with `env`; `with_parent`: its parent (a job's
    shell) too, whose death ends the launch as well (not for a launch a user started by hand: `nohup`)."""
    own = _stat(os.getpid())
    if own is not None:
        env[LAUNCH_VAR] = f"{socket.gethostname()} {os.getpid()} {own[2]} {own[1] if with_parent else 0}"


def gone(env: dict[str, str] | None = None) -> str | None:
    """Why the launcher named in $FRELON_LAUNCH is gone, or None while it runs under its first parent (or
    when this process cannot tell: no launcher named, another machine, no /proc)."""
    value = (os.environ if env is None else env).get(LAUNCH_VAR)
    if not value or not Path("/proc/self/stat").exists():
        return None
    try:
        host, pid, start, parent = value.split()
        pid, start, parent = int(pid), int(start), int(parent)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    now = _stat(pid)
    if now is None or now[2] != start or now[0] in ("Z", "X"):
        return f"its launcher (pid {pid}) has exited"
    if parent and now[1] != parent:
        return f"its launcher (pid {pid}) lost its job shell (pid {parent})"
    return None


def check_output(state_folder: Path):
    """An `atomic.set_guard` check for a rank: raises `LaunchGone` before any output is put in place once the
    launcher is gone; writes under `state_folder` (the resumable state) go on, so a stopped run resumes."""
    state_folder = Path(state_folder).resolve()

    def check(target: Path) -> None:
        target = Path(target).resolve()
        if target == state_folder or state_folder in target.parents:
            return
        why = gone()
        if why is not None:
            raise LaunchGone(f"{why}: its job was ended, so {target.name} is not written")

    return check

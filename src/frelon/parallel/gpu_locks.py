"""GPU locks on a workstation (`snakemake --cores all --resources gpu=4`): which launcher and which rank
may use a GPU. The launcher claims GPUs (`gpu_slots`); each rank takes its own lock before it touches
CUDA (`hold_gpu`, called by `distributed.init`), so this sits below both.

Every GPU has two lock files in the lock folder (`$FRELON_GPU_LOCK_DIR`, default /tmp itself); all
locks are `flock`s, which the kernel drops when their holders die, so nothing is ever stale:

- `frelon-gpuN.lock`, the *claim*: held exclusively by the launcher that chose GPU N and by the process
  it starts (torchrun, or the single worker): the descriptor is inherited (`pass_fds`), so a
  launcher killed with SIGKILL leaves the claim with torchrun while torchrun lives.
- `frelon-gpuN.rank.lock`, the *use*: held exclusively by the rank that trains on GPU N, from before it
  touches CUDA until the process exits (`hold_gpu`, called by `distributed.init`). If the launcher
  and torchrun are killed, the ranks keep the GPU until they are gone (they get SIGTERM, save
  their state and exit, which can take a while).

A launcher takes GPU N only if it gets its claim (no live launcher or torchrun has it) and then
finds its rank lock free (no live rank uses it); it keeps the claim until its job ends.
The ranks learn their rank-lock files from `$FRELON_GPU_LOCKS` (one per GPU, in
CUDA_VISIBLE_DEVICES order; rank `LOCAL_RANK` takes its own). A launcher that finds too few free
GPUs says so once and tries again every second, for an hour at most. Locks are named after the
ids the launcher sees (CUDA_VISIBLE_DEVICES, or 0..N-1), so every user must number the GPUs alike.

One race is left by the two locks alone: a launcher and its torchrun die after starting the
ranks but before a rank took its rank lock; another launcher may then claim the GPU, and the late
rank would take the rank lock from under it. So every launch also holds a *lease*, a private
lock file (`$FRELON_GPU_LEASE`) locked exclusively by the launcher and inherited by torchrun, the
same holders as the claim. A rank takes its rank lock and then checks the lease (a shared,
non-blocking probe: it fails while a holder lives): a live lease means the claim was never lost,
and from then on the rank lock keeps everybody out; an expired lease means the launch is gone
and the GPU may already be someone else's, so the rank gives the lock back and fails instead of
training. No two ranks therefore ever hold the same GPU, whatever is killed when.

Every user of the GPUs must use the same lock folder, and none may be able to remove another's lock
files: a removed lock file is created anew by the next launcher, which then locks a file the holder of
the old one does not, and two jobs share a GPU. In a folder with the sticky bit (mode 1777, like /tmp)
only the folder's owner (and root) can remove others' files; so the folder must be owned by root, as
/tmp is, or by the user alone who uses it. A folder of another user is refused, with how to make one.
A folder the launcher creates gets mode 1777, and the lock files 0666 whatever the umask, so that
others can lock them. A file that cannot be opened read-write (another user's, made by an older version, or with
a stricter umask) is opened read-only: `flock` works on it all the same (except on NFS, where an
exclusive lock needs write access). Files are never opened with O_CREAT once they exist, as
Linux's fs.protected_regular refuses that for another user's file in a sticky directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from frelon.errors import FrelonError

DEFAULT_LOCK_DIR = "/tmp"  # root's, sticky: no user can remove another's lock file
LOCK_DIR_VAR = "FRELON_GPU_LOCK_DIR"
RANK_LOCKS_VAR = "FRELON_GPU_LOCKS"
LEASE_VAR = "FRELON_GPU_LEASE"
FAKE_GPUS_VAR = "FRELON_FAKE_GPUS"


def fake_gpus() -> int | None:
    """FRELON_FAKE_GPUS as a number, None when unset, empty or 0 (tests only: see the module doc)."""
    value = os.environ.get(FAKE_GPUS_VAR, "").strip()
    if not value:
        return None
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise FrelonError(f"{FAKE_GPUS_VAR}={value!r}: expected a number of pretended GPUs (tests only)")
    return count or None


# --- lock files ---------------------------------------------------------------------------------

def _lock_dir(path: str | os.PathLike) -> Path:
    """The shared lock folder: made mode 1777 (like /tmp) when missing; an existing one must be a folder
    that no user but root or this one can remove files from (see the module doc)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o777)
    except FileExistsError:
        pass
    else:
        os.chmod(path, 0o1777)  # mkdir's mode went through the umask
        return path
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):  # a symlink planted by another user would redirect our locks
        raise FrelonError(f"the GPU lock folder {path} is not a folder (a link?); remove it, or set "
                          f"{LOCK_DIR_VAR} to a folder of your own")
    if st.st_uid not in (0, os.geteuid()):
        raise FrelonError(f"the GPU lock folder {path} belongs to user {_user(st.st_uid)}, who can remove the lock "
                          f"files of every other user and so let two jobs onto one GPU; have root own it (sudo chown "
                          f"root {path}), or set {LOCK_DIR_VAR} to a folder owned by root with mode 1777 (sudo install "
                          f"-d -m 1777 <folder>), shared by every user of these GPUs")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise FrelonError(f"the GPU lock folder {path} is writable by others without the sticky bit, so any user can "
                          f"remove the lock files and let two jobs onto one GPU; chmod 1777 {path} (by its owner)")
    return path


def _user(uid: int) -> str:
    """A user's name and id, or the id alone."""
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} ({uid})"
    except (ImportError, KeyError):
        return str(uid)


def lock_name(gpu: str, kind: str = "") -> str:
    """The lock file of GPU `gpu`: its claim (`kind` ""), or its rank lock (`kind` "rank")."""
    return f"frelon-gpu{gpu.replace(os.sep, '_')}{'.' + kind if kind else ''}.lock"


def _open_lock(path: Path) -> int:
    """A descriptor on the lock file `path` (for flock), created 0666 if missing; read-only when
    the file exists but may not be opened for writing. Not inherited by children (O_CLOEXEC).
    Never through a symlink, and never a file that is not a plain, singly linked one: in a folder
    every user writes to, that could make us chmod another file (O_NOFOLLOW, then fstat)."""
    flags = os.O_CLOEXEC | os.O_NOFOLLOW
    while True:
        try:
            fd = os.open(path, os.O_RDWR | flags)
        except FileNotFoundError:
            pass
        except PermissionError:
            try:
                return _plain_file(os.open(path, os.O_RDONLY | flags), path)
            except FileNotFoundError:
                continue
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise FrelonError(f"the GPU lock file {path} is a symlink; remove it") from None
            raise
        else:
            st = os.fstat(_plain_file(fd, path))
            if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o666:
                with contextlib.suppress(OSError):
                    os.fchmod(fd, 0o666)  # ours, from an older version or another umask
            return fd
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | flags, 0o666)
        except FileExistsError:
            continue  # someone created it in between: open theirs
        except PermissionError as exc:
            folder = path.parent
            raise FrelonError(f"cannot create the GPU lock file {path}: {exc.strerror}; the folder must be "
                              f"writable by every user of these GPUs (chmod 1777 {folder}, by its owner), or set "
                              f"{LOCK_DIR_VAR} to such a folder") from None
        os.fchmod(fd, 0o666)  # the umask took bits off; every user must be able to open it read-write
        return fd


def _plain_file(fd: int, path: Path) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise FrelonError(f"the GPU lock file {path} is not a plain file with one link; remove it")
    return fd


def _try_flock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _in_use(path: Path) -> bool:
    """Whether a live process holds the lock file `path` (probed, and let go at once)."""
    fd = _open_lock(path)
    try:
        return not _try_flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)  # drops the probe's lock, if it got it


def _lease_expired(path: str) -> bool:
    """Whether no process holds the launch's lease any more (a shared probe fails while one does)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return True
    try:
        return _try_flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


@dataclass
class Claim:
    """GPUs chosen for one launch, and what the started process needs to hold on to them."""
    gpus: list[str]
    fds: list[int] = field(default_factory=list)  # held flocks, inherited by the child (pass_fds)
    env: dict[str, str] = field(default_factory=dict)  # FRELON_GPU_LOCKS and FRELON_GPU_LEASE for the ranks


@contextlib.contextmanager
def gpu_slots(n: int, candidates: list[str], lock_dir: str | os.PathLike,
              timeout_s: float = 3600, poll_s: float = 1) -> Iterator[Claim]:
    """Claim `n` of `candidates` (see the module doc) for the duration of the block."""
    if n > len(candidates):
        raise FrelonError(f"world_size {n} needs {n} GPUs but only {len(candidates)} are visible "
                          f"({','.join(candidates)}); lower train.world_size or ask for more GPUs")
    lock_dir = _lock_dir(lock_dir)
    lease_fd, lease = tempfile.mkstemp(prefix="frelon-gpu-lease-", suffix=".lock")  # private, 0600
    held: list[tuple[str, int]] = []
    try:
        fcntl.flock(lease_fd, fcntl.LOCK_EX)  # a fresh file: nobody else can hold it
        deadline = time.monotonic() + timeout_s
        waiting = False
        while True:
            for gpu in candidates:
                fd = _open_lock(lock_dir / lock_name(gpu))
                # free when no launcher/torchrun claims it and then no rank uses it
                if _try_flock(fd, fcntl.LOCK_EX) and not _in_use(lock_dir / lock_name(gpu, "rank")):
                    held.append((gpu, fd))
                    if len(held) == n:
                        break
                else:
                    os.close(fd)
            if len(held) == n:
                break
            for _, fd in held:
                os.close(fd)
            held = []
            if time.monotonic() > deadline:
                raise FrelonError(f"no {n} free GPUs among {','.join(candidates)} after {timeout_s:.0f} s; "
                                  f"check for stale jobs or run snakemake with --resources gpu=<number of GPUs>")
            if not waiting:
                print(f"waiting for {n} free GPUs among {','.join(candidates)} (locks in {lock_dir})",
                      file=sys.stderr, flush=True)
                waiting = True
            time.sleep(poll_s)
        chosen = [gpu for gpu, _ in held]
        yield Claim(chosen, [lease_fd] + [fd for _, fd in held], {
            RANK_LOCKS_VAR: os.pathsep.join(str(lock_dir / lock_name(g, "rank")) for g in chosen),
            LEASE_VAR: lease,
        })
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lease)
        for _, fd in held:
            os.close(fd)
        os.close(lease_fd)


_HELD_BY_THIS_RANK: list[int] = []  # rank-lock descriptors, open until the process exits


def hold_gpu(local_rank: int, poll_s: float = 0.2) -> None:
    """For a rank, before it touches CUDA: take its GPU's rank lock (waiting while a straggler
    holds it) and keep it until the process exits; fails if its launch's lease has expired (the
    launcher and torchrun are gone, so the GPU may be another job's). Nothing without
    FRELON_GPU_LOCKS (CPU runs, SLURM)."""
    listed = os.environ.get(RANK_LOCKS_VAR)
    if not listed:
        return
    paths = listed.split(os.pathsep)
    if not 0 <= local_rank < len(paths):
        raise FrelonError(f"local rank {local_rank} has no GPU lock among the {len(paths)} in {RANK_LOCKS_VAR}")
    lease = os.environ.get(LEASE_VAR, "")
    fd = _open_lock(Path(paths[local_rank]))
    said = False
    while True:
        if _lease_expired(lease):
            os.close(fd)
            raise FrelonError(f"the launcher that chose this rank's GPU ({paths[local_rank]}) and its torchrun are "
                              f"gone, so the GPU may be another job's now; not starting (rerun the job)")
        if _try_flock(fd, fcntl.LOCK_EX):
            if _lease_expired(lease):  # lost while we waited: give the GPU back at once
                continue
            _HELD_BY_THIS_RANK.append(fd)
            return
        if not said:
            print(f"[rank {local_rank}] waiting for {paths[local_rank]}", file=sys.stderr, flush=True)
            said = True
        time.sleep(poll_s)

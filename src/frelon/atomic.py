"""Atomic, crash-safe writes: a reader sees the old file or the new one, never half of one, even after
the machine loses power.

A file is written beside its target, flushed to the disk (`fsync`), renamed over the target, and the
folder's entry flushed too: without the two syncs a rename can reach the disk before the data, and a
power cut leaves an empty checkpoint. A folder (a prepared dataset) is built beside its target and
swapped in by one rename (Linux's `renameat2(RENAME_EXCHANGE)`; where the file system lacks it, the old
folder is renamed aside first and removed only once the new one is in place), so a kill at any moment
leaves the old folder or the new one whole, never a half-deleted mix.

A temporary file or folder is locked (`flock`) by its writer while it is written. A writer killed
(SIGKILL, power cut) leaves its temporary behind, unlocked: the next write of the same target removes
it, so a job that is run again after a crash leaves no partial file.

A full disk (or quota) while writing leaves the previous version as it was and raises `DiskFull`,
which says which disk, how much the write needed and how much is free.

`set_guard(check)` has `check(target)` called just before each target is put in place: a training rank
uses it to write nothing once its launcher is gone (see `frelon.parallel.parentage`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from frelon.errors import FrelonError

FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left; disk quota exceeded
TMP_SUFFIX = ".tmp"  # temporaries are named .<target name>.<random>.tmp, beside their target

_guard: Callable[[Path], None] | None = None


def set_guard(check: Callable[[Path], None] | None) -> None:
    """Call `check(target)` before every later write puts `target` in place (it raises to stop the write);
    None: no check."""
    global _guard
    _guard = check


def check_write(target: Path) -> None:
    """Raise if the guard (`set_guard`) refuses to put `target` in place now."""
    if _guard is not None:
        _guard(target)


def _lock_temporary(path: Path) -> int:
    """A descriptor holding an exclusive lock on the temporary `path` while its writer lives."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def sweep(target: Path) -> int:
    """Remove the temporaries of `target` whose writers died (killed mid-write: no one holds their lock);
    how many went. A live writer's temporary is locked and kept."""
    removed = 0
    try:
        entries = list(os.scandir(target.parent))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not (entry.name.startswith(f".{target.name}.") and entry.name.endswith(TMP_SUFFIX)):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile, or a link: not ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # its writer is alive
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            removed += 1
        finally:
            os.close(fd)
    return removed


class DiskFull(FrelonError):
    """A write ran out of disk space or quota: `reason` says which, `written` how far it got."""

    def __init__(self, message: str, reason: str, written: int):
        super().__init__(message)
        self.reason, self.written = reason, written


def size_text(n: float) -> str:
    """`1234567` -> `1.2 MB`."""
    if n < 1000:
        return f"{n:.0f} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"


def bytes_in(path: Path) -> int:
    """Size of a file, or of the files under a folder; 0 if there is nothing."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.stat().st_size if path.exists() else 0


def free_space_hint(folder: Path, needed: int) -> str:
    """How much is free on the disk holding `folder`, and what to free there for `needed` more bytes."""
    free = shutil.disk_usage(folder).free
    amount = f"at least {size_text(needed - free)}" if needed > free else "some space"
    return (f"{size_text(free)} left there: free {amount} on that disk (finished runs under results/, "
            f"archives in data/archives/ and data/downloads/ once extracted, other programs' files) or move "
            f"{folder} to a larger disk, then rerun")


def _disk_full(target: Path, written: int, reason: str) -> DiskFull:
    """The error for a write of `target` that stopped after `written` bytes (its temporary removed). The new
    version needs more than that, and likely about as much as the previous one."""
    previous = bytes_in(target)
    kept = f"the previous {target.name} is unchanged" if target.exists() else f"no {target.name} was written"
    likely = f", likely about the {size_text(previous)} of the previous one" if previous > written else ""
    return DiskFull(f"no space left on the disk holding {target.parent} ({reason}): writing {target.name} stopped "
                    f"after {size_text(written)}; {kept}. It needs more than that{likely}; "
                    f"{free_space_hint(target.parent, max(written, previous))}", reason, written)


def current_umask() -> int:
    """The process's umask, read without changing it (`os.umask` can only be read by setting it, which other
    threads would see for that moment): from /proc on Linux, else by the set-and-restore."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def sync_file(path: str | os.PathLike) -> None:
    """Flush a file's data (or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder`, and `folder` itself, to the disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                sync_file(os.path.join(root, name))
        sync_file(root)


@functools.cache
def _renameat2():
    """libc's renameat2, or None (not Linux, or a libc without it)."""
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


AT_FDCWD, RENAME_EXCHANGE = -100, 2


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux's renameat2 RENAME_EXCHANGE); False where the
    system or file system cannot (the caller then falls back to two renames)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it into place only if the block succeeds, its data and
    the folder's new entry flushed to the disk."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held until the end: a sweep keeps the file of a live writer
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        sync_file(tmp_path)
        check_write(target)
        os.replace(tmp_path, target)
        sync_file(target.parent)
    except OSError as exc:
        if exc.errno not in FULL:
            raise
        written = bytes_in(tmp_path)
        tmp_path.unlink(missing_ok=True)
        raise _disk_full(target, written, exc.strerror or "no space left") from exc
    finally:
        tmp_path.unlink(missing_ok=True)
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside `target`; it replaces `target` only if the block succeeds, so a
    failed step leaves the previous folder (or none), never a half-written one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep(target)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent))
    lock = _lock_temporary(work)  # held until the end: a sweep keeps the folder of a live writer
    work.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; give the folder the usual permissions
    try:
        yield work
        sync_tree(work)
        check_write(target)
        _swap_in(work, target)
        sync_file(target.parent)
    except DiskFull as exc:  # an atomic write of a file inside `work`
        written = bytes_in(work) + exc.written
        shutil.rmtree(work, ignore_errors=True)
        raise _disk_full(target, written, exc.reason) from exc
    except OSError as exc:
        if exc.errno not in FULL:
            raise
        written = bytes_in(work)
        shutil.rmtree(work, ignore_errors=True)
        raise _disk_full(target, written, exc.strerror or "no space left") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(lock)


def _swap_in(work: Path, target: Path) -> None:
    """Put the folder `work` at `target`; a previous `target` ends up at `work` (removed by the caller). A
    kill at any moment leaves `target` the old folder or the new one, whole: one exchange where the file
    system has it; else the old folder renamed aside (then `target` is missing for a moment, never mixed)."""
    if not target.exists() and not target.is_symlink():
        os.replace(work, target)
    elif not (target.is_dir() and not target.is_symlink() and exchange(work, target)):
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=TMP_SUFFIX, dir=target.parent))
        lock = _lock_temporary(aside)
        try:
            os.replace(target, aside / target.name)
            os.replace(work, target)
            os.replace(aside, work)  # removed with `work`: the old folder is inside it
        finally:
            os.close(lock)


def write_json(target: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON, atomically."""
    with atomic_path(target) as tmp, open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(target: str | os.PathLike, text: str) -> None:
    """Write `text`, atomically."""
    with atomic_path(target) as tmp, open(tmp, "w") as f:
        f.write(text)


def torch_save(obj: Any, target: str | os.PathLike) -> None:
    """`torch.save` through a temporary file, so a crash never leaves a truncated checkpoint."""
    import torch

    # through a Python file: a full disk is then OSError ENOSPC, where torch.save(path) says "unexpected pos"
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            if isinstance(exc.__context__, OSError):  # torch's writer, closed after a failed write, hides it
                raise exc.__context__ from None
            raise

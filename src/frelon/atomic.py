"""Atomic, crash-safe writes: a reader sees the old file or the new one, never half of one, even after
the machine loses power.

A file is written beside its target, flushed to the disk (`fsync`), renamed over the target, and the
folder's entry flushed too: without the two syncs a rename can reach the disk before the data, and a
power cut leaves an empty checkpoint. A folder (a prepared dataset) is built beside its target and
swapped in by one rename (Linux's `renameat2(RENAME_EXCHANGE)`; where the file system lacks it, the old
folder is renamed aside first and removed only once the new one is in place), so a kill at any moment
leaves the old folder or the new one whole, never a half-deleted mix.

A full disk (or quota) while writing leaves the previous version as it was and raises `DiskFull`,
which says which disk, how much the write needed and how much is free.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from frelon.errors import FrelonError

FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left; disk quota exceeded


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
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        sync_file(tmp_path)
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


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside `target`; it replaces `target` only if the block succeeds, so a
    failed step leaves the previous folder (or none), never a half-written one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    work.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; give the folder the usual permissions
    try:
        yield work
        sync_tree(work)
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


def _swap_in(work: Path, target: Path) -> None:
    """Put the folder `work` at `target`; a previous `target` ends up at `work` (removed by the caller). A
    kill at any moment leaves `target` the old folder or the new one, whole: one exchange where the file
    system has it; else the old folder renamed aside (then `target` is missing for a moment, never mixed)."""
    if not target.exists() and not target.is_symlink():
        os.replace(work, target)
    elif not (target.is_dir() and not target.is_symlink() and exchange(work, target)):
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, aside / target.name)
        os.replace(work, target)
        os.replace(aside, work)  # removed with `work`: the old folder is inside it


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

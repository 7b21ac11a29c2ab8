"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A full disk (or quota) while writing leaves the previous version as it was and raises `DiskFull`,
which says which disk, how much the write needed and how much is free.
"""

from __future__ import annotations

import contextlib
import errno
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


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it into place only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, target)
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
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp makes 0700; give the folder the usual permissions
    try:
        yield work
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
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

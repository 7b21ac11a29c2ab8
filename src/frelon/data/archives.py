"""Extract tar and zip archives safely: every member must land inside the target folder.

Refused, before anything is written: absolute paths, `..` components, symbolic or hard links
whose target leaves the folder, and device files or FIFOs. Extraction goes to a temporary folder
beside the target, which is moved into place only when every member is out, so an interrupted or
refused extraction leaves no partial tree behind.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import zipfile
from pathlib import Path

from frelon.atomic import atomic_dir
from frelon.errors import FrelonError


def _check_name(archive: Path, name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise FrelonError(f"{archive}: member {name!r} would be written outside the target folder "
                          f"(absolute path or '..'); the archive is refused, nothing was extracted")


def _check_link(archive: Path, name: str, target: str) -> None:
    if target.startswith("/") or ".." in posixpath.normpath(posixpath.join(posixpath.dirname(name), target)).split("/"):
        raise FrelonError(f"{archive}: link {name!r} -> {target!r} points outside the target folder; "
                          f"the archive is refused, nothing was extracted")


def members_are_safe(archive: str | os.PathLike) -> list[str]:
    """Names of the archive's members, after checking each (FrelonError on the first unsafe one)."""
    archive = Path(archive)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            for info in zf.infolist():
                _check_name(archive, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink stored in a zip
                    _check_link(archive, info.filename, zf.read(info).decode())
            return names
    try:
        with tarfile.open(archive) as tf:
            names = []
            for member in tf.getmembers():
                _check_name(archive, member.name)
                if member.issym():  # relative to the link's folder
                    _check_link(archive, member.name, member.linkname)
                elif member.islnk():  # relative to the archive's root
                    _check_link(archive, "", member.linkname)
                elif not (member.isfile() or member.isdir()):
                    raise FrelonError(f"{archive}: member {member.name!r} is a device or FIFO; refused")
                names.append(member.name)
            return names
    except tarfile.ReadError as exc:
        raise FrelonError(f"{archive}: not a tar or zip archive ({exc}); check the file or its URL") from exc


def extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract `archive` into `target` (created; replaced if it exists) after checking every member."""
    return extract_all([archive], target)


def extract_all(archives: list[str | os.PathLike], target: str | os.PathLike) -> Path:
    """Extract several archives into one `target` folder, merged (as untarring the three VOC tars in
    one place gives one VOCdevkit/); every member of every archive is checked before any is written."""
    archives, target = [Path(a) for a in archives], Path(target)
    for archive in archives:
        members_are_safe(archive)
    with atomic_dir(target) as work:
        for archive in archives:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(work)
            else:
                with tarfile.open(archive) as tf:
                    tf.extractall(work, filter="data")  # the standard library's own checks, on top of ours
    return target

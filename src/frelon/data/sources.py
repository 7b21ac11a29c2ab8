"""Fetch a file from a URL and verify its SHA-256 before it appears at its destination.

One routine for every source (weights, archives): `http(s)://` or `file:`; an interrupted
transfer is resumed with an HTTP Range request, with retries and exponential back-off; bytes go to
`.<name>.part` beside the destination and are moved into place only once the whole file's hash
matches (a full SHA-256, or a hex prefix like the 8 characters in torchvision's file names). A hash
mismatch deletes the partial file and names both digests. A machine without internet access can be
given the file by hand: put it in the downloads folder (`data/downloads/` by default, or
`$FRELON_DOWNLOADS`) under the URL's file name and it is verified and used instead of downloading.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from frelon.atomic import FULL, bytes_in, free_space_hint, size_text
from frelon.errors import FrelonError

CHUNK = 1 << 20
DOWNLOADS = "data/downloads"
RETRYABLE = (urllib.error.URLError, ConnectionError, http.client.IncompleteRead, TimeoutError, socket.timeout)


class _Interrupted(Exception):
    """The transfer stopped before the end; what arrived stays in the partial file."""


def downloads_dir() -> Path:
    return Path(os.environ.get("FRELON_DOWNLOADS", DOWNLOADS))


def _local_path(url: str) -> Path | None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.netloc + parsed.path))
    if parsed.scheme in ("http", "https"):
        return None
    raise FrelonError(f"{url}: unsupported URL scheme {parsed.scheme!r}; use http(s):// or file:")


def read_expected_sha256(sha256: str | None, sha256_url: str | None) -> str:
    """The expected digest (full, or a hex prefix like torchvision's), from the config or a checksum file."""
    if sha256:
        digest = sha256
    elif sha256_url:
        local = _local_path(sha256_url)
        try:
            text = local.read_text() if local else urllib.request.urlopen(sha256_url, timeout=60).read().decode()  # noqa: S310
        except (OSError, urllib.error.URLError) as exc:
            raise FrelonError(f"{sha256_url}: could not read the checksum file ({exc})") from exc
        words = text.split()
        digest = words[0] if words else ""
    else:
        raise FrelonError("no hash given: set sha256 (full digest or an 8+ hex prefix) or sha256_url")
    digest = digest.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", digest):
        raise FrelonError(f"{digest!r} is not a SHA-256 digest or prefix (8 to 64 hex characters)")
    return digest


def sha256_of(path: str | os.PathLike) -> str:
    return _digests(path)[0]


def write_checksum(path: str | os.PathLike) -> str:
    """Write `<path>.sha256` ('<digest>  <name>', as sha256sum does) atomically; returns the digest."""
    from frelon.atomic import write_text

    path = Path(path)
    digest = sha256_of(path)
    write_text(f"{path}.sha256", f"{digest}  {path.name}\n")
    return digest


def _digests(path: str | os.PathLike) -> tuple[str, str]:
    """(SHA-256, MD5) of a file, in one pass."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def _no_space(part: Path, url: str, total: int | None, exc: OSError) -> FrelonError:
    """A full disk (or quota) while downloading to `part`; what arrived stays there for the next run to resume."""
    have = bytes_in(part)
    kept = f"{size_text(have)} are in {part} and the next run resumes from there" if have else "nothing was kept"
    missing = f"{size_text(total - have)} more are needed" if total else "the server did not say how much more"
    return FrelonError(f"no space left on the disk holding {part.parent} ({exc.strerror}) while downloading {url}: "
                       f"{kept}; {missing} and {free_space_hint(part.parent, total - have if total else 1)}")


def _transfer(url: str, part: Path, progress: bool, label: str) -> None:
    """Append the rest of `url` to `part` (asking for a Range when part has bytes already)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)  # noqa: S310 (scheme checked)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # asked past the end: the partial file is complete
            return
        if exc.code < 500:
            raise FrelonError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL in the config") from exc
        raise
    with response:
        if response.status == 206:
            mode = "ab"
        else:  # the server ignored the Range: start again
            have, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length else None
        got = have
        try:
            with open(part, mode) as out, tqdm(total=expected, initial=have, unit="B", unit_scale=True,
                                               desc=label, disable=not progress, leave=False) as bar:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except http.client.IncompleteRead as exc:
                        out.write(exc.partial)
                        raise _Interrupted(f"connection closed after {got + len(exc.partial)} bytes") from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        except OSError as exc:
            if exc.errno not in FULL:
                raise
            raise _no_space(part, url, expected, exc) from exc
        if expected is not None and got < expected:
            raise _Interrupted(f"got {got} of {expected} bytes")


def _verify(path: Path, sha256: str | None, md5: str | None, origin: str, fix: str) -> None:
    """Raise a FrelonError naming both digests unless `path` has the expected SHA-256 (prefix) and MD5."""
    actual_sha256, actual_md5 = _digests(path)
    for kind, want, got in (("SHA-256", sha256, actual_sha256), ("MD5", md5 and md5.lower(), actual_md5)):
        if want and not got.startswith(want):
            raise FrelonError(f"{origin}: {kind} mismatch: expected {want}, got {got}. The file is corrupt or "
                              f"changed upstream. {fix} Nothing was written to the destination.")


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None, sha256_url: str | None = None,
          md5: str | None = None, progress: bool = True, retries: int = 5, backoff_s: float = 1.0) -> Path:
    """Download `url` to `dest`; the file appears only once its hash matches: `sha256` (a digest or
    a prefix), `sha256_url` (a checksum file) or, for datasets that publish only that, `md5`."""
    dest = Path(dest)
    if md5 is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise FrelonError(f"{md5!r} is not an MD5 digest (32 hex characters)")
    expected = read_expected_sha256(sha256, sha256_url) if sha256 or sha256_url or not md5 else None
    shown = expected or md5.lower()
    name = Path(urllib.parse.urlparse(url).path).name or dest.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.parent / f".{dest.name}.part"
    placed = downloads_dir() / name
    local = _local_path(url)
    if placed.exists() and placed.resolve() != dest.resolve():
        # put there by hand for the pipeline: checked where it lies, then moved (not copied: COCO is 19 GB)
        _verify(placed, expected, md5, f"{placed} (placed by hand)",
                f"Replace {placed} with the right file, or delete it to download {url}.")
        try:
            os.replace(placed, dest)
        except OSError:  # another file system: copy beside the destination, then move into place
            shutil.copyfile(placed, part)
            os.replace(part, dest)
        return dest
    if local is not None:
        if not local.exists():
            raise FrelonError(f"{url}: no such file {local}; create it first or fix the URL")
        try:
            shutil.copyfile(local, part)  # a copy: the source is the user's and may change later
        except OSError as exc:
            if exc.errno not in FULL:
                raise
            part.unlink(missing_ok=True)
            raise _no_space(part, url, local.stat().st_size, exc) from exc
    else:
        for attempt in range(retries + 1):
            try:
                _transfer(url, part, progress, dest.name)
                break
            except (_Interrupted, *RETRYABLE) as exc:
                if attempt == retries:
                    raise FrelonError(
                        f"could not download {url} after {retries + 1} tries ({exc}). The bytes received "
                        f"so far are kept in {part} and the next run resumes from there. On a machine "
                        f"without internet access, download the file elsewhere, check that its "
                        f"{'SHA-256 starts with' if expected else 'MD5 is'} {shown}, put it at {placed} and rerun."
                    ) from exc
                wait = backoff_s * 2 ** attempt
                print(f"{url}: {exc}; retrying in {wait:g} s (try {attempt + 2} of {retries + 1})", flush=True)
                time.sleep(wait)
    try:
        _verify(part, expected, md5, url, "Check the URL and hash in the config and fetch again.")
    except FrelonError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest

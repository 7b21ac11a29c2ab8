"""Fetch a file from a URL and verify its SHA-256 before it appears at its destination."""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from frelon.atomic import atomic_path
from frelon.errors import FrelonError

CHUNK = 1 << 20


def _open(url: str) -> tuple[BinaryIO, int | None]:
    """Open `url` for reading; `file:relative/path` is relative to the working directory."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.netloc + parsed.path))
        if not path.exists():
            raise FrelonError(f"{url}: no such file {path}; create it first or fix the URL")
        return open(path, "rb"), path.stat().st_size
    if parsed.scheme in ("http", "https"):
        response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 (scheme checked above)
        length = response.headers.get("Content-Length")
        return response, int(length) if length else None
    raise FrelonError(f"{url}: unsupported URL scheme {parsed.scheme!r}; use http(s):// or file:")


def read_expected_sha256(sha256: str | None, sha256_url: str | None) -> str:
    """The expected digest (full, or a hex prefix like torchvision's), from the config or a checksum file."""
    if sha256:
        digest = sha256
    elif sha256_url:
        stream, _ = _open(sha256_url)
        with stream:
            words = stream.read().decode().split()
        digest = words[0] if words else ""
    else:
        raise FrelonError("no hash given: set sha256 (full digest or an 8+ hex prefix) or sha256_url")
    digest = digest.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", digest):
        raise FrelonError(f"{digest!r} is not a SHA-256 digest or prefix (8 to 64 hex characters)")
    return digest


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None,
          sha256_url: str | None = None, progress: bool = True) -> Path:
    """Download `url` to `dest`; the file appears only once its hash matches."""
    dest = Path(dest)
    expected = read_expected_sha256(sha256, sha256_url)
    stream, size = _open(url)
    h = hashlib.sha256()
    with stream, atomic_path(dest) as tmp, open(tmp, "wb") as out:
        with tqdm(total=size, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
        out.flush()
        actual = h.hexdigest()
        if not actual.startswith(expected):
            raise FrelonError(
                f"{url}: SHA-256 mismatch: expected {expected}, got {actual}. The download is "
                f"corrupt or the file changed upstream; delete any copy, check the URL and hash "
                f"in the config, and fetch again. Nothing was written to {dest}."
            )
    return dest


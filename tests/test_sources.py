import hashlib

import pytest

from frelon.data.sources import fetch
from frelon.errors import FrelonError

PAYLOAD = b"weights" * 1000
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def test_fetch_over_http_verifies_a_torchvision_style_prefix(http_root, tmp_path):
    root, url = http_root
    (root / "resnet18-abc.pth").write_bytes(PAYLOAD)
    dest = fetch(f"{url}/resnet18-abc.pth", tmp_path / "w" / "r.pth", sha256=DIGEST[:8], progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_fetch_reads_the_digest_from_a_checksum_file(http_root, tmp_path):
    root, url = http_root
    (root / "w.pth").write_bytes(PAYLOAD)
    (root / "w.pth.sha256").write_text(f"{DIGEST}  w.pth\n")
    fetch(f"{url}/w.pth", tmp_path / "w.pth", sha256_url=f"{url}/w.pth.sha256", progress=False)
    assert (tmp_path / "w.pth").read_bytes() == PAYLOAD


def test_fetch_from_a_relative_file_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local.pth").write_bytes(PAYLOAD)
    fetch("file:local.pth", "out/w.pth", sha256=DIGEST, progress=False)
    assert (tmp_path / "out" / "w.pth").read_bytes() == PAYLOAD


def test_hash_mismatch_names_the_problem_and_leaves_nothing(http_root, tmp_path):
    root, url = http_root
    (root / "w.pth").write_bytes(PAYLOAD + b"tampered")
    with pytest.raises(FrelonError, match=f"SHA-256 mismatch: expected {DIGEST[:8]}"):
        fetch(f"{url}/w.pth", tmp_path / "dl" / "w.pth", sha256=DIGEST[:8], progress=False)
    assert list((tmp_path / "dl").iterdir()) == []


def test_a_malformed_hash_is_refused_before_downloading(tmp_path):
    with pytest.raises(FrelonError, match="not a SHA-256 digest"):
        fetch("http://127.0.0.1:9/never", tmp_path / "w.pth", sha256="xyz")

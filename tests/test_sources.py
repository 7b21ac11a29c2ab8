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


BIG = bytes(range(256)) * 8192  # 2 MiB: several chunks
BIG_DIGEST = hashlib.sha256(BIG).hexdigest()


def test_an_interrupted_download_resumes_with_a_range_request(http_server, tmp_path):
    (http_server.root / "voc.tar").write_bytes(BIG)
    http_server.cuts["/voc.tar"] = 700_000
    dest = fetch(f"{http_server.url}/voc.tar", tmp_path / "dl" / "voc.tar", sha256=BIG_DIGEST, progress=False,
                 backoff_s=0.01)
    assert dest.read_bytes() == BIG
    assert http_server.requests == [("/voc.tar", None), ("/voc.tar", "bytes=700000-")]
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["voc.tar"]  # no partial file left


def test_a_download_that_keeps_failing_leaves_no_file_at_the_target_and_says_how_to_place_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FRELON_DOWNLOADS", str(tmp_path / "downloads"))
    url = f"http://127.0.0.1:{_closed_port()}/coco.zip"
    with pytest.raises(FrelonError, match=r"after 3 tries .*SHA-256 starts with "
                                          rf"{BIG_DIGEST[:8]}, put it at .*downloads/coco.zip and rerun"):
        fetch(url, tmp_path / "data" / "coco.zip", sha256=BIG_DIGEST[:8], progress=False, retries=2, backoff_s=0.01)
    assert not (tmp_path / "data" / "coco.zip").exists()
    # offline: the file placed by hand is verified and used, nothing is downloaded
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "coco.zip").write_bytes(BIG)
    assert fetch(url, tmp_path / "data" / "coco.zip", sha256=BIG_DIGEST[:8], progress=False).read_bytes() == BIG
    (tmp_path / "downloads" / "coco.zip").write_bytes(b"wrong file")
    with pytest.raises(FrelonError, match=r"downloads/coco.zip \(placed by hand\): SHA-256 mismatch"):
        fetch(url, tmp_path / "data" / "other.zip", sha256=BIG_DIGEST[:8], progress=False)
    assert not (tmp_path / "data" / "other.zip").exists()


def test_a_missing_file_on_the_server_is_named_without_retrying(http_server, tmp_path):
    with pytest.raises(FrelonError, match="HTTP 404"):
        fetch(f"{http_server.url}/nothing.tar", tmp_path / "n.tar", sha256=DIGEST, progress=False)
    assert len(http_server.requests) == 1 and not (tmp_path / "n.tar").exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed

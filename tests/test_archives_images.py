"""Safe extraction, and the checks every image of a user's folder goes through."""

import io
import tarfile
import zipfile

import pytest
from PIL import Image

from frelon.data import archives, images
from frelon.errors import FrelonError


def tar_with(path, members):
    with tarfile.open(path, "w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("members", [
    [("ok/a.txt", "file", b"a"), ("../evil.txt", "file", b"x")],
    [("/tmp/evil.txt", "file", b"x")],
    [("ok/link", "sym", "../../etc/passwd")],
    [("ok/link", "sym", "/etc/passwd")],
    [("ok/hard", "hard", "../outside")],
], ids=["dotdot", "absolute", "symlink-up", "symlink-absolute", "hardlink-up"])
def test_a_tar_leaving_the_target_is_refused_and_nothing_is_extracted(members, tmp_path):
    archive = tar_with(tmp_path / "bad.tar", members)
    with pytest.raises(FrelonError, match="outside the target folder"):
        archives.extract(archive, tmp_path / "out" / "target")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not (tmp_path / "evil.txt").exists()


def test_a_zip_with_dotdot_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("fine.txt", "a")
        zf.writestr("../evil.txt", "x")
    with pytest.raises(FrelonError, match="'../evil.txt' would be written outside"):
        archives.extract(tmp_path / "bad.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()


def test_a_good_archive_extracts_with_links_inside(tmp_path):
    archive = tar_with(tmp_path / "good.tar", [("d/a.txt", "file", b"hello"), ("d/link", "sym", "a.txt")])
    out = archives.extract(archive, tmp_path / "out")
    assert (out / "d" / "a.txt").read_bytes() == b"hello" and (out / "d" / "link").read_bytes() == b"hello"
    with pytest.raises(FrelonError, match="not a tar or zip archive"):
        archives.extract(tmp_path / "out" / "d" / "a.txt", tmp_path / "out2")


def photo(size=(64, 48), seed=0):
    """A picture with structure (so that perceptual hashes differ between pictures)."""
    im = Image.new("RGB", size, (30 + seed * 40 % 200, 90, 160))
    for i in range(0, size[0], 8):
        im.paste((200, (i * 5 + seed * 70) % 255, 40), (i, (i + seed * 11) % size[1], i + 4, size[1]))
    return im


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "hornet"
    root.mkdir()
    photo(seed=1).save(root / "a.jpg", quality=95)
    photo(seed=1).save(root / "a_copy.png")                      # same pixels as a.jpg? no: jpeg vs png
    (root / "a_exact.jpg").write_bytes((root / "a.jpg").read_bytes())
    photo(seed=1).resize((128, 96)).save(root / "a_bigger.jpg", quality=80)  # a near duplicate
    photo(seed=2).convert("CMYK").save(root / "cmyk.jpg")
    photo(seed=3).convert("L").save(root / "grey.png")
    photo(seed=4).convert("P").save(root / "palette.png", transparency=0)
    rgba = photo(seed=5).convert("RGBA")
    rgba.putalpha(0)
    rgba.save(root / "clear.png")                                 # fully transparent: white
    exif = Image.Exif()
    exif[0x0112] = 6                                             # rotate 90 degrees clockwise to view
    photo(size=(64, 48), seed=6).save(root / "sideways.jpg", exif=exif)
    (root / "broken.jpg").write_bytes((root / "a.jpg").read_bytes()[:300])  # truncated
    (root / "notes.txt").write_text("not an image")
    return root


def test_bad_files_are_listed_modes_made_rgb_and_exif_applied(folder):
    paths = sorted(p.name for p in folder.iterdir())
    result = images.check(folder, paths)
    assert set(result.bad) == {"broken.jpg", "notes.txt"}
    assert result.converted == {"CMYK": 1, "L": 1, "P": 1, "RGBA": 1}
    assert result.rotated == 1 and images.load_rgb(folder / "sideways.jpg").size == (48, 64)
    assert images.load_rgb(folder / "clear.png").getpixel((0, 0)) == (255, 255, 255)
    assert all(images.load_rgb(folder / p).mode == "RGB" for p in result.good)


def test_exact_and_near_duplicates_are_grouped(folder):
    result = images.check(folder, sorted(p.name for p in folder.iterdir()))
    assert result.exact == 1  # a_exact.jpg repeats a.jpg byte for byte
    group = next(g for g in result.groups if "a.jpg" in g)
    assert {"a.jpg", "a_exact.jpg", "a_bigger.jpg", "a_copy.png"} <= set(group)
    assert not any("cmyk.jpg" in g or "grey.png" in g for g in result.groups)

import pytest
import torch
from PIL import Image

from frelon.data.dataset import CachedSplit
from frelon.data.folder import load_square, prepare, scan, stratified_split
from frelon.errors import FrelonError


def make_folder(root, counts, size=40):
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (size + i % 3, size), (i * 7 % 255, 80, 120)).save(root / name / f"{name}{i:03d}.png")
    return root


def files(counts):
    return {name: [f"{name}/{i:03d}.jpg" for i in range(n)] for name, n in counts.items()}


def test_split_is_stratified_and_disjoint():
    manifest = stratified_split(files({"absence": 184, "presence": 104}), val=0.15, test=0.15, seed=0)
    assert manifest.path.is_unique
    for split, part in manifest.groupby("split"):
        share = (part["class"] == "presence").mean()
        assert share == pytest.approx(104 / 288, abs=0.01), split
    counts = manifest.groupby(["split", "class"]).size()
    assert counts["test", "presence"] == round(104 * 0.15) and counts["test", "absence"] == round(184 * 0.15)


def test_split_is_reproducible_from_the_seed():
    a = stratified_split(files({"a": 50, "b": 30}), 0.2, 0.2, seed=3)
    b = stratified_split(files({"a": 50, "b": 30}), 0.2, 0.2, seed=3)
    c = stratified_split(files({"a": 50, "b": 30}), 0.2, 0.2, seed=4)
    assert a.equals(b)
    assert not a.equals(c)


def test_class_too_small_to_split_is_refused():
    with pytest.raises(FrelonError, match="class 'b' has 2 images"):
        stratified_split(files({"a": 50, "b": 2}), 0.2, 0.2, seed=0)


def test_missing_class_folder_is_named_with_the_fix(tmp_path):
    make_folder(tmp_path, {"absence": 3})
    with pytest.raises(FrelonError, match=r"no presence/ subfolder.*one subfolder per class"):
        scan(tmp_path, ["absence", "presence"])


def test_empty_class_folder_is_refused(tmp_path):
    make_folder(tmp_path, {"absence": 3})
    (tmp_path / "presence").mkdir()
    (tmp_path / "presence" / "notes.txt").write_text("no images here")
    with pytest.raises(FrelonError, match="holds no images"):
        scan(tmp_path, ["absence", "presence"])


def test_prepare_caches_every_split_at_training_size(tmp_path):
    make_folder(tmp_path / "src", {"absence": 10, "presence": 6})
    manifest = prepare(tmp_path / "src", ["absence", "presence"], 0.2, 0.2, 32, 0, tmp_path / "out")
    total = 0
    for split in ("train", "val", "test"):
        blob = torch.load(tmp_path / "out" / f"{split}.pt", weights_only=True)
        assert blob["images"].dtype == torch.uint8 and blob["images"].shape[1:] == (3, 32, 32)
        assert blob["paths"] == list(manifest[manifest.split == split].path)
        total += len(blob["labels"])
    assert total == 16
    assert (tmp_path / "out" / "manifest.csv").exists() and (tmp_path / "out" / "report.json").exists()


def test_resize_then_centre_crop_keeps_the_middle_like_torchvisions_resize_256_crop_224(tmp_path):
    # 80x40 image: left quarter red, middle half green, right quarter blue; 4 px black border on top
    im = Image.new("RGB", (80, 40), (0, 255, 0))
    im.paste((255, 0, 0), (0, 0, 20, 40))
    im.paste((0, 0, 255), (60, 0, 80, 40))
    im.save(tmp_path / "a.png")
    whole = load_square(tmp_path / "a.png", 32)            # shorter side 32 -> 64x32, centre 32x32
    assert whole.shape == (3, 32, 32) and (whole[1] > 200).all()
    cropped = load_square(tmp_path / "a.png", 28, resize=32)  # 32/28 like 256/224
    assert cropped.shape == (3, 28, 28) and (cropped[1] > 200).all()
    with pytest.raises(FrelonError, match="resize 24 is smaller than the crop 28"):
        load_square(tmp_path / "a.png", 28, resize=24)


def test_a_split_prepared_with_other_sizes_is_refused_by_the_training_view(tmp_path):
    make_folder(tmp_path / "src", {"absence": 10, "presence": 6})
    prepare(tmp_path / "src", ["absence", "presence"], 0.2, 0.2, 28, 0, tmp_path / "out", resize=32)
    norm = {"mean": [0.5] * 3, "std": [0.25] * 3}
    split = CachedSplit(tmp_path / "out" / "test.pt", {"resize": 32, "crop": 28, **norm})
    x, _ = split[0]
    assert x.shape == (3, 28, 28)
    with pytest.raises(FrelonError, match=r"prepared with \{'resize': 32, 'crop': 28\} but the model expects"):
        CachedSplit(tmp_path / "out" / "test.pt", {"resize": 28, "crop": 28, **norm})


def test_failed_prepare_leaves_no_output(tmp_path):
    make_folder(tmp_path / "src", {"absence": 10, "presence": 6})
    (tmp_path / "src" / "presence" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(FrelonError, match=r"1 file\(s\) in .* are not readable images: presence/broken.png"):
        prepare(tmp_path / "src", ["absence", "presence"], 0.2, 0.2, 32, 0, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def hornet_with_problems(root):
    """A class folder set with a corrupt JPEG, a CMYK JPEG, an EXIF-rotated photo and duplicates."""
    from test_archives_images import photo

    for name, offset in (("absence", 0), ("presence", 50)):
        (root / name).mkdir(parents=True)
        for i in range(12):
            photo(seed=offset + i).save(root / name / f"{i:03d}.jpg", quality=95)
    (root / "presence" / "dup_exact.jpg").write_bytes((root / "presence" / "000.jpg").read_bytes())
    photo(seed=50).resize((96, 72)).save(root / "presence" / "dup_resized.png")
    (root / "absence" / "corrupt.jpg").write_bytes((root / "absence" / "000.jpg").read_bytes()[:400])
    photo(seed=99).convert("CMYK").save(root / "absence" / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 8
    photo(seed=77).save(root / "presence" / "rotated.jpg", exif=exif)
    return root


def test_a_bad_image_fails_the_step_with_a_list_unless_skipping_is_asked_for(tmp_path):
    import json

    src = hornet_with_problems(tmp_path / "src")
    with pytest.raises(FrelonError, match=r"1 file\(s\) .* not readable images: absence/corrupt.jpg .*on_bad_image: skip"):
        prepare(src, ["absence", "presence"], 0.2, 0.2, 32, 0, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    manifest = prepare(src, ["absence", "presence"], 0.2, 0.2, 32, 0, tmp_path / "out", on_bad_image="skip")
    assert "absence/corrupt.jpg" not in set(manifest.path) and "absence/cmyk.jpg" in set(manifest.path)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["skipped"]["count"] == 1 and "absence/corrupt.jpg" in report["skipped"]["files"]
    assert report["converted_to_rgb"] == {"CMYK": 1} and report["exif_rotated"] == 1
    assert report["duplicates"]["exact"] == 1 and report["duplicates"]["near"] >= 1
    # the three copies of presence/000.jpg share one split: no leak between train and test
    copies = manifest[manifest.path.isin(["presence/000.jpg", "presence/dup_exact.jpg", "presence/dup_resized.png"])]
    assert len(copies) == 3 and copies.split.nunique() == 1


def test_duplicate_groups_stay_in_one_split_and_the_split_stays_stratified():
    files = {"a": [f"a/{i}" for i in range(40)], "b": [f"b/{i}" for i in range(20)]}
    groups = [["a/0", "a/1", "a/2", "a/3"], ["b/5", "b/6"], ["a/10", "b/10"]]
    manifest = stratified_split(files, 0.2, 0.2, seed=1, groups=groups).set_index("path")
    for group in groups:
        assert manifest.loc[group].split.nunique() == 1
    counts = manifest.groupby(["class", "split"]).size()
    assert counts["a"]["test"] in (8, 9, 10, 11) and counts["b"]["test"] in (4, 5, 6)

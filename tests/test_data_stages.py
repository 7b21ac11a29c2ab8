"""The real data path end to end: archives served over HTTP -> download -> verify -> extract ->
check and convert, through Snakemake, for a user's hornet archive, Pascal VOC and COCO."""

import hashlib
import json
import shutil
import zipfile

import pytest
import torch
import torchvision
import yaml

from conftest import copy_workflow, run
from frelon.data.demo_detection import write_coco_archives, write_voc_archives
from test_folder import hornet_with_problems

pytestmark = pytest.mark.slow


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def served(http_server, tmp_path):
    """The user's hornet zip (with a corrupt JPEG, a CMYK JPEG, an EXIF-rotated photo and
    duplicates), the three VOC tars and the three COCO zips, on 127.0.0.1."""
    root = http_server.root
    hornet = hornet_with_problems(tmp_path / "hornet_src" / "hornet")
    with zipfile.ZipFile(root / "hornet.zip", "w") as zf:
        for path in sorted(hornet.rglob("*")):
            zf.write(path, path.relative_to(hornet.parent))
    write_voc_archives(root, images_per_set=8)
    write_coco_archives(root, train=10, val=6)
    torch.save(torchvision.models.resnet18().state_dict(), root / "resnet18-test.pth")
    return http_server


def data_config(work, server, **hornet_options):
    config = yaml.safe_load((work / "config" / "demo.yaml").read_text())
    del config["demo"]
    url = server.url
    root = server.root
    config["weights"] = {"resnet18": {"url": f"{url}/resnet18-test.pth", "sha256": sha256(root / "resnet18-test.pth")[:8]}}
    config["datasets"] = {"hornet": {**config["datasets"]["hornet"], "val": 0.25, "test": 0.25, "source": {
        "archive": {"url": f"{url}/hornet.zip", "sha256": sha256(root / "hornet.zip")}, "subdir": "hornet"},
        **hornet_options}}
    config["detection_data"] = {
        "voc": {"archives": [{"url": f"{url}/{name}", "sha256": sha256(root / name)}
                             for name in ("VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar",
                                          "VOCtrainval_11-May-2012.tar")],
                "train": "2007:trainval,2012:trainval", "val": "2007:test"},
        "coco": {"archives": [{"url": f"{url}/{name}", "md5": hashlib.md5(
            (root / name).read_bytes(), usedforsecurity=False).hexdigest()}
            for name in ("train2017.zip", "val2017.zip", "annotations_trainval2017.zip")]}}
    config["augment"] = {"hornet": {"multiplier": 2}}
    for key in ("claims", "adversarial"):  # on studies this config does not have
        config.pop(key, None)
    config["studies"] = {"finetune": {"dataset": "hornet", "experiments": {"random": {"model": {"weights": None}}}},
                         "detection": {"dataset": "voc", "experiments": {"voc": {}, "coco": {"dataset": "coco"}}}}
    path = work / "config" / "data.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_downloads_extraction_and_conversion_of_every_dataset(served, tmp_path):
    work = copy_workflow(tmp_path / "w")
    config = data_config(work, served, on_bad_image="skip")
    run(["snakemake", "data", "--cores", "2", "--configfile", str(config)], cwd=work)
    data = work / "data"
    assert sorted(p.name for p in (data / "archives").iterdir()) == sorted(
        ["hornet.zip", "VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar", "VOCtrainval_11-May-2012.tar",
         "train2017.zip", "val2017.zip", "annotations_trainval2017.zip"])
    report = json.loads((data / "prepared" / "hornet" / "report.json").read_text())
    assert report["skipped"]["count"] == 1 and report["converted_to_rgb"] == {"CMYK": 1}
    assert report["exif_rotated"] == 1 and report["duplicates"]["exact"] == 1
    voc = json.loads((data / "prepared" / "voc" / "report.json").read_text())["splits"]
    assert voc["train"]["images"] == 16 and voc["val"]["images"] == 8
    coco = json.loads((data / "prepared" / "coco" / "report.json").read_text())["splits"]
    assert coco["train2017"]["images"] == 10 and coco["val2017"]["images"] == 6
    augmented = torch.load(data / "augmented" / "hornet" / "train.pt", weights_only=True)
    original = torch.load(data / "prepared" / "hornet" / "train.pt", weights_only=True)
    assert len(augmented["labels"]) == 2 * len(original["labels"])
    assert (data / "augmented" / "hornet" / "preview.png").exists()
    # every download was a single GET (no resumption needed) and nothing is left half-written
    assert len(served.requests) == 8 and not list(data.rglob(".*.part"))
    again = run(["snakemake", "data", "--cores", "2", "--configfile", str(config)], cwd=work)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_bad_hornet_image_stops_the_stage_by_default_and_a_tampered_archive_is_refused(served, tmp_path):
    work = copy_workflow(tmp_path / "w")
    config = data_config(work, served)
    proc = run(["snakemake", "data/prepared/hornet", "--cores", "2", "--configfile", str(config)], cwd=work,
               check=False)
    assert proc.returncode != 0
    log = (work / "logs" / "prepare" / "hornet.log").read_text()
    assert "absence/corrupt.jpg" in log and "on_bad_image: skip" in log
    assert not (work / "data" / "prepared" / "hornet").exists()
    # the VOC 2012 tar changes on the server: its download is refused and leaves no file
    shutil.copy(served.root / "VOCtest_06-Nov-2007.tar", served.root / "VOCtrainval_11-May-2012.tar")
    proc = run(["snakemake", "data/prepared/voc", "--cores", "2", "--configfile", str(config)], cwd=work,
               check=False)
    assert proc.returncode != 0
    assert "SHA-256 mismatch" in (work / "logs" / "fetch_archive" / "VOCtrainval_11-May-2012.tar.log").read_text()
    assert not (work / "data" / "archives" / "VOCtrainval_11-May-2012.tar").exists()
    assert not (work / "data" / "prepared" / "voc").exists()

"""Fixed-size CenterNet inference (a CUDA graph on a GPU, eager on the CPU) gives `predict`'s boxes, scores and
labels, and `frelon detect`, which uses it and reads the next image meanwhile, finds what `predict` finds."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from frelon.data.coco import CategoryIndex
from frelon.data.images import load_rgb
from frelon.data.transforms import letterboxed
from frelon.errors import FrelonError
from frelon.models.centernet import CenterNet
from frelon.tasks.detection import predictor as predictor_module
from frelon.tasks.detection.inference import detect
from frelon.tasks.detection.predictor import FixedSizePredictor, GraphedStep
from frelon.tasks.detection.task import predict, to_results

SIZE = 64
PRE = {"input_size": SIZE, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
CLASSES = [{"id": 7, "name": "wasp"}, {"id": 3, "name": "hornet"}, {"id": 5, "name": "bee"}]
SPEC = {"arch": "resnet18", "weights": None, "norm": "batch", "decoder": "deconv", "head_only": False,
        "weights_path": None}


@pytest.fixture(scope="module")
def model():
    """A small detector in eval mode, with batch norm statistics other than 0 and 1, distinct peaks and boxes
    of some size (an untrained one's are of size 0, which `to_results` drops)."""
    torch.manual_seed(0)
    net = CenterNet(3, decoder="deconv").train()
    with torch.no_grad():
        net.heatmap[-1].weight.normal_(std=0.3)
        net.size[-1].bias.fill_(4.0)  # output cells: 16 input pixels
        net(torch.randn(2, 3, SIZE, SIZE))
    return net.eval()


def _images(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(1, 3, SIZE, SIZE, generator=g) for _ in range(n)]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("flip_test", [False, True])
def test_the_fixed_size_predictor_gives_predicts_boxes_scores_and_labels_on_the_cpu(model, flip_test):
    run = FixedSizePredictor(model, SIZE, flip_test, top_k=20)
    assert run.graphed is None
    for x in _images(2):
        assert _same(run(x), predict(model, x, flip_test, 20))


class _ReplayingGraph:
    """What a captured graph does, on the CPU: each replay recomputes the step from the same input tensor and
    writes into the same output tensors."""

    def __init__(self, step, static_input):
        self.step, self.static_input = step, static_input
        self.outputs = step(static_input)

    def replay(self):
        for out, new in zip(self.outputs, self.step(self.static_input)):
            out.copy_(new)


@pytest.mark.parametrize("flip_test", [False, True])
def test_a_graphed_step_feeds_its_static_input_and_returns_copies_of_its_outputs(model, flip_test, monkeypatch):
    def capture(step, static_input):
        graph = _ReplayingGraph(step, static_input)
        return graph, graph.outputs

    monkeypatch.setattr(predictor_module, "_capture", capture)
    run = FixedSizePredictor(model, SIZE, flip_test, top_k=20)
    graphed = GraphedStep(run.step, torch.zeros(1, 3, SIZE, SIZE))
    first, second = _images(2)
    from_first = graphed(first)
    from_second = graphed(second)
    assert _same(from_first, predict(model, first, flip_test, 20))  # not overwritten by the second replay
    assert _same(from_second, predict(model, second, flip_test, 20))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("flip_test", [False, True])
def test_the_cuda_graph_gives_predicts_boxes_scores_and_labels(model, flip_test):
    cuda = copy.deepcopy(model).cuda()
    run = FixedSizePredictor(cuda, SIZE, flip_test, top_k=20)
    assert run.graphed is not None
    for x in _images(3):
        assert _same(run(x), predict(cuda, x.cuda(), flip_test, 20))


def test_the_predictor_refuses_a_model_in_training_mode_and_images_of_another_size(model):
    with pytest.raises(FrelonError, match=r"training mode.*call model.eval\(\)"):
        FixedSizePredictor(copy.deepcopy(model).train(), SIZE, False, 20)
    with pytest.raises(FrelonError, match=r"shape \(1, 3, 32, 32\), but this predictor takes \(1, 3, 64, 64\)"):
        FixedSizePredictor(model, SIZE, False, 20)(torch.zeros(1, 3, 32, 32))


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("detector") / "model.pt"
    torch.save({"model": model.state_dict(), "spec": {"task": "detection", "model": SPEC}, "classes": CLASSES,
                "preprocessing": PRE, "diverged": None}, path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, (w, h) in (("a.png", (60, 45)), ("b.jpg", (50, 70)), ("c.png", (64, 64))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.mark.parametrize("flip_test", [False, True])
def test_detect_finds_what_predict_finds_image_by_image(model, checkpoint, photos, flip_test):
    categories = CategoryIndex(CLASSES)
    mean, std = torch.tensor(PRE["mean"]).view(3, 1, 1), torch.tensor(PRE["std"]).view(3, 1, 1)
    expected = []
    for image_id, path in enumerate(sorted(photos.iterdir()), start=1):
        picture = load_rgb(path)
        x, letterbox = letterboxed(picture, SIZE)
        boxes, scores, labels = predict(model, ((x - mean) / std)[None], flip_test, 30)
        results = [{"file_name": str(path), **r, "category": categories.name(r["category_id"])}
                   for r in to_results(boxes[0], scores[0], labels[0], image_id, letterbox, categories)
                   if r["score"] >= 0.1]
        expected.append((path, pil_to_tensor(picture), results))
    found = detect(checkpoint, [photos], flip_test=flip_test, min_score=0.1, top_k=30, device="cpu")
    assert [(p, r) for p, _, r in found] == [(p, r) for p, _, r in expected]
    assert all(torch.equal(a, b) for (_, a, _), (_, b, _) in zip(found, expected, strict=True))
    assert sum(len(r) for _, _, r in found) > 0


def test_an_unreadable_image_read_ahead_is_skipped_and_listed(checkpoint, photos, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    unreadable = []
    found = detect(checkpoint, [photos / "a.png", tmp_path / "broken.jpg", photos / "b.jpg"], device="cpu",
                   unreadable=unreadable)
    assert [path for path, _, _ in found] == [photos / "a.png", photos / "b.jpg"]
    assert [(path, reason.split(":")[0]) for path, reason in unreadable] == [(tmp_path / "broken.jpg", "unreadable")]
    assert {d["image_id"] for _, _, detections in found for d in detections} <= {1, 3}  # numbered as given
    with pytest.raises(FrelonError, match=r"none of the 1 files could be read as an image: unreadable: .*broken.jpg"):
        detect(checkpoint, [tmp_path / "broken.jpg"], device="cpu")

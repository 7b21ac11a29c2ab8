"""The CenterNet model: stride-4 maps from the course's ResNet backbone and its ImageNet weights."""

import torch
import torchvision

from frelon.models.centernet import HEATMAP_BIAS, CenterNet
from frelon.models.weights import load_pretrained


def test_outputs_are_heatmap_size_and_offset_maps_at_stride_4():
    torch.manual_seed(0)
    model = CenterNet(num_classes=20).eval()
    out = model(torch.randn(2, 3, 128, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "heatmap": (2, 20, 32, 24), "size": (2, 2, 32, 24), "offset": (2, 2, 32, 24)}
    assert model.heatmap[-1].bias.eq(HEATMAP_BIAS).all()  # sigmoid starts near 0.1
    assert 0.05 < torch.sigmoid(out["heatmap"]).mean() < 0.2


def test_the_backbone_takes_torchvisions_imagenet_weights_unchanged(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = CenterNet(num_classes=3)
    load_pretrained(model.backbone, tmp_path / "resnet18.pth")
    ours = model.backbone.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(ours[key], value), key
    assert not any(k.startswith("fc.") for k in ours)  # no classifier left in a detector


def test_every_parameter_gets_a_gradient():
    model = CenterNet(num_classes=3)
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())

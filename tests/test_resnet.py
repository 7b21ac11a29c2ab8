import torch
import torchvision

from frelon.models.resnet import ResBlockA, ResBlockB, ResNet
from frelon.models.weights import load_pretrained


def test_state_dict_keys_and_shapes_are_torchvisions():
    ours, theirs = ResNet("resnet18").state_dict(), torchvision.models.resnet18().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_outputs_equal_torchvision_resnet18_for_the_same_weights():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    ours = ResNet("resnet18").eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-5)


def test_block_b_halves_resolution_and_doubles_channels():
    x = torch.randn(1, 64, 16, 16)
    assert ResBlockA(64)(x).shape == (1, 64, 16, 16)
    assert ResBlockB(64)(x).shape == (1, 128, 8, 8)


def test_pretrained_weights_fill_the_backbone_and_leave_a_new_head(tmp_path):
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = load_pretrained(ResNet("resnet18", num_classes=2), tmp_path / "w.pth")
    assert model.fc.out_features == 2
    torch.testing.assert_close(model.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)

import pytest
import torch
import torchvision

from frelon.errors import FrelonError
from frelon.models.resnet import NORMS, ResBlockA, ResBlockB, ResNet
from frelon.models.weights import load_pretrained

REFERENCES = {"resnet18": torchvision.models.resnet18, "resnet34": torchvision.models.resnet34}


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_state_dict_keys_and_shapes_are_torchvisions(arch):
    ours, theirs = ResNet(arch).state_dict(), REFERENCES[arch]().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_outputs_equal_torchvisions_for_the_same_weights(arch):
    torch.manual_seed(0)
    reference = REFERENCES[arch]().eval()
    ours = ResNet(arch).eval()
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
    torch.testing.assert_close(model.bn1.running_var, source.bn1.running_var)


@pytest.mark.parametrize("options", [{"norm": "group"}, {"residual": False}])
def test_weights_that_do_not_fit_the_options_are_refused(options, tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "w.pth")
    with pytest.raises(FrelonError, match="do not fit .*model.weights: null"):
        load_pretrained(ResNet("resnet18", num_classes=2, **options), tmp_path / "w.pth")


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_a_narrower_network_has_the_same_layers_with_every_channel_count_scaled(arch):
    wide, narrow = ResNet(arch, num_classes=3), ResNet(arch, num_classes=3, width=16)
    assert [name for name, _ in wide.named_parameters()] == [name for name, _ in narrow.named_parameters()]
    shapes = {name: tuple(p.shape) for name, p in narrow.named_parameters()}
    assert shapes["conv1.weight"] == (16, 3, 7, 7) and shapes["bn1.weight"] == (16,)
    assert shapes["layer1.0.conv1.weight"] == (16, 16, 3, 3)
    assert shapes["layer2.0.conv1.weight"] == (32, 16, 3, 3) and shapes["layer2.0.downsample.0.weight"] == (32, 16, 1, 1)
    assert shapes["layer4.1.conv2.weight"] == (128, 128, 3, 3) and shapes["fc.weight"] == (3, 128)
    assert narrow.forward_features(torch.zeros(2, 3, 64, 64)).shape == (2, 128, 2, 2)
    assert narrow(torch.zeros(2, 3, 64, 64)).shape == (2, 3)


@pytest.mark.parametrize("width", [0, -1, 1.5, True])
def test_a_width_that_is_not_a_positive_whole_number_is_refused(width):
    with pytest.raises(FrelonError, match=f"model width {width!r}: give a whole number of channels, 64 as published"):
        ResNet("resnet18", width=width)


def test_weights_of_another_width_are_refused_with_the_width_they_need(tmp_path):
    torch.save(ResNet("resnet18", num_classes=2, width=32).state_dict(), tmp_path / "w.pth")
    with pytest.raises(FrelonError, match="32-channel-wide network, this model.width is 64: set model.width to 32"):
        load_pretrained(ResNet("resnet18", num_classes=2), tmp_path / "w.pth")
    narrow = load_pretrained(ResNet("resnet18", num_classes=5, width=32), tmp_path / "w.pth")
    assert narrow.fc.out_features == 5


def test_batch_norm_running_statistics_follow_the_course_formula():
    torch.manual_seed(0)
    model = ResNet("resnet18", num_classes=2).train()
    x = torch.randn(4, 3, 32, 32)
    features = torch.nn.functional.conv2d(x, model.conv1.weight, stride=2, padding=3)
    model(x)
    bn = model.bn1
    mean, var = features.mean((0, 2, 3)), features.var((0, 2, 3), unbiased=True)
    torch.testing.assert_close(bn.running_mean, 0.9 * torch.zeros(64) + 0.1 * mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bn.running_var, 0.9 * torch.ones(64) + 0.1 * var, rtol=1e-4, atol=1e-6)
    assert bn.num_batches_tracked == 1
    model.eval()
    out = model.bn1(features)  # evaluation normalises with the running statistics
    expected = (features - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [{"norm": n} for n in NORMS] + [{"residual": False}, {"zero_init_residual": True}])
def test_every_variant_trains_a_few_steps_with_decreasing_loss(options):
    torch.manual_seed(0)
    model = ResNet("resnet18", num_classes=3, **options).train()
    # 64 px, so that layer4 maps are 2x2: instance norm of a 1x1 map is zero whatever the input
    x, y = torch.randn(8, 3, 64, 64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_zero_init_makes_every_block_start_as_the_identity_on_its_shortcut():
    model = ResNet("resnet18", zero_init_residual=True).eval()
    block = model.layer2[1]
    x = torch.rand(1, 128, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_head_only_freezes_backbone_weights_and_statistics():
    model = ResNet("resnet18", num_classes=2)
    model.freeze_backbone()
    model.train()
    assert not model.bn1.training and model.fc.training
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    before = model.layer1[0].bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    torch.testing.assert_close(model.layer1[0].bn1.running_mean, before)

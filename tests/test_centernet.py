"""The CenterNet model: stride-4 maps from the course's ResNet backbone and its ImageNet weights, through
any of its decoders (deconv, dcn, unet), with exact gradient checkpointing."""

import pytest
import torch
import torchvision
from torch import nn

from frelon.errors import FrelonError
from frelon.studies import checkpointing as study
from frelon.models import checkpointing
from frelon.models.centernet import DECODERS, HEATMAP_BIAS, CenterNet
from frelon.models.resnet import ResNet
from frelon.models.weights import load_pretrained

NAMES18 = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


@pytest.mark.parametrize("decoder", DECODERS)
def test_outputs_are_heatmap_size_and_offset_maps_at_stride_4(decoder):
    torch.manual_seed(0)
    model = CenterNet(num_classes=20, decoder=decoder).eval()
    out = model(torch.randn(2, 3, 96, 128))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "heatmap": (2, 20, 24, 32), "size": (2, 2, 24, 32), "offset": (2, 2, 24, 32)}
    assert model.heatmap[-1].bias.eq(HEATMAP_BIAS).all()  # sigmoid starts near 0.1
    assert 0.05 < torch.sigmoid(out["heatmap"]).mean() < 0.2


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_narrower_backbone_scales_the_decoder_and_the_heads_by_the_same_factor(decoder):
    model = CenterNet(num_classes=3, decoder=decoder, width=16)
    assert model.backbone.layer4[-1].conv2.out_channels == 128
    assert {m.num_features for m in model.decoder.modules() if isinstance(m, nn.BatchNorm2d)} == {64, 32, 16}
    assert model.heatmap[0].in_channels == 16 and model.heatmap[0].out_channels == 16
    assert model.size[-1].in_channels == 16 and model.offset[-1].out_channels == 2
    out = model(torch.zeros(2, 3, 64, 64))
    assert out["heatmap"].shape == (2, 3, 16, 16) and out["size"].shape == (2, 2, 16, 16)


def test_size_and_offset_start_near_zero():
    torch.manual_seed(0)
    model = CenterNet(num_classes=3)
    for head in (model.size, model.offset):  # the official init: both convolutions N(0, 0.001), biases 0
        for conv in (head[0], head[-1]):
            assert conv.bias.eq(0).all() and conv.weight.std().item() == pytest.approx(0.001, rel=0.2)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out["size"].abs().max() < 0.1 and out["offset"].abs().max() < 0.1


def test_an_unknown_decoder_is_named_with_the_choices():
    with pytest.raises(FrelonError, match="unknown model decoder 'fpn': choose one of deconv, dcn, unet"):
        CenterNet(num_classes=3, decoder="fpn")


@pytest.mark.parametrize("decoder", DECODERS)
def test_the_backbone_takes_torchvisions_imagenet_weights_unchanged(decoder, tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = CenterNet(num_classes=3, decoder=decoder)
    assert isinstance(model.backbone, ResNet)
    load_pretrained(model.backbone, tmp_path / "resnet18.pth")
    ours = model.backbone.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(ours[key], value), key
    assert not any(k.startswith("fc.") for k in ours)  # no classifier left in a detector


@pytest.mark.parametrize("decoder", DECODERS)
def test_every_parameter_gets_a_gradient(decoder):
    model = CenterNet(num_classes=3, decoder=decoder)
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in out.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def up_convolutions():
    """The first up-convolution of the deconv decoder and of the U-Net (depthwise)."""
    return [CenterNet(num_classes=3).decoder[0][3], CenterNet(num_classes=3, decoder="unet").decoder[0].up]


@pytest.mark.parametrize("up", up_convolutions(), ids=["deconv", "unet"])
def test_an_up_convolution_starts_as_bilinear_upsampling_of_each_channel(up):
    channels = up.in_channels
    values = torch.arange(1.0, channels + 1).view(1, channels, 1, 1)
    with torch.no_grad():
        out = up(values.expand(1, channels, 6, 8))
    assert out.shape == (1, channels, 12, 16)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], values.expand(1, channels, 10, 14))  # each keeps its value
    rows, columns = torch.meshgrid(torch.arange(6.0), torch.arange(8.0), indexing="ij")
    ramp = (2 * rows + 3 * columns).expand(1, channels, 6, 8)
    with torch.no_grad():
        out = up(ramp)
    bilinear = nn.functional.interpolate(ramp, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], bilinear[..., 1:-1, 1:-1])


def test_the_deformable_convolution_starts_as_half_a_plain_convolution():
    torch.manual_seed(0)
    dcn = CenterNet(num_classes=3, decoder="dcn").decoder[1][0]  # zero offsets, mask sigmoid(0) = 0.5
    plain = nn.Conv2d(dcn.conv.in_channels, dcn.conv.out_channels, 3, padding=1, bias=False)
    plain.weight.data.copy_(dcn.conv.weight)
    x = torch.randn(2, dcn.conv.in_channels, 8, 6)
    with torch.no_grad():
        torch.testing.assert_close(dcn(x), 0.5 * plain(x), rtol=1e-4, atol=1e-5)


def test_gradients_reach_the_offsets_and_the_mask_of_the_deformable_convolution():
    torch.manual_seed(0)
    model = CenterNet(num_classes=3, decoder="dcn")
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in out.values()).backward()
    for stage in model.decoder:
        grad = stage[0].offset_mask.weight.grad
        assert grad[:18].abs().sum() > 0 and grad[18:].abs().sum() > 0  # offsets (2 x 9), then mask (9)


@pytest.mark.parametrize("decoder", DECODERS)
def test_units_are_the_backbone_blocks_and_the_decoder_stages(decoder):
    names = [name for name, _ in CenterNet(num_classes=3, decoder=decoder).checkpoint_units()]
    assert names == NAMES18 + ["decoder.0", "decoder.1", "decoder.2"]


def one_step(decoder: str, policy):
    """Gradients and buffers after one backward of a training step on a fixed batch."""
    torch.manual_seed(0)
    model = checkpointing.apply(CenterNet(num_classes=3, decoder=decoder), policy).train()
    out = model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    sum(o.square().mean() for o in out.values()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, {n: b.clone() for n, b in model.named_buffers()}


# sqrt cuts layer1.0-layer2.0 into one segment, across the U-Net's first skip
@pytest.mark.parametrize("policy", [["layer2", "layer4", "decoder"], "all", "sqrt"], ids=study.policy_label)
@pytest.mark.parametrize("decoder", DECODERS)
def test_gradients_and_statistics_equal_those_without_checkpointing(decoder, policy):
    grads, buffers = one_step(decoder, "none")
    grads_c, buffers_c = one_step(decoder, policy)
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert buffers_c.keys() == buffers.keys()
    for name in buffers:  # running_mean, running_var moved once; num_batches_tracked == 1
        torch.testing.assert_close(buffers_c[name], buffers[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("decoder", DECODERS)
def test_checkpointing_saves_fewer_bytes_from_none_to_all(decoder):
    x, y = torch.randn(2, 3, 64, 64), torch.zeros(2, dtype=torch.long)
    saved = {study.policy_label(p): study.saved_activation_bytes(
                 checkpointing.apply(CenterNet(num_classes=3, decoder=decoder), p).train(), x, y)
             for p in ["none", ["layer2", "layer4", "decoder"], "all"]}
    assert saved["none"] > saved["layer2+layer4+decoder"] > saved["all"]


def test_the_deformable_decoder_runs_under_cpu_autocast_in_bf16():
    """torchvision's deformable kernel has no bf16 CPU version: it runs in fp32 there, the rest in bf16."""
    torch.manual_seed(0)
    model = CenterNet(2, decoder="dcn").train()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    loss = sum(v.float().mean() for v in out.values())
    loss.backward()
    assert all(torch.isfinite(v).all() for v in out.values()) and out["heatmap"].dtype == torch.bfloat16
    assert model.decoder[0][0].conv.weight.grad is not None


def test_the_unet_upsampling_runs_in_fp32_under_cpu_autocast_and_hands_on_bf16():
    """oneDNN's depthwise transposed convolution is many times slower in bf16 on a CPU: computed in fp32."""
    torch.manual_seed(0)
    stage = CenterNet(2, decoder="unet").decoder[0]
    x = torch.randn(2, 512, 2, 2).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        up = stage.upsample(x)
    assert up.dtype == torch.bfloat16 and torch.equal(up, stage.up(x.float()).bfloat16())

"""CenterNet (Zhou et al. 2019, "Objects as Points") on the course's ResNet backbone, with a choice of decoder.

The backbone is the project's ResNet (same blocks, same ImageNet weights) without its head. A decoder of
three stages (256, 128, 64 channels), each doubling height and width, brings its stride-32 map to stride 4:

- `deconv` (default): a 3x3 convolution, then a 4x4 stride-2 transposed convolution, each followed by
  batch norm and ReLU (mmdetection's `CTResNetNeck`: the official ResDCN decoder with a plain convolution);
- `dcn`: the same with a modulated deformable 3x3 convolution (DCNv2, `torchvision.ops.DeformConv2d` with
  a mask): the official ResDCN decoder;
- `unet`: the course's "U-Net + ResBlock": each stage upsamples, concatenates the backbone's map of the
  new stride (layer3, layer2, then layer1) and merges the two with a residual block.

Every up-convolution starts as bilinear upsampling. Three heads (3x3 conv to 64 channels, ReLU, 1x1 conv)
predict at every stride-4 position: a heatmap per class (bias -2.19, so that sigmoid starts at 0.1), the
object size (2) and the sub-pixel offset of its centre (2), whose last convolution starts near 0.

For gradient checkpointing, the residual blocks (`layer1.0`, …) and the decoder stages (`decoder.0`,
`decoder.1`, `decoder.2`) are the units: a policy such as `[layer2, layer4, decoder]` names them, `all`
and `sqrt` cut them as for a classifier. A `unet` stage also takes a backbone stage's output, so its
checkpointed segments are cut at the backbone's stage boundaries (see `CenterNet._unet_features`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torchvision.ops import DeformConv2d

from frelon.errors import FrelonError
from frelon.models import checkpointing
from frelon.models.resnet import WIDTH, ResBlockA, ResNet

DECODERS = ("deconv", "dcn", "unet")
DECODER_CHANNELS = (256, 128, 64)  # at the backbone's published width; a narrower backbone scales them
HEAD_CHANNELS = 64
HEATMAP_BIAS = -2.19  # -log((1 - 0.1) / 0.1): every heatmap starts near 0.1
REGRESSION_STD = 0.001  # the size and offset heads start near 0 (the official init)
TAPS = 9  # positions of a 3x3 kernel, each with a (dy, dx) offset and a mask in DCNv2


def bilinear_(up: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Start an x2 up-convolution (in = out channels) as bilinear upsampling, so training starts from it."""
    k = up.kernel_size[0]
    f = math.ceil(k / 2)
    taps = 1 - torch.abs(torch.arange(k) / f - (2 * f - 1 - f % 2) / (2 * f))
    with torch.no_grad():
        up.weight.zero_()
        # The official fill_up_weights writes the kernel into w[c, 0] for every c (output channel 0 sums the
        # upsampled inputs, the others keep their random init); here channel c upsamples channel c alone.
        for c in range(up.in_channels):
            up.weight[c, c % up.weight.shape[1]] = taps[:, None] * taps[None, :]
    return up


def _up(channels: int, groups: int = 1) -> nn.ConvTranspose2d:
    return bilinear_(nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, groups=groups, bias=False))


class ModulatedDeformConv(nn.Module):
    """DCNv2: a 3x3 convolution whose taps move by learnt offsets and are weighted by a learnt mask."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = DeformConv2d(cin, cout, 3, padding=1, bias=False)
        self.offset_mask = nn.Conv2d(cin, 3 * TAPS, 3, padding=1)  # 2 x 9 offsets, 9 mask logits
        nn.init.zeros_(self.offset_mask.weight)  # starts as a plain convolution with mask 0.5 (DCNv2's reference)
        nn.init.zeros_(self.offset_mask.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = self.offset_mask(x).split([2 * TAPS, TAPS], dim=1)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # torchvision's deformable kernel has no bf16/fp16 CPU version and casts to fp32 only under CUDA's
            # autocast: in fp32 here, as there, the rest of the network staying in the autocast dtype
            with torch.autocast("cpu", enabled=False):
                return self.conv(x.float(), offset.float(), torch.sigmoid(mask.float()))
        return self.conv(x, offset, torch.sigmoid(mask))


def _up_stage(cin: int, cout: int, deformable: bool) -> nn.Sequential:
    conv = ModulatedDeformConv(cin, cout) if deformable else nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         _up(cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MergeBlock(ResBlockA):
    """The course's ResBlock from `cin` to `cout` channels at one resolution: a 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.projection = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)


class UNetStage(nn.Module):
    """Upsample x2, concatenate the backbone's map of that stride (the skip), merge with a residual block."""

    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        # Depthwise: starts as exactly nn.Upsample's bilinear map yet learns, at 16 weights per channel, and
        # its GPU backward is deterministic (bilinear interpolation's is not), as exact checkpointing needs.
        self.up = _up(cin, groups=cin)
        self.merge = MergeBlock(cin + skip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([self.upsample(x), skip], dim=1))

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN's depthwise transposed convolution is 6-13x slower in bf16 than in fp32 on a CPU core (fwd +
            # bwd, batch 16 at the demo's sizes, measured): in fp32 there, the result back in the autocast dtype
            with torch.autocast("cpu", enabled=False):
                return self.up(x.float()).to(x.dtype)
        return self.up(x)


class _WithSkip(nn.Module):
    """A U-Net stage bound to its skip: one tensor in, one out, as `checkpointing.run_units` applies units."""

    def __init__(self, stage: UNetStage, skip: torch.Tensor):
        super().__init__()
        self.stage, self.skip = stage, skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(x, self.skip)


def _scaled(channels: int, width: int) -> int:
    return max(1, channels * width // WIDTH)


def _decoder(kind: str, backbone_channels: Sequence[int], width: int = WIDTH) -> nn.Module:
    """The decoder's three stages; `backbone_channels` are layer1..layer4's widths (the U-Net's skips)."""
    channels = (backbone_channels[-1], *(_scaled(c, width) for c in DECODER_CHANNELS))
    if kind == "unet":
        skips = backbone_channels[-2::-1]
        return nn.ModuleList([UNetStage(cin, skip, cout) for cin, skip, cout in zip(channels, skips, channels[1:])])
    return nn.Sequential(*[_up_stage(cin, cout, kind == "dcn") for cin, cout in zip(channels, channels[1:])])


def _head(cout: int, width: int = WIDTH) -> nn.Sequential:
    channels = _scaled(HEAD_CHANNELS, width)
    return nn.Sequential(nn.Conv2d(_scaled(DECODER_CHANNELS[-1], width), channels, 3, padding=1),
                         nn.ReLU(inplace=True), nn.Conv2d(channels, cout, 1))


def _heatmap_head(num_classes: int, width: int = WIDTH) -> nn.Sequential:
    head = _head(num_classes, width)
    nn.init.constant_(head[-1].bias, HEATMAP_BIAS)
    return head


def _regression_head(width: int = WIDTH) -> nn.Sequential:
    """A size or offset head as the official code starts it: both convolutions' weights N(0, 0.001), biases 0."""
    head = _head(2, width)
    for conv in (head[0], head[-1]):
        nn.init.normal_(conv.weight, std=REGRESSION_STD)
        nn.init.zeros_(conv.bias)
    return head


def _cut(plan: checkpointing.Plan | None, sizes: Sequence[int]) -> list[checkpointing.Plan | None]:
    """`plan` over consecutive runs of `sizes` units, each run's renumbered from 0; a segment across runs is cut."""
    if plan is None:
        return [None] * len(sizes)
    plans, start = [], 0
    for size in sizes:
        end = start + size
        plans.append([(max(a, start) - start, min(b, end) - start, recompute) for a, b, recompute in plan
                      if a < end and b > start])
        start = end
    return plans


class CenterNet(nn.Module):
    """Heatmap (num_classes), size (2) and offset (2) maps at a quarter of the input resolution. A backbone
    of another `width` than the published 64 scales the decoder's and heads' channels by the same factor."""

    stride = 4

    def __init__(self, num_classes: int, arch: str = "resnet18", norm: str = "batch", decoder: str = "deconv",
                 width: int = WIDTH):
        super().__init__()
        if decoder not in DECODERS:
            raise FrelonError(f"unknown model decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
        self.backbone = ResNet(arch, num_classes=1, norm=norm, width=width)
        self.backbone.fc = nn.Identity()  # no classifier: every parameter gets a gradient (DDP)
        self.decoder_kind = decoder
        self.decoder = _decoder(decoder, [stage[-1].conv2.out_channels for stage in self._stages()], width)
        self.heatmap = _heatmap_head(num_classes, width)
        self.size = _regression_head(width)
        self.offset = _regression_head(width)
        self.checkpoint_plan: checkpointing.Plan | None = None

    def _stages(self) -> list[nn.Sequential]:
        return [getattr(self.backbone, f"layer{i}") for i in range(1, 5)]

    def checkpoint_units(self) -> list[tuple[str, nn.Module]]:
        return self.backbone.checkpoint_units() + [(f"decoder.{i}", stage) for i, stage in enumerate(self.decoder)]

    def _unet_features(self, x: torch.Tensor) -> torch.Tensor:
        """Each backbone stage, then each decoder stage bound to its skip, under the plan cut at these
        boundaries: the same gradients, and each tensor at a cut is kept anyway (as a skip or a stage input)."""
        stages = self._stages()
        plans = _cut(self.checkpoint_plan, [len(stage) for stage in stages] + [1] * len(self.decoder))
        skips = []
        for stage, plan in zip(stages, plans):
            x = checkpointing.run_units(list(stage), plan, x)
            skips.append(x)
        for stage, skip, plan in zip(self.decoder, skips[-2::-1], plans[len(stages):]):
            x = checkpointing.run_units([_WithSkip(stage, skip)], plan, x)
        return x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.backbone.stem(x)
        if self.decoder_kind == "unet":
            x = self._unet_features(x)
        else:
            x = checkpointing.run_units([unit for _, unit in self.checkpoint_units()], self.checkpoint_plan, x)
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}

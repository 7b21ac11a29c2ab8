"""CenterNet (Zhou et al. 2019, "Objects as Points") on the course's ResNet backbone.

The backbone is the project's ResNet (same blocks, same ImageNet weights) without its head. A
decoder of three stages (256, 128, 64 channels), each a 3x3 convolution and a 4x4 stride-2
transposed convolution, both followed by batch norm and ReLU (the official ResDCN decoder with a
plain convolution in place of the deformable one), brings the stride-32 feature map to stride 4. Three heads (3x3 conv to 64 channels, ReLU,
1x1 conv) predict at every stride-4 position: a heatmap per class (bias -2.19, so that sigmoid
starts at 0.1), the object size (2) and the sub-pixel offset of its centre (2).

For gradient checkpointing, the residual blocks (`layer1.0`, …) and the decoder stages
(`decoder.0`, `decoder.1`, `decoder.2`) are the units: a policy such as `[layer2, layer4, decoder]`
names them, `all` and `sqrt` cut them as for a classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from frelon.models import checkpointing
from frelon.models.resnet import ResNet

DECODER_CHANNELS = (256, 128, 64)
HEAD_CHANNELS = 64
HEATMAP_BIAS = -2.19  # -log((1 - 0.1) / 0.1): every heatmap starts near 0.1


def _decoder_stage(cin: int, cout: int) -> nn.Sequential:
    up = nn.ConvTranspose2d(cout, cout, 4, stride=2, padding=1, bias=False)  # doubles height and width
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         up, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _head(cin: int, cout: int, bias: float = 0.0) -> nn.Sequential:
    head = nn.Sequential(nn.Conv2d(cin, HEAD_CHANNELS, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(HEAD_CHANNELS, cout, 1))
    nn.init.constant_(head[-1].bias, bias)
    return head


class CenterNet(nn.Module):
    """Heatmap (num_classes), size (2) and offset (2) maps at a quarter of the input resolution."""

    stride = 4

    def __init__(self, num_classes: int, arch: str = "resnet18", norm: str = "batch"):
        super().__init__()
        self.backbone = ResNet(arch, num_classes=1, norm=norm)
        self.backbone.fc = nn.Identity()  # no classifier: every parameter gets a gradient (DDP)
        channels = (512, *DECODER_CHANNELS)
        self.decoder = nn.Sequential(*[_decoder_stage(cin, cout) for cin, cout in zip(channels, channels[1:])])
        self.heatmap = _head(DECODER_CHANNELS[-1], num_classes, HEATMAP_BIAS)
        self.size = _head(DECODER_CHANNELS[-1], 2)
        self.offset = _head(DECODER_CHANNELS[-1], 2)
        self.checkpoint_plan: checkpointing.Plan | None = None

    def checkpoint_units(self) -> list[tuple[str, nn.Module]]:
        return self.backbone.checkpoint_units() + [(f"decoder.{i}", stage) for i, stage in enumerate(self.decoder)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.backbone.stem(x)
        x = checkpointing.run_units([unit for _, unit in self.checkpoint_units()], self.checkpoint_plan, x)
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}

"""The ResNet family from the course's two residual blocks, with torchvision's parameter names.

ResBlock A keeps resolution and channels (identity shortcut); ResBlock B halves the resolution
and doubles the channels (stride-2 convolution, 1x1 projection shortcut). Parameter names
match torchvision's `resnet18`/`resnet34`, so their ImageNet `state_dict`s load unchanged.

The course's ingredients are options: the normalisation layer (batch, group, layer, instance
or none), residual connections (off: a "plain" network of the same depth), and zero-initialised
last normalisation in each block (each block starts as the identity).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from frelon.errors import FrelonError
from frelon.models import checkpointing

STAGES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
WIDTH = 64  # the stem's and first stage's channels (He et al.); each later stage doubles them
GROUPS = 32  # group norm: channels per layer are split into this many groups


def _batch(channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels, momentum=0.1)  # running <- 0.9 running + 0.1 batch (the course)


NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": _batch,
    "group": lambda c: nn.GroupNorm(min(GROUPS, c), c),
    "layer": lambda c: nn.GroupNorm(1, c),  # over (C, H, W) of each sample
    "instance": lambda c: nn.GroupNorm(c, c),  # over (H, W) of each channel, with a learnt affine
    "none": lambda c: nn.Identity(),
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class ResBlockA(nn.Module):
    """conv-norm-ReLU-conv-norm plus the input itself, then ReLU: same channels, same resolution."""

    def __init__(self, channels: int, norm: str = "batch", residual: bool = True):
        super().__init__()
        self.residual = residual
        self.conv1 = _conv3x3(channels, channels)
        self.bn1 = NORMS[norm](channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = NORMS[norm](channels)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x) if self.residual else out)


class ResBlockB(ResBlockA):
    """ResBlock A with stride 2 and doubled channels; the shortcut is a 1x1 stride-2 projection."""

    def __init__(self, cin: int, norm: str = "batch", residual: bool = True):
        super().__init__(2 * cin, norm, residual)
        self.conv1 = _conv3x3(cin, 2 * cin, stride=2)
        if residual:
            self.downsample = nn.Sequential(nn.Conv2d(cin, 2 * cin, 1, stride=2, bias=False), NORMS[norm](2 * cin))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x)


class ResNet(nn.Module):
    """Stem (7x7 conv, max-pool), four stages of blocks, global pooling and a linear head."""

    def __init__(self, arch: str = "resnet18", num_classes: int = 1000, norm: str = "batch",
                 residual: bool = True, zero_init_residual: bool = False, width: int = WIDTH):
        super().__init__()
        if arch not in STAGES:
            raise FrelonError(f"unknown model arch {arch!r}: choose one of {', '.join(STAGES)}")
        if norm not in NORMS:
            raise FrelonError(f"unknown model norm {norm!r}: choose one of {', '.join(NORMS)}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise FrelonError(f"model width {width!r}: give a whole number of channels, {WIDTH} as published")
        self.arch, self.norm, self.residual, self.width = arch, norm, residual, width
        self.frozen_backbone = False
        self.checkpoint_plan: checkpointing.Plan | None = None  # set by checkpointing.apply
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = NORMS[norm](width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        for i, depth in enumerate(STAGES[arch], start=1):
            channels = width * 2 ** (i - 1)
            first = ResBlockA(channels, norm, residual) if i == 1 else ResBlockB(channels // 2, norm, residual)
            blocks = [first] + [ResBlockA(channels, norm, residual) for _ in range(depth - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for block in self.blocks():
                if hasattr(block.bn2, "weight"):
                    nn.init.zeros_(block.bn2.weight)

    def blocks(self) -> list[ResBlockA]:
        """The residual blocks, input to output."""
        return [block for i in range(1, 5) for block in getattr(self, f"layer{i}")]

    def checkpoint_units(self) -> list[tuple[str, nn.Module]]:
        """The units gradient checkpointing may recompute: the residual blocks, by name (layer2.0, …)."""
        return [(f"layer{i}.{j}", block) for i in range(1, 5) for j, block in enumerate(getattr(self, f"layer{i}"))]

    def backbone(self) -> list[nn.Module]:
        """Every module but the head."""
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4]

    def freeze_backbone(self) -> None:
        """Train the head only: backbone weights get no gradient, its batch-norm statistics stay put."""
        self.frozen_backbone = True
        for module in self.backbone():
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        if self.frozen_backbone:
            for module in self.backbone():
                module.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone: a (N, 8 x width, H/32, W/32) feature map (512 channels at the published width)."""
        return checkpointing.run_units(self.blocks(), self.checkpoint_plan, self.stem(x))

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The 7x7 stride-2 convolution, its norm, ReLU and max-pool: stride 4, `width` channels."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def from_spec(model: dict, num_classes: int) -> ResNet:
    """The classifier a run's `spec["model"]` describes (a spec without `width` is of the published width)."""
    return ResNet(model["arch"], num_classes, model["norm"], model["residual"], model["zero_init_residual"],
                  model.get("width", WIDTH))

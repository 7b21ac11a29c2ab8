"""ResNet from the course's two residual blocks, with torchvision's parameter names.

ResBlock A keeps resolution and channels (identity shortcut); ResBlock B halves the resolution
and doubles the channels (stride-2 convolution, 1x1 projection shortcut). Parameter names
match torchvision's `resnet18`, so its ImageNet `state_dict` loads unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from frelon.errors import FrelonError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class ResBlockA(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input itself, then ReLU: same channels, same resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResBlockB(ResBlockA):
    """ResBlock A with stride 2 and doubled channels; the shortcut is a 1x1 stride-2 projection."""

    def __init__(self, cin: int):
        super().__init__(2 * cin)
        self.conv1 = _conv3x3(cin, 2 * cin, stride=2)
        self.downsample = nn.Sequential(
            nn.Conv2d(cin, 2 * cin, 1, stride=2, bias=False), nn.BatchNorm2d(2 * cin)
        )

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x)


class ResNet(nn.Module):
    """Stem (7x7 conv, max-pool), four stages of blocks, global pooling and a linear head."""

    def __init__(self, arch: str = "resnet18", num_classes: int = 1000):
        super().__init__()
        self.arch = arch
        if arch not in STAGES:
            raise FrelonError(f"unknown model arch {arch!r}: choose one of {', '.join(STAGES)}")
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        for i, (width, depth) in enumerate(zip(widths, STAGES[arch]), start=1):
            first = ResBlockA(width) if i == 1 else ResBlockB(width // 2)
            blocks = [first] + [ResBlockA(width) for _ in range(depth - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone: a (N, 512, H/32, W/32) feature map."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


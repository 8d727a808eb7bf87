"""CIFAR ResNets of He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2.

Depth ``6n + 2``: a 3x3 conv stem with 16 channels, three stages of ``n`` BasicBlocks with
16, 32 and 64 channels (the 2nd and 3rd stages start with stride 2), global average pooling
and a linear classifier.

Shortcuts use the paper's **option A**: parameter-free identity that, when the shape changes,
subsamples spatially by 2 and zero-pads the new channels. This reproduces the published
parameter counts (resnet20 0.27M, resnet32 0.46M, resnet44 0.66M, resnet56 0.85M,
resnet110 1.7M); option B (1x1 conv + BN projection, as in RepDistiller) has more parameters.

Initialisation: conv weights ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` (as in
torchvision's ResNets), BatchNorm weight 1 and bias 0, the linear classifier PyTorch's default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdgen.errors import ConfigError
from kdgen.models.layers import check_positive_int, conv3x3, kaiming_init
from kdgen.models.registry import register_model

STAGE_WIDTHS = (16, 32, 64)
DEPTHS = (8, 14, 20, 32, 44, 56, 110)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad channels up to ``out_planes``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad_before = extra // 2
        self.pad_after = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample spatially, then pad the channel dimension with zeros."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection and ReLU after the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """conv-BN-ReLU-conv-BN, add the shortcut, ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet with ``blocks_per_stage`` BasicBlocks in each of its three stages."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, STAGE_WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        in_planes = STAGE_WIDTHS[0]
        stages = []
        for index, width in enumerate(STAGE_WIDTHS):
            stride = 1 if index == 0 else 2
            stages.append(self._make_stage(in_planes, width, blocks_per_stage, stride))
            in_planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        kaiming_init(self)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        """One stage: the first block may downsample, the rest keep the shape."""
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape ``(N, num_features)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(N, num_classes)``."""
        return self.fc(self.forward_features(x))


def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Build the CIFAR ResNet of ``depth`` layers; ``depth`` must be ``6n + 2`` with ``n >= 1``."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth!r}"
        )
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    return CifarResNet((depth - 2) // 6, num_classes=num_classes, in_channels=in_channels)


def _register(depth: int) -> None:
    """Register ``resnet<depth>``."""

    @register_model(f"resnet{depth}")
    def factory(num_classes: int, in_channels: int) -> nn.Module:
        return cifar_resnet(depth, num_classes, in_channels)


for _depth in DEPTHS:
    _register(_depth)

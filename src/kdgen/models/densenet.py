"""DenseNet-BC for CIFAR: Huang et al. 2017, "Densely Connected Convolutional Networks" (CVPR).

Depth ``L = 6n + 4``: a 3x3 conv stem with ``2k`` channels (``k`` the growth rate), three dense
blocks of ``n = (L - 4) / 6`` bottleneck layers each (BN-ReLU-1x1 conv to ``4k`` channels,
BN-ReLU-3x3 conv to ``k`` channels, concatenated to the block's input), a transition between
blocks (BN-ReLU-1x1 conv with compression 0.5, i.e. ``floor(0.5 * channels)`` out, then 2x2
average pooling), and a final BN-ReLU, global average pooling and linear classifier. Depth counts
the stem, the ``6n`` block convs, the two transition convs and the classifier.

This is the plain implementation (``torch.cat`` at every layer, not the memory-efficient
checkpointed one); dropout after each conv is optional and off by default (the paper uses 0.2
only without data augmentation). Parameter counts match the paper's Table 2 (0.8M, 25.6M) for
10 classes: ``densenet_bc_100_12`` 769,162 and ``densenet_bc_190_40`` 25,624,430; for 100
classes they are 800,032 and 25,821,620 (the table prints one figure for C10 and C100).

Initialisation as in the other kdgen CIFAR models (and the authors' code): conv weights
``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, BatchNorm weight 1 and bias 0, the
linear classifier PyTorch's default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdgen.errors import ConfigError
from kdgen.models.layers import check_dropout, check_fraction, check_positive_int, kaiming_init
from kdgen.models.registry import register_model


class Bottleneck(nn.Module):
    """BN-ReLU-1x1 conv (``4k``)-BN-ReLU-3x3 conv (``k``); the output is concatenated to ``x``."""

    def __init__(self, in_planes: int, growth_rate: int, dropout: float = 0.0) -> None:
        super().__init__()
        inter = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, inter, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter)
        self.conv2 = nn.Conv2d(inter, growth_rate, 3, padding=1, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``cat([x, new_features], dim=1)``: ``k`` more channels than ``x``."""
        out = self.conv1(F.relu(self.bn1(x)))
        out = F.dropout(out, self.dropout, self.training)
        out = self.conv2(F.relu(self.bn2(out)))
        out = F.dropout(out, self.dropout, self.training)
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (compression)-2x2 average pooling between two dense blocks."""

    def __init__(self, in_planes: int, out_planes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compress the channels and halve the spatial size."""
        out = self.conv(F.relu(self.bn(x)))
        out = F.dropout(out, self.dropout, self.training)
        return F.avg_pool2d(out, 2)


class DenseNetBC(nn.Module):
    """A CIFAR DenseNet-BC with ``layers_per_block`` bottleneck layers in each of three blocks."""

    def __init__(
        self,
        layers_per_block: int,
        growth_rate: int,
        num_classes: int = 10,
        in_channels: int = 3,
        compression: float = 0.5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        for index in range(3):
            layers = []
            for _ in range(layers_per_block):
                layers.append(Bottleneck(planes, growth_rate, dropout))
                planes += growth_rate
            blocks.append(nn.Sequential(*layers))
            if index < 2:
                out_planes = max(1, math.floor(compression * planes))
                blocks.append(Transition(planes, out_planes, dropout))
                planes = out_planes
        self.features = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(planes)
        self.num_features = planes
        self.fc = nn.Linear(planes, num_classes)
        kaiming_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape ``(N, num_features)``."""
        x = self.features(self.conv1(x))
        x = F.relu(self.bn(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(N, num_classes)``."""
        return self.fc(self.forward_features(x))


def densenet_bc(
    depth: int,
    growth_rate: int,
    num_classes: int = 10,
    in_channels: int = 3,
    compression: float = 0.5,
    dropout: float = 0.0,
) -> DenseNetBC:
    """Build DenseNet-BC-``depth``-``growth_rate``; ``depth`` must be ``6n + 4`` with ``n >= 1``."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ConfigError(
            f"DenseNet-BC depth must be 6n+4 with n >= 1 (10, 16, ..., 100, 190), got {depth!r}"
        )
    check_positive_int("growth_rate", growth_rate)
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    compression = check_fraction("compression", compression, low_open=True, high_open=False)
    return DenseNetBC(
        (depth - 4) // 6,
        growth_rate,
        num_classes=num_classes,
        in_channels=in_channels,
        compression=compression,
        dropout=check_dropout(dropout),
    )


@register_model("densenet_bc_100_12")
def densenet_bc_100_12(
    num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0
) -> DenseNetBC:
    """DenseNet-BC with L=100, k=12 (0.8M parameters in the paper)."""
    return densenet_bc(100, 12, num_classes, in_channels, dropout=dropout)


@register_model("densenet_bc_190_40")
def densenet_bc_190_40(
    num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0
) -> DenseNetBC:
    """DenseNet-BC with L=190, k=40 (25.6M parameters in the paper)."""
    return densenet_bc(190, 40, num_classes, in_channels, dropout=dropout)

"""A tiny CNN (about 24k parameters for 10 classes) for fast tests and smoke runs."""

from __future__ import annotations

import torch
from torch import nn

from kdgen.models.layers import check_positive_int
from kdgen.models.registry import register_model

WIDTHS = (16, 32, 64)


def _conv_bn_relu(in_planes: int, out_planes: int) -> list[nn.Module]:
    """A 3x3 conv (padding 1, no bias), BatchNorm and ReLU."""
    return [
        nn.Conv2d(in_planes, out_planes, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_planes),
        nn.ReLU(inplace=True),
    ]


class TinyCNN(nn.Module):
    """Three conv-BN-ReLU layers (max-pool after the first two), global average pool, linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_planes = in_channels
        for index, width in enumerate(WIDTHS):
            layers += _conv_bn_relu(in_planes, width)
            if index < len(WIDTHS) - 1:
                layers.append(nn.MaxPool2d(2))
            in_planes = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        self.features = nn.Sequential(*layers)
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape ``(N, num_features)``."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(N, num_classes)``."""
        return self.fc(self.features(x))


@register_model("tiny_cnn")
def tiny_cnn(num_classes: int = 10, in_channels: int = 3) -> TinyCNN:
    """Build the tiny CNN."""
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    return TinyCNN(num_classes=num_classes, in_channels=in_channels)

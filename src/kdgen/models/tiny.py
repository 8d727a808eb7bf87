"""A tiny CNN (about 24k parameters for 10 classes) for fast tests and smoke runs; wider
variants through ``model_args.widths`` (e.g. ``[32, 64, 128]``: about 93k parameters)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdgen.errors import ConfigError
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

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = WIDTHS
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_planes = in_channels
        for index, width in enumerate(widths):
            layers += _conv_bn_relu(in_planes, width)
            if index < len(widths) - 1:
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
def tiny_cnn(
    num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = WIDTHS
) -> TinyCNN:
    """Build the tiny CNN: one conv-BN-ReLU layer per entry of ``widths`` (channels)."""
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    if len(widths) == 0:
        raise ConfigError("model_args.widths must list at least one channel count")
    for width in widths:
        check_positive_int("model_args.widths", width)
    return TinyCNN(num_classes=num_classes, in_channels=in_channels, widths=tuple(widths))

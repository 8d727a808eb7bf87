"""Wide ResNets for CIFAR: Zagoruyko & Komodakis 2016, "Wide Residual Networks" (BMVC).

WRN-``d``-``k`` with ``d = 6n + 4``: a 3x3 conv stem with 16 channels, three stages of
``n = (d - 4) / 6`` pre-activation basic blocks with ``16k``, ``32k`` and ``64k`` channels (the
2nd and 3rd stages start with stride 2), a final BN-ReLU, global average pooling and a linear
classifier. A block is BN-ReLU-3x3 conv-BN-ReLU-[dropout]-3x3 conv plus a shortcut: identity,
or, when the shape changes, a 1x1 conv (stride as the block, no BatchNorm) applied to the
block's pre-activated input, as in the authors' code. Depth counts the stem, the ``6n`` block
convs and the classifier (the 1x1 shortcut convs are not counted). Dropout is off by default.

Parameter counts match the paper's Table 1 (one figure for CIFAR-10 and CIFAR-100) for 10
classes: ``wrn_16_8`` 10,961,370 (11.0M), ``wrn_28_10`` 36,479,194 (36.5M), ``wrn_40_2``
2,243,546 (2.2M); for 100 classes 11,007,540, 36,536,884 and 2,255,156 (which rounds to 2.3M).

Initialisation as in the other kdgen CIFAR models: conv weights
``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, BatchNorm weight 1 and bias 0, the
linear classifier PyTorch's default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdgen.errors import ConfigError
from kdgen.models.layers import check_dropout, check_positive_int, conv3x3, kaiming_init
from kdgen.models.registry import register_model

BASE_WIDTHS = (16, 32, 64)


class WideBasicBlock(nn.Module):
    """Pre-activation basic block: (BN-ReLU-conv3x3) twice, dropout between, plus a shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.dropout = dropout
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual branch plus identity, or plus a 1x1 conv of the pre-activated input."""
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        out = F.dropout(out, self.dropout, self.training)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """A CIFAR Wide ResNet: ``blocks_per_stage`` blocks of widths ``16k``, ``32k``, ``64k``."""

    def __init__(
        self,
        blocks_per_stage: int,
        widen_factor: int,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, BASE_WIDTHS[0])
        in_planes = BASE_WIDTHS[0]
        stages = []
        for index, base in enumerate(BASE_WIDTHS):
            width = base * widen_factor
            stride = 1 if index == 0 else 2
            blocks = [WideBasicBlock(in_planes, width, stride, dropout)]
            blocks += [
                WideBasicBlock(width, width, dropout=dropout) for _ in range(blocks_per_stage - 1)
            ]
            stages.append(nn.Sequential(*blocks))
            in_planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        kaiming_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape ``(N, num_features)``."""
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = F.relu(self.bn(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(N, num_classes)``."""
        return self.fc(self.forward_features(x))


def wide_resnet(
    depth: int,
    widen_factor: int,
    dropout: float = 0.0,
    num_classes: int = 10,
    in_channels: int = 3,
) -> WideResNet:
    """Build WRN-``depth``-``widen_factor``; ``depth`` must be ``6n + 4`` with ``n >= 1``."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ConfigError(
            f"Wide ResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth!r}"
        )
    check_positive_int("widen_factor", widen_factor)
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    return WideResNet(
        (depth - 4) // 6,
        widen_factor,
        num_classes=num_classes,
        in_channels=in_channels,
        dropout=check_dropout(dropout),
    )


@register_model("wrn_16_8")
def wrn_16_8(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-16-8 (11.0M parameters in the paper)."""
    return wide_resnet(16, 8, dropout, num_classes, in_channels)


@register_model("wrn_28_10")
def wrn_28_10(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10 (36.5M parameters in the paper)."""
    return wide_resnet(28, 10, dropout, num_classes, in_channels)


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-40-2 (2.2M parameters in the paper)."""
    return wide_resnet(40, 2, dropout, num_classes, in_channels)

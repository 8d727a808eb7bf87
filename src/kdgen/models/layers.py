"""Layers, initialisation and argument checks shared by the kdgen model families."""

from __future__ import annotations

from torch import nn

from kdgen.errors import ConfigError


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows or precedes it)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, BatchNorm to identity; Linear keeps its default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def check_positive_int(key: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise ConfigError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")
    return value


def check_fraction(key: str, value: object, low_open: bool, high_open: bool) -> float:
    """Return ``value`` as a float if it is a number in the interval from 0 to 1 (each end
    open or closed as asked), else raise ConfigError naming ``key``."""
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number in {interval}, got {value!r}")
    above = value > 0.0 if low_open else value >= 0.0
    below = value < 1.0 if high_open else value <= 1.0
    if not (above and below):
        raise ConfigError(f"{key} must be a number in {interval}, got {value!r}")
    return float(value)


def check_dropout(dropout: object) -> float:
    """Return ``dropout`` if it is a number in ``[0, 1)``, else raise ConfigError."""
    return check_fraction("dropout", dropout, low_open=False, high_open=True)

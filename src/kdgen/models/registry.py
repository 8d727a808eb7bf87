"""The model registry: a name maps to a factory ``(num_classes, in_channels) -> nn.Module``.

A new model family is one module that decorates its factories with :func:`register_model`,
plus one import line in :mod:`kdgen.models` so the decorators run.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable

from torch import nn

from kdgen.errors import ConfigError

ModelFactory = Callable[[int, int], nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}

SEE_ALSO = "(see: kdgen models)"


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Return a decorator that registers a factory ``f(num_classes, in_channels)`` as ``name``."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        if name.startswith("tv:"):
            raise ValueError("the 'tv:' prefix is reserved for torchvision models")
        if name.startswith("timm:"):
            raise ValueError("the 'timm:' prefix is reserved for timm models")
        _REGISTRY[name] = factory
        return factory

    return decorator


def _natural_key(name: str) -> list[str | int]:
    """Sort key that orders ``resnet8`` before ``resnet14``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def registered_names() -> list[str]:
    """The names of every registered (non-torchvision) model, in natural order."""
    return sorted(_REGISTRY, key=_natural_key)


def get_factory(name: str) -> ModelFactory | None:
    """The factory registered as ``name``, or None."""
    return _REGISTRY.get(name)


def unknown_name_error(kind: str, name: str, candidates: list[str]) -> ConfigError:
    """A one-line ConfigError for an unknown ``name`` that suggests the closest candidates."""
    close = difflib.get_close_matches(name, candidates, n=3)
    return unknown_with_suggestions(kind, name, close)


def unknown_with_suggestions(kind: str, name: str, suggestions: list[str]) -> ConfigError:
    """A one-line ConfigError for an unknown ``name`` listing ``suggestions`` (if any)."""
    hint = f"; did you mean: {', '.join(suggestions)}?" if suggestions else ""
    return ConfigError(f"unknown {kind} {name!r}{hint} {SEE_ALSO}")


def check_positive_int(key: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise ConfigError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")
    return value


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, BatchNorm to identity; Linear keeps its default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

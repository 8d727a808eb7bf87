"""The model registry: a name maps to a factory ``(num_classes, in_channels, **args)``.

Two kinds of entries, in one place:

- kdgen's own families: a module decorates its factories with :func:`register_model`,
  plus one import line in :mod:`kdgen.models` so the decorators run;
- whole libraries behind a prefix (``tv:<name>``, ``timm:<name>``): a module calls
  :func:`register_prefix` with the library's builder and its list of names.

Factory keyword arguments come from the config's ``model_args`` (e.g. ``dropout``);
:func:`build` refuses, with one line, an argument that the factory does not take.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from kdgen.errors import ConfigError
from kdgen.models.layers import check_positive_int, kaiming_init

__all__ = [
    "ModelFactory",
    "PrefixSource",
    "Pretrained",
    "build",
    "check_positive_int",
    "get_factory",
    "hub_cache_file",
    "kaiming_init",
    "prefix_sources",
    "pretrained_weights",
    "register_model",
    "register_prefix",
    "registered_names",
    "unknown_name_error",
    "unknown_with_suggestions",
]

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}

SEE_ALSO = "(see: kdgen models; your own: @kdgen.register_model in a module named in imports)"


@dataclass(frozen=True)
class Pretrained:
    """A library's pretrained weights of one model. ``file``: where its cache holds them on
    this machine (None: not there; ``expected`` says where they were looked for). The model
    classifies ``num_classes`` classes of ``in_channels``-channel images, and
    ``build(state_dict, **model_args)`` makes it, with the kdgen interface, from them."""

    kind: str
    num_classes: int
    in_channels: int
    file: Path | None
    expected: str
    build: Callable[..., nn.Module]


def hub_cache_file(url: str) -> Path:
    """Where torch hub's cache (``TORCH_HOME/hub/checkpoints``) keeps the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


@dataclass(frozen=True)
class PrefixSource:
    """A library of models reached by ``<prefix><name>``.

    ``create(name, num_classes, in_channels, **args)`` builds one (``name`` without the
    prefix); ``names()`` lists them (it may raise ConfigError when the library is missing);
    ``description`` is the line ``kdgen models`` prints for the source, ``available()``
    whether its library is installed and ``install`` how to install it when it is not;
    ``pretrained(name)`` describes the library's pretrained weights of ``name``.
    """

    prefix: str
    create: ModelFactory
    names: Callable[[], list[str]]
    description: str
    available: Callable[[], bool] = lambda: True
    install: str = ""
    pretrained: Callable[[str], Pretrained] | None = None


_PREFIXES: dict[str, PrefixSource] = {}


def register_prefix(source: PrefixSource) -> PrefixSource:
    """Make every model of ``source`` reachable as ``<source.prefix><name>``."""
    if source.prefix in _PREFIXES:
        raise ValueError(f"model prefix {source.prefix!r} is registered twice")
    if any(name.startswith(source.prefix) for name in _REGISTRY):
        raise ValueError(f"a registered model name starts with {source.prefix!r}")
    _PREFIXES[source.prefix] = source
    return source


def prefix_sources() -> list[PrefixSource]:
    """The registered prefix sources, in registration order."""
    return list(_PREFIXES.values())


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Return a decorator that registers a factory ``f(num_classes, in_channels, **args)``
    as ``name``."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                raise ValueError(f"the '{prefix}' prefix is reserved for a model library")
        _REGISTRY[name] = factory
        return factory

    return decorator


def pretrained_weights(name: str) -> Pretrained:
    """The pretrained weights of a prefixed library model (``tv:<name>``, ``timm:<name>``)."""
    for prefix, source in _PREFIXES.items():
        if name.startswith(prefix) and source.pretrained is not None:
            return source.pretrained(name[len(prefix) :])
    raise ConfigError(
        f"{name} is no library model with pretrained weights (tv:<name>, timm:<name>)"
    )


def _natural_key(name: str) -> list[str | int]:
    """Sort key that orders ``resnet8`` before ``resnet14``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def registered_names() -> list[str]:
    """The names of every registered kdgen model (not the prefixed ones), in natural order."""
    return sorted(_REGISTRY, key=_natural_key)


def get_factory(name: str) -> ModelFactory | None:
    """The factory registered as ``name``, or None."""
    return _REGISTRY.get(name)


def _check_arguments(name: str, factory: ModelFactory, args: dict[str, Any]) -> None:
    """Refuse keyword arguments that ``factory`` does not take, naming those it does."""
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [p for p in parameters if p not in ("num_classes", "in_channels")]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        takes = f"it takes: {', '.join(accepted)}" if accepted else "it takes none"
        raise ConfigError(f"model {name} takes no argument {', '.join(unknown)} ({takes})")


def build(
    name: str,
    num_classes: int,
    in_channels: int,
    args: dict[str, Any],
    unknown: Callable[[str], Exception],
) -> nn.Module:
    """Build ``name``: a prefixed library model or a registered one; ``unknown(name)`` is
    the error raised for a name that is neither."""
    for prefix, source in _PREFIXES.items():
        if name.startswith(prefix):
            return source.create(name[len(prefix) :], num_classes, in_channels, **args)
    factory = get_factory(name)
    if factory is None:
        raise unknown(name)
    _check_arguments(name, factory, args)
    return factory(num_classes, in_channels, **args)


def unknown_name_error(kind: str, name: str, candidates: list[str]) -> ConfigError:
    """A one-line ConfigError for an unknown ``name`` that suggests the closest candidates."""
    close = difflib.get_close_matches(name, candidates, n=3)
    return unknown_with_suggestions(kind, name, close)


def unknown_with_suggestions(kind: str, name: str, suggestions: list[str]) -> ConfigError:
    """A one-line ConfigError for an unknown ``name`` listing ``suggestions`` (if any)."""
    hint = f"; did you mean: {', '.join(suggestions)}?" if suggestions else ""
    return ConfigError(f"unknown {kind} {name!r}{hint} {SEE_ALSO}")

"""Data sets: a registry of loaders that all return an in-memory :class:`ImageDataset`.

A new data set is one module with a loader function plus one entry in ``_LOADERS``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from kdgen.data.base import ImageDataset, ImageSplit
from kdgen.data.split import stratified_split, stratified_subset
from kdgen.data.tensors import Augment, DeviceLoader
from kdgen.errors import ConfigError

__all__ = [
    "Augment",
    "DeviceLoader",
    "ImageDataset",
    "ImageSplit",
    "list_datasets",
    "load_dataset",
    "stratified_split",
    "stratified_subset",
]


def _synthetic(root: str | None, download: bool, **options: Any) -> ImageDataset:
    from kdgen.data.synthetic import make_synthetic

    return make_synthetic(**options)


def _cifar100(root: str | None, download: bool, **options: Any) -> ImageDataset:
    from kdgen.data.cifar import load_cifar100

    return load_cifar100(root, download=download)


def _cifar10(root: str | None, download: bool, **options: Any) -> ImageDataset:
    from kdgen.data.cifar import load_cifar10

    return load_cifar10(root, download=download)


def _fashion_mnist(root: str | None, download: bool, **options: Any) -> ImageDataset:
    from kdgen.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(root)


_LOADERS: dict[str, Callable[..., ImageDataset]] = {
    "synthetic": _synthetic,
    "cifar100": _cifar100,
    "cifar10": _cifar10,
    "fashion-mnist": _fashion_mnist,
}


def list_datasets() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(
    name: str, root: str | None = None, download: bool = False, **options: Any
) -> ImageDataset:
    """Load a registered data set by name. ``options`` go to the loader (synthetic only)."""
    if name not in _LOADERS:
        close = difflib.get_close_matches(name, list_datasets(), n=3, cutoff=0.4)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown data set '{name}'{hint} (available: {', '.join(list_datasets())})"
        )
    return _LOADERS[name](root, download, **options)

"""Data sources: one registry of loaders, each returning a :class:`DataSource`.

An in-memory set (:class:`ImageDataset`: synthetic, CIFAR, Fashion-MNIST) and an image
folder read as it is used (``imagefolder``) give a run the same interface: class names,
channels and size, :meth:`~kdgen.data.loading.DataSource.class_hierarchy` and
:meth:`~kdgen.data.loading.DataSource.run_loaders`. A new data set is one loader function
``f(request) -> DataSource`` under ``@register_dataset("name")`` (kdgen's own and a user's
alike, the user's from a module named in the config's ``imports``); kdgen's own options,
if any, are the config's ``data.<name>`` section (``data.synthetic``, ``data.imagefolder``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import TYPE_CHECKING, Any

from kdgen.data.base import ImageDataset
from kdgen.data.loading import DataSource, Loader, LoaderSettings
from kdgen.data.split import ImageSplit, stratified_split, stratified_subset
from kdgen.data.tensors import Augment, DeviceLoader
from kdgen.data.torch_data import TorchData
from kdgen.errors import ConfigError

if TYPE_CHECKING:
    from kdgen.config import DataConfig

__all__ = [
    "Augment",
    "DataSource",
    "DeviceLoader",
    "ImageDataset",
    "ImageSplit",
    "Loader",
    "LoaderSettings",
    "SourceRequest",
    "TorchData",
    "list_datasets",
    "load_dataset",
    "load_source",
    "register_dataset",
    "stratified_split",
    "stratified_subset",
]


@dataclass(frozen=True)
class SourceRequest:
    """What a loader gets: where the data lives, the source's own ``options`` (the
    config's ``data.<name>``), and for sources that hold out the validation split when
    they index the data (``imagefolder``) its size and seed, and a hierarchy file."""

    root: str | None = None
    download: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    val_size: int = 0
    val_seed: int = 0
    hierarchy_file: str | None = None


SourceLoader = Callable[[SourceRequest], DataSource]

_LOADERS: dict[str, SourceLoader] = {}


def register_dataset(name: str) -> Callable[[SourceLoader], SourceLoader]:
    """Return a decorator that registers a loader ``f(request: SourceRequest) -> DataSource``
    (e.g. an :class:`ImageDataset`) as the data set ``name``: ``data.name=<name>``."""

    def decorator(loader: SourceLoader) -> SourceLoader:
        if name in _LOADERS:
            raise ValueError(f"data set name {name!r} is registered twice")
        _LOADERS[name] = loader
        return loader

    return decorator


@register_dataset("synthetic")
def _synthetic(request: SourceRequest) -> ImageDataset:
    from kdgen.data.synthetic import make_synthetic

    return make_synthetic(**request.options)


@register_dataset("cifar100")
def _cifar100(request: SourceRequest) -> ImageDataset:
    from kdgen.data.cifar import load_cifar100

    return load_cifar100(request.root, download=request.download)


@register_dataset("cifar10")
def _cifar10(request: SourceRequest) -> ImageDataset:
    from kdgen.data.cifar import load_cifar10

    return load_cifar10(request.root, download=request.download)


@register_dataset("fashion-mnist")
def _fashion_mnist(request: SourceRequest) -> ImageDataset:
    from kdgen.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(request.root)


@register_dataset("imagefolder")
def _imagefolder(request: SourceRequest) -> DataSource:
    from kdgen.data.imagefolder import load_image_folder

    if not request.root:
        raise ConfigError("data.name=imagefolder needs data.root=DIR (with train/ and val/)")
    return load_image_folder(
        request.root,
        val_size=request.val_size,
        seed=request.val_seed,
        hierarchy_file=request.hierarchy_file,
        **request.options,
    )


def list_datasets() -> list[str]:
    return sorted(_LOADERS)


def _loader(name: str) -> SourceLoader:
    if name not in _LOADERS:
        close = difflib.get_close_matches(name, list_datasets(), n=3, cutoff=0.4)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown data set '{name}'{hint} (available: {', '.join(list_datasets())}; "
            "your own: @kdgen.register_dataset in a module named in imports)"
        )
    return _LOADERS[name]


def load_dataset(
    name: str, root: str | None = None, download: bool = False, **options: Any
) -> ImageDataset:
    """Load a registered in-memory data set by name; ``options`` go to its loader (the
    synthetic set's generator arguments)."""
    source = _loader(name)(SourceRequest(root, download, options))
    if not isinstance(source, ImageDataset):
        raise ConfigError(f"data set '{name}' is read from disk as it is used, not held in memory")
    return source


def source_options(data: DataConfig) -> dict[str, Any]:
    """The configured source's own options: the config's ``data.<name>`` section."""
    section = getattr(data, data.name.replace("-", "_"), None)
    return asdict(section) if is_dataclass(section) and not isinstance(section, type) else {}


def load_source(data: DataConfig, val_seed: int) -> DataSource:
    """The data source a run's ``data`` config names (``val_seed`` chooses the validation
    split of sources that hold it out when indexing)."""
    request = SourceRequest(
        data.root,
        data.download,
        source_options(data),
        val_size=data.val_size,
        val_seed=val_seed,
        hierarchy_file=data.hierarchy,
    )
    return _loader(data.name)(request)

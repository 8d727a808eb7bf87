"""The interface every data source gives a run: loaders and a class hierarchy.

A source is what the registry (:func:`kdgen.data.load_source`) returns: an in-memory
:class:`~kdgen.data.ImageDataset` or an image folder
(:class:`~kdgen.data.imagefolder.FolderData`). Each has ``class_names``, ``num_classes``,
``in_channels``, ``image_size``, :meth:`class_hierarchy` and :meth:`run_loaders`, which
turns one :class:`LoaderSettings` into the training loader and the evaluation loaders.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from kdgen.data.tensors import Augment
from kdgen.errors import ConfigError

if TYPE_CHECKING:
    from kdgen.data.hierarchy import Hierarchy


class Loader(Protocol):
    """Batches ``(images, labels)`` on ``device``; the generation and the epoch, which
    decide a training loader's stream, are set before iterating."""

    device: torch.device
    batch_size: int

    def set_epoch(self, epoch: int) -> None: ...

    def set_generation(self, generation: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass(frozen=True)
class LoaderSettings:
    """How one run reads its source. ``batch_size`` and ``eval_batch_size`` are this
    rank's shares of the global batches (``global_batch_size`` names the configured one in
    messages); ``shard`` is ``(rank, world_size)``. The training subset and the validation
    split are chosen by ``subset_seed`` and ``val_seed``; the epoch orders by ``seed``.
    ``train_eval_max`` > 0 adds a ``"train_eval"`` evaluation split: at most that many
    training images, stratified and chosen by ``train_eval_seed``, without augmentation."""

    batch_size: int
    eval_batch_size: int
    device: torch.device
    seed: int = 0
    generation: int = 0
    global_batch_size: int | None = None
    train_subset: int | None = None
    subset_seed: int = 0
    val_size: int = 0
    val_seed: int = 0
    augment: Augment = field(default_factory=Augment)
    channels_last: bool = False
    shard: tuple[int, int] = (0, 1)
    train_eval_max: int = 0
    train_eval_seed: int = 0

    def check_batch(self, train_images: int) -> None:
        """ConfigError when the global batch exceeds the training images."""
        batch = self.global_batch_size or self.batch_size
        if batch > train_images:
            raise ConfigError(f"data.batch_size={batch} exceeds the {train_images} training images")


class DataSource(Protocol):
    """What a run needs from a data source (see the module docstring)."""

    class_names: list[str]

    @property
    def num_classes(self) -> int: ...

    @property
    def in_channels(self) -> int: ...

    @property
    def image_size(self) -> int | tuple[int, int]: ...

    def class_hierarchy(self, hierarchy_file: str | None = None) -> Hierarchy | None: ...

    def run_loaders(self, settings: LoaderSettings) -> tuple[Loader, dict[str, Loader]]: ...

"""The in-memory data set every kdgen data source produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from kdgen.errors import DataError

if TYPE_CHECKING:
    from kdgen.data.hierarchy import Hierarchy
    from kdgen.data.loading import LoaderSettings
    from kdgen.data.tensors import DeviceLoader


@dataclass
class ImageSplit:
    """Images as a uint8 tensor (N, C, H, W) and labels as an int64 tensor (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"images must be a uint8 tensor of shape (N, C, H, W), got "
                f"{self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"labels must be int64 of shape ({self.images.shape[0]},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> ImageSplit:
        return ImageSplit(self.images[index], self.labels[index])


@dataclass
class ImageDataset:
    """A labelled image data set held in memory, with its class hierarchy where known.

    ``coarse_of_fine[c]`` is the coarse class of fine class ``c`` (a two-level hierarchy);
    ``None`` where the data set has no known hierarchy.
    """

    name: str
    train: ImageSplit
    test: ImageSplit
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    coarse_of_fine: list[int] | None = None
    coarse_names: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        num_classes = len(self.class_names)
        for split_name, split in (("train", self.train), ("test", self.test)):
            if split.images.shape[1:] != self.train.images.shape[1:]:
                raise DataError(
                    f"{self.name}: {split_name} images have shape {tuple(split.images.shape[1:])}, "
                    f"expected {tuple(self.train.images.shape[1:])}"
                )
            if len(split) and (
                int(split.labels.min()) < 0 or int(split.labels.max()) >= num_classes
            ):
                raise DataError(
                    f"{self.name}: {split_name} labels must lie in [0, {num_classes - 1}], found "
                    f"[{int(split.labels.min())}, {int(split.labels.max())}]"
                )
        channels = self.train.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(f"{self.name}: mean/std need {channels} values, one per channel")
        if self.coarse_of_fine is not None and len(self.coarse_of_fine) != num_classes:
            raise DataError(
                f"{self.name}: coarse_of_fine has {len(self.coarse_of_fine)} entries for "
                f"{num_classes} classes"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])

    def class_hierarchy(self, hierarchy_file: str | None = None) -> Hierarchy | None:
        """The hierarchy of Dist^C and Dist^S: a user's JSON file, else the data set's
        coarse classes (None without either)."""
        from kdgen.data.hierarchy import Hierarchy

        if hierarchy_file:
            return Hierarchy.from_json(hierarchy_file, self.class_names)
        if self.coarse_of_fine is None:
            return None
        return Hierarchy.from_coarse(self.coarse_of_fine, self.class_names, self.coarse_names)

    def run_loaders(self, settings: LoaderSettings) -> tuple[DeviceLoader, dict[str, DeviceLoader]]:
        """See :func:`kdgen.data.loading.memory_loaders`."""
        from kdgen.data.loading import memory_loaders

        return memory_loaders(self, settings)

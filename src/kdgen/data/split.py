"""A split of images, and the stratified, seeded hold-out of a validation split.

:func:`stratified_indices` is the rule on labels alone, so a source that indexes its
images without reading them (``imagefolder``) selects exactly what an in-memory set does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdgen.errors import DataError


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


def stratified_indices(
    labels: torch.Tensor, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_index, val_index)``, each sorted: ``val_size`` items held out, the same
    share of every class, chosen by ``seed``.

    Each class gives ``round(val_size * n_c / N)`` items; the rounding remainder is taken
    from the classes with the largest fractional parts, so the total is exact.
    """
    count = len(labels)
    if not 0 <= val_size < count:
        raise DataError(
            f"data.val_size={val_size} must lie in [0, {count - 1}] for a training set of {count}"
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    classes, counts = torch.unique(shuffled, return_counts=True)
    quota = counts.double() * val_size / count
    take = quota.floor().long()
    remainder = val_size - int(take.sum())
    if remainder:
        take[torch.argsort(quota - take, descending=True, stable=True)[:remainder]] += 1
    class_quota = torch.zeros(int(shuffled.max()) + 1, dtype=torch.long)
    class_quota[classes] = take
    is_val = _rank_within_class(shuffled) < class_quota[shuffled]
    return order[~is_val].sort().values, order[is_val].sort().values


def _rank_within_class(labels: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions hold the same label."""
    by_label = torch.argsort(labels, stable=True)
    sorted_labels = labels[by_label]
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.empty_like(labels)
    rank[by_label] = torch.arange(len(labels)) - starts
    return rank


def stratified_split(split: ImageSplit, val_size: int, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """Split off ``val_size`` images, the same share of every class, chosen by ``seed``
    (see :func:`stratified_indices`)."""
    train_index, val_index = stratified_indices(split.labels, val_size, seed)
    return split.subset(train_index), split.subset(val_index)


def stratified_choice(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """The sorted indices of a stratified random subset of ``size`` items chosen by ``seed``
    (the held-out part of :func:`stratified_indices`); every index when ``size`` is not
    smaller than the set."""
    if size >= len(labels):
        return torch.arange(len(labels))
    return stratified_indices(labels, size, seed)[1]


def stratified_subset(split: ImageSplit, size: int, seed: int) -> ImageSplit:
    """A stratified random subset of ``size`` images (for training on part of a data set)."""
    if size >= len(split):
        return split
    return split.subset(stratified_choice(split.labels, size, seed))

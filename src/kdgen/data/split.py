"""Hold out a stratified, seeded validation split from the training set."""

from __future__ import annotations

import torch

from kdgen.data.base import ImageSplit
from kdgen.errors import DataError


def stratified_split(split: ImageSplit, val_size: int, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """Split off ``val_size`` images, the same share of every class, chosen by ``seed``.

    Each class gives ``round(val_size * n_c / N)`` images; the rounding remainder is
    taken from the classes with the largest fractional parts, so the total is exact.
    """
    count = len(split)
    if not 0 <= val_size < count:
        raise DataError(
            f"data.val_size={val_size} must lie in [0, {count - 1}] for a training set of {count}"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator)
    labels = split.labels[order]
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.double() * val_size / count
    take = quota.floor().long()
    remainder = val_size - int(take.sum())
    if remainder:
        take[torch.argsort(quota - take, descending=True, stable=True)[:remainder]] += 1
    rank_in_class = _rank_within_class(labels)
    class_quota = torch.zeros(int(labels.max()) + 1, dtype=torch.long)
    class_quota[classes] = take
    is_val = rank_in_class < class_quota[labels]
    train_index, val_index = order[~is_val].sort().values, order[is_val].sort().values
    return split.subset(train_index), split.subset(val_index)


def _rank_within_class(labels: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions hold the same label."""
    by_label = torch.argsort(labels, stable=True)
    sorted_labels = labels[by_label]
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.empty_like(labels)
    rank[by_label] = torch.arange(len(labels)) - starts
    return rank


def stratified_subset(split: ImageSplit, size: int, seed: int) -> ImageSplit:
    """A stratified random subset of ``size`` images (for training on part of a data set)."""
    if size >= len(split):
        return split
    _, subset = stratified_split(split, size, seed)
    return subset

"""Any map-style torch ``Dataset`` of ``(input, label)`` pairs as a kdgen data source.

Inputs need not be images: whatever the items collate to (a feature vector, a sequence,
an image) is what the model gets. The user's own transforms run inside the items; the
batches come from :class:`~kdgen.data.dataset_loader.DatasetLoader`, so their order and
every transform's draws from torch's generator depend on (seed, generation, epoch) alone,
as with the built-in sources. The validation split and the ``train_eval`` subset are
held out of the training items by the in-memory sets' stratified rule
(:mod:`kdgen.data.split`), chosen by the seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from kdgen.data.dataset_loader import DatasetLoader
from kdgen.data.hierarchy import Hierarchy
from kdgen.data.loading import LoaderSettings
from kdgen.data.split import stratified_choice, stratified_indices
from kdgen.errors import DataError

DESCRIPTION_PREFIX = "<user TorchData"


@dataclass
class TorchData:
    """Map-style datasets whose items are ``(input, label)``, labels in ``[0, num_classes)``.

    ``train`` and ``test`` are read as given (with their own transforms). ``val_size``
    training items, stratified and chosen by the seed, are held out as the validation
    split. ``eval_train``, if given, is the training set read without training-time
    augmentation (the same items in the same order as ``train``): the validation split
    and the ``train_eval`` subset are read from it; without it they read ``train`` as
    given. ``classes`` names the classes (default ``"0"``, ``"1"``, ...); ``hierarchy``,
    a :class:`~kdgen.data.hierarchy.Hierarchy` or a JSON file in the format of
    ``data.hierarchy``, gives Dist^C and Dist^S. ``workers`` DataLoader processes read
    the items (0: the training process itself, best for tensors held in memory).

    The labels are read once, here: from a ``targets`` attribute (torchvision's datasets
    have one) or a ``TensorDataset``'s label tensor, else by reading every item.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    val_size: int = 0
    classes: Sequence[str] | None = None
    hierarchy: Hierarchy | str | Path | None = None
    eval_train: Dataset | None = None
    workers: int = 0
    train_labels: torch.Tensor = field(init=False, repr=False)
    test_labels: torch.Tensor = field(init=False, repr=False)
    input_shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise DataError(f"TorchData: num_classes={self.num_classes} must be at least 2")
        if self.val_size < 0 or self.workers < 0:
            raise DataError("TorchData: val_size and workers must be >= 0")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise DataError(
                f"TorchData: {len(self.classes)} class names for num_classes={self.num_classes}"
            )
        self.train_labels = dataset_labels(self.train, self.num_classes, "train")
        self.test_labels = dataset_labels(self.test, self.num_classes, "test")
        if self.eval_train is not None and len(self.eval_train) != len(self.train):  # type: ignore[arg-type]
            raise DataError(
                f"TorchData: eval_train has {len(self.eval_train)} items, train "  # type: ignore[arg-type]
                f"{len(self.train_labels)}; it must be the same items, read without augmentation"
            )
        self.input_shape = tuple(torch.as_tensor(_item(self.train, 0, "train")[0]).shape)

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.classes] if self.classes else _default_names(self)

    @property
    def in_channels(self) -> int:
        """The size of an input's first dimension: an image's channels, a row's features."""
        return self.input_shape[0] if self.input_shape else 1

    def describe(self) -> str:
        """What kdgen records of this source, in config.yaml and summary.json, marked as a
        user object: the datasets' types and sizes, the number of classes and a digest of
        every label (the inputs and transforms are not recorded)."""
        return (
            f"{DESCRIPTION_PREFIX}: train {_kind(self.train)} of {len(self.train_labels)}, "
            f"test {_kind(self.test)} of {len(self.test_labels)}, "
            f"{self.num_classes} classes, labels {self.labels_digest()}>"
        )

    def labels_digest(self) -> str:
        """The first 12 hex digits of the sha256 of the training then the test labels."""
        digest = hashlib.sha256()
        for labels in (self.train_labels, self.test_labels):
            digest.update(labels.numpy().astype("<i8").tobytes())
            digest.update(b"|")
        return digest.hexdigest()[:12]

    def class_hierarchy(self, hierarchy_file: str | None = None) -> Hierarchy | None:
        """The hierarchy of Dist^C and Dist^S: ``hierarchy_file`` (the config's
        ``data.hierarchy``) if given, else this source's ``hierarchy``."""
        source = hierarchy_file or self.hierarchy
        if source is None or isinstance(source, Hierarchy):
            return source
        return Hierarchy.from_json(source, self.class_names)

    def run_loaders(
        self, settings: LoaderSettings
    ) -> tuple[DatasetLoader, dict[str, DatasetLoader]]:
        """The shuffled training loader over the training items less the validation split
        (of the ``settings.train_subset`` chosen first, if any), and the evaluation loaders
        ``"val"`` (when ``settings.val_size`` > 0), ``"test"`` and, with
        ``settings.train_eval_max``, ``"train_eval"``."""
        labels = self.train_labels
        index = torch.arange(len(labels))
        if settings.train_subset is not None:
            index = stratified_choice(labels, settings.train_subset, settings.subset_seed)
        held_out = self.eval_train if self.eval_train is not None else self.train
        splits: dict[str, Dataset] = {}
        if settings.val_size > 0:
            kept, val = stratified_indices(labels[index], settings.val_size, settings.val_seed)
            splits["val"] = Subset(held_out, index[val].tolist())
            index = index[kept]
        splits["test"] = self.test
        if settings.train_eval_max > 0:
            chosen = stratified_choice(
                labels[index], settings.train_eval_max, settings.train_eval_seed
            )
            splits["train_eval"] = Subset(held_out, index[chosen].tolist())
        settings.check_batch(len(index))
        common: dict[str, Any] = {
            "device": settings.device,
            "seed": settings.seed,
            "generation": settings.generation,
            "channels_last": settings.channels_last,
            "workers": self.workers,
            "shard": settings.shard,
        }
        train = Subset(self.train, index.tolist())
        train_loader = DatasetLoader(train, settings.batch_size, shuffle=True, **common)
        evals = {
            name: DatasetLoader(split, settings.eval_batch_size, **common)
            for name, split in splits.items()
        }
        return train_loader, evals


def _default_names(data: TorchData) -> list[str]:
    return [str(label) for label in range(data.num_classes)]


def _kind(dataset: Dataset) -> str:
    return type(dataset).__name__


def _item(dataset: Dataset, index: int, name: str) -> tuple[Any, Any]:
    """Item ``index`` of a dataset, which must be an ``(input, label)`` pair."""
    with torch.random.fork_rng(devices=[]):  # its random transforms leave no trace
        item = dataset[index]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise DataError(
            f"TorchData: {name}[{index}] is {type(item).__name__}; every item must be an "
            "(input, label) pair"
        )
    return item[0], item[1]


def _stored_labels(dataset: Dataset) -> torch.Tensor | None:
    """The labels a dataset holds without reading its items, if it does."""
    if isinstance(dataset, Subset):
        parent = _stored_labels(dataset.dataset)
        return None if parent is None else parent[torch.as_tensor(dataset.indices)]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[1]
    targets = getattr(dataset, "targets", None)
    if targets is not None and getattr(dataset, "target_transform", None) is None:
        return torch.as_tensor(targets)
    return None


def dataset_labels(dataset: Dataset, num_classes: int, name: str) -> torch.Tensor:
    """Every label of ``dataset`` as an int64 tensor, checked: integers in
    ``[0, num_classes)``, one per item (see :class:`TorchData` for where they are read)."""
    count = len(dataset)  # type: ignore[arg-type]
    if count == 0:
        raise DataError(f"TorchData: {name} holds no items")
    labels = _stored_labels(dataset)
    if labels is None:
        labels = torch.as_tensor([_label(_item(dataset, i, name)[1]) for i in range(count)])
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != (count,):
        raise DataError(
            f"TorchData: {name} labels must be {count} integers (class indices), got "
            f"{labels.dtype} of shape {tuple(labels.shape)}"
        )
    labels = labels.long()
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"TorchData: {name} labels must lie in [0, {num_classes - 1}] "
            f"(num_classes={num_classes}), found [{low}, {high}]"
        )
    return labels


def _label(value: Any) -> int:
    label = torch.as_tensor(value)
    if label.numel() != 1 or label.dtype.is_floating_point:
        raise DataError(f"TorchData: a label must be one integer, got {value!r}")
    return int(label)

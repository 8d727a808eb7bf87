"""The ``imagefolder`` data source: images in class folders, read from disk as they are used.

The layout is ILSVRC2012's (and any user's data set in that shape)::

    root/train/<class>/*.JPEG     the training images
    root/val/<class>/*            the held-out images: this source's *test* split

Class names are the folder names, sorted; when they are WordNet ids (``n01440764``) and
WordNet 3.0 is installed, the class hierarchy comes from WordNet (or from a JSON file
given by the caller). A validation split for selection is carved out of train/ by the
in-memory sets' rule (:func:`kdgen.data.split.stratified_indices`). Training images get a
random-resized crop and a flip, evaluation images a resize to ``size * 256 / 224`` and a
centre crop (ImageNet's recipe); both are normalised on the CPU workers.
:class:`~kdgen.data.dataset_loader.DatasetLoader` serves the batches: their order and the
random crops and flips are a pure function of (seed, generation, epoch).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2

from kdgen.data.dataset_loader import DatasetLoader
from kdgen.data.hierarchy import Hierarchy, looks_like_wnids, wordnet_hierarchy
from kdgen.data.loading import LoaderSettings
from kdgen.data.split import stratified_choice, stratified_indices
from kdgen.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_DEFAULT_WORKERS = 4


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it), the
    number torch's DataLoader compares its workers with."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers() -> int:
    """``data.imagefolder.workers=null``: 4 DataLoader workers, or one per usable core
    when there are fewer (more workers than cores only contend, and torch warns)."""
    return min(MAX_DEFAULT_WORKERS, usable_cores())


def train_transform(
    size: int = 224,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> Callable[[Any], torch.Tensor]:
    """RandomResizedCrop(size) + RandomHorizontalFlip, then a normalised float tensor."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, antialias=True),
            v2.RandomHorizontalFlip(),
            *_to_normalised_tensor(mean, std),
        ]
    )


def eval_transform(
    size: int = 224,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> Callable[[Any], torch.Tensor]:
    """Resize(int(size * 256 / 224)) + CenterCrop(size), then a normalised float tensor."""
    return v2.Compose(
        [
            v2.Resize(int(size * 256 / 224), antialias=True),
            v2.CenterCrop(size),
            *_to_normalised_tensor(mean, std),
        ]
    )


def _to_normalised_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> list[Any]:
    """ToTensor + Normalize in transforms.v2 terms, ending in a plain tensor."""
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
        v2.ToPureTensor(),
    ]


class Transformed(Dataset):
    """``(transform(image), label)`` of each item of a ``Subset`` of an ``ImageFolder``;
    an unreadable image raises :class:`DataError` naming the file."""

    def __init__(self, subset: Subset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.subset = subset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.subset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        folder: datasets.ImageFolder = self.subset.dataset  # type: ignore[assignment]
        path, label = folder.samples[self.subset.indices[index]]
        try:
            image = folder.loader(path)
        except (OSError, ValueError) as error:
            raise DataError(
                f"cannot read image {path} ({type(error).__name__}: {error}); "
                "replace or delete the file"
            ) from None
        return self.transform(image), label


@dataclass
class FolderData:
    """A folder data set: the splits as ``Subset``s of torchvision ``ImageFolder``s (no
    transform; :meth:`loaders` adds them), the classes and the normalisation."""

    root: Path
    train: Subset
    val: Subset | None
    test: Subset
    class_names: list[str]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hierarchy: Hierarchy | None = None
    workers: int = MAX_DEFAULT_WORKERS

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return 3

    def loaders(
        self,
        batch_size: int,
        eval_batch_size: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        generation: int = 0,
        channels_last: bool = True,
        shard: tuple[int, int] = (0, 1),
        train_eval: tuple[int, int] = (0, 0),
    ) -> tuple[DatasetLoader, dict[str, DatasetLoader]]:
        """The shuffled, augmented training loader and the evaluation loaders: ``"val"``
        (only when a validation split was held out), ``"test"`` and, when ``train_eval`` =
        (at most this many images, seed) asks for it, ``"train_eval"``: a stratified subset
        of the training images read with the evaluation transform."""
        if batch_size > len(self.train):
            raise DataError(
                f"data.batch_size={batch_size} exceeds the {len(self.train)} training images"
            )
        common: dict[str, Any] = {
            "device": device,
            "seed": seed,
            "generation": generation,
            "channels_last": channels_last,
            "workers": self.workers,
            "shard": shard,
        }
        augment = train_transform(self.image_size, self.mean, self.std)
        evaluate = eval_transform(self.image_size, self.mean, self.std)
        train = DatasetLoader(Transformed(self.train, augment), batch_size, shuffle=True, **common)
        splits = {"val": self.val, "test": self.test, "train_eval": self._train_eval(*train_eval)}
        evals = {
            name: DatasetLoader(Transformed(split, evaluate), eval_batch_size, **common)
            for name, split in splits.items()
            if split is not None
        }
        return train, evals

    def _train_eval(self, most: int, seed: int) -> Subset | None:
        if most <= 0:
            return None
        if most >= len(self.train):
            return self.train
        labels = torch.tensor([self.train.dataset.targets[i] for i in self.train.indices])
        chosen = stratified_choice(labels, most, seed)
        return Subset(self.train.dataset, [self.train.indices[i] for i in chosen.tolist()])

    def class_hierarchy(self, hierarchy_file: str | None = None) -> Hierarchy | None:
        """The hierarchy read when the folder was indexed (from ``hierarchy_file``, or
        WordNet); see :func:`load_image_folder`."""
        return self.hierarchy

    def run_loaders(
        self, settings: LoaderSettings
    ) -> tuple[DatasetLoader, dict[str, DatasetLoader]]:
        """:meth:`loaders` for one run; the validation split was held out at indexing."""
        if settings.train_subset is not None:
            raise ConfigError("data.train_subset is not supported for imagefolder data")
        settings.check_batch(len(self.train))
        return self.loaders(
            settings.batch_size,
            settings.eval_batch_size,
            settings.device,
            settings.seed,
            settings.generation,
            settings.channels_last,
            settings.shard,
            (settings.train_eval_max, settings.train_eval_seed),
        )


def load_image_folder(
    root: str | Path,
    *,
    image_size: int = 224,
    val_size: int = 0,
    seed: int = 0,
    workers: int | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    hierarchy_file: str | Path | None = None,
) -> FolderData:
    """Index ``root/train`` and ``root/val`` (no image is read here) and hold out
    ``val_size`` training images, stratified, chosen by ``seed``.

    The hierarchy is read from ``hierarchy_file`` (see :meth:`Hierarchy.from_json`) when
    given, else from WordNet when the class names are WordNet ids (None, with a warning,
    when WordNet is not installed), else None (with a warning: Dist^C and Dist^S are then
    null). ``workers`` None is :func:`default_workers`.
    """
    root = Path(root).expanduser()
    if image_size < 1 or len(mean) != 3 or len(std) != 3:
        raise DataError("imagefolder needs image_size >= 1 and 3 values each of mean and std")
    if not root.is_dir():
        raise DataError(f"imagefolder root {root} does not exist; point data.root at it")
    train_folder = _scan(root, "train")
    test_folder = _scan(root, "val")
    if train_folder.classes != test_folder.classes:
        raise DataError(_class_mismatch(root, train_folder.classes, test_folder.classes))
    labels = torch.tensor(train_folder.targets, dtype=torch.int64)
    train_index, val_index = stratified_indices(labels, val_size, seed)
    names = list(train_folder.classes)
    return FolderData(
        root=root,
        train=Subset(train_folder, train_index.tolist()),
        val=Subset(train_folder, val_index.tolist()) if val_size > 0 else None,
        test=Subset(test_folder, list(range(len(test_folder)))),
        class_names=names,
        image_size=image_size,
        mean=tuple(mean),
        std=tuple(std),
        hierarchy=_hierarchy(names, hierarchy_file),
        workers=default_workers() if workers is None else workers,
    )


def _scan(root: Path, split: str) -> datasets.ImageFolder:
    """The ImageFolder of ``root/split``, every class folder holding at least one image."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(
            f"imagefolder: {folder} is missing; the layout is {root}/train/<class>/<images> "
            f"and {root}/val/<class>/<images>"
        )
    try:
        data = datasets.ImageFolder(str(folder), allow_empty=True)
    except (FileNotFoundError, OSError) as error:
        raise DataError(
            f"imagefolder: cannot index {folder} ({error}); it needs one sub-folder per class"
        ) from None
    counts = torch.bincount(
        torch.tensor(data.targets, dtype=torch.int64), minlength=len(data.classes)
    )
    empty = [name for name, n in zip(data.classes, counts.tolist(), strict=True) if n == 0]
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DataError(
            f"imagefolder: {len(empty)} class folder(s) of {folder} hold no images: {shown}; "
            "add images (.jpg, .jpeg, .png, ...) or remove the folders"
        )
    return data


def _class_mismatch(root: Path, train: list[str], test: list[str]) -> str:
    only_train = sorted(set(train) - set(test))[:5]
    only_test = sorted(set(test) - set(train))[:5]
    return (
        f"imagefolder: {root}/train and {root}/val hold different classes (only in train: "
        f"{only_train}, only in val: {only_test}); give both the same class folders"
    )


def _hierarchy(names: list[str], hierarchy_file: str | Path | None) -> Hierarchy | None:
    if hierarchy_file is not None:
        return Hierarchy.from_json(hierarchy_file, names)
    if looks_like_wnids(names):
        return wordnet_hierarchy(names)
    warnings.warn(
        "imagefolder: no class hierarchy for these class names, so Dist^C/Dist^S are null; "
        'give one with data.hierarchy=FILE.json ({"class": "parent or coarse label", ...})',
        stacklevel=3,
    )
    return None

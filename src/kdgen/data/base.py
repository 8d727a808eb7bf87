"""The in-memory data set (synthetic, CIFAR, Fashion-MNIST) and its loaders."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdgen.data.hierarchy import Hierarchy
from kdgen.data.loading import LoaderSettings
from kdgen.data.split import ImageSplit, stratified_split, stratified_subset
from kdgen.data.tensors import DeviceLoader
from kdgen.errors import DataError


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
        if hierarchy_file:
            return Hierarchy.from_json(hierarchy_file, self.class_names)
        if self.coarse_of_fine is None:
            return None
        return Hierarchy.from_coarse(self.coarse_of_fine, self.class_names, self.coarse_names)

    def run_loaders(self, settings: LoaderSettings) -> tuple[DeviceLoader, dict[str, DeviceLoader]]:
        """The (subset of the) training split less a stratified validation split, shuffled
        and augmented on the device; and the evaluation loaders ``"val"``, ``"test"`` and,
        with ``settings.train_eval_max``, ``"train_eval"`` (training images, not augmented)."""
        train = self.train
        if settings.train_subset is not None:
            train = stratified_subset(train, settings.train_subset, settings.subset_seed)
        eval_splits = {}
        if settings.val_size > 0:
            train, eval_splits["val"] = stratified_split(
                train, settings.val_size, settings.val_seed
            )
        eval_splits["test"] = self.test
        if settings.train_eval_max > 0:
            eval_splits["train_eval"] = stratified_subset(
                train, settings.train_eval_max, settings.train_eval_seed
            )
        settings.check_batch(len(train))
        common = {
            "mean": self.mean,
            "std": self.std,
            "device": settings.device,
            "channels_last": settings.channels_last,
            "shard": settings.shard,
        }
        train_loader = DeviceLoader(
            train,
            settings.batch_size,
            shuffle=True,
            seed=settings.seed,
            generation=settings.generation,
            augment=settings.augment,
            **common,
        )
        eval_loaders = {
            name: DeviceLoader(split, settings.eval_batch_size, **common)
            for name, split in eval_splits.items()
        }
        return train_loader, eval_loaders

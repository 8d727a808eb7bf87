"""Tests of kdgen.data: the synthetic set, stratified splits, the device loader and its
augmentations, the data set registry and the container's validation."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdgen.data import list_datasets, load_dataset
from kdgen.data.base import ImageDataset
from kdgen.data.split import ImageSplit, stratified_split, stratified_subset
from kdgen.data.synthetic import make_synthetic
from kdgen.data.tensors import (
    Augment,
    DeviceLoader,
    crop,
    crop_offsets,
    epoch_generator,
    flip,
    flip_mask,
)
from kdgen.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def synthetic() -> ImageDataset:
    return make_synthetic(train_per_class=8, test_per_class=4, seed=0)


def _split(count: int, labels: torch.Tensor | None = None, size: int = 4) -> ImageSplit:
    """Random images; label i = image i unless labels are given."""
    generator = torch.Generator().manual_seed(count)
    images = torch.randint(1, 256, (count, 3, size, size), generator=generator, dtype=torch.uint8)
    return ImageSplit(images, torch.arange(count) if labels is None else labels)


# ---------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_hierarchy(synthetic: ImageDataset) -> None:
    assert synthetic.train.images.shape == (800, 3, 32, 32)
    assert synthetic.test.images.shape == (400, 3, 32, 32)
    assert synthetic.train.images.dtype == torch.uint8
    assert synthetic.train.labels.dtype == torch.int64
    assert synthetic.num_classes == 100
    assert synthetic.coarse_of_fine is not None and synthetic.coarse_names is not None
    assert len(synthetic.coarse_names) == 20
    assert sorted(set(synthetic.coarse_of_fine)) == list(range(20))
    assert all(synthetic.coarse_of_fine.count(c) == 5 for c in range(20))
    assert synthetic.in_channels == 3 and synthetic.image_size == (32, 32)
    # Balanced labels in both splits.
    assert torch.bincount(synthetic.train.labels, minlength=100).tolist() == [8] * 100
    assert torch.bincount(synthetic.test.labels, minlength=100).tolist() == [4] * 100


def test_synthetic_mean_std_match_train_images(synthetic: ImageDataset) -> None:
    pixels = synthetic.train.images.float() / 255
    assert torch.allclose(torch.tensor(synthetic.mean), pixels.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(torch.tensor(synthetic.std), pixels.std(dim=(0, 2, 3)), atol=1e-5)
    # Images use the range: neither constant nor saturated.
    assert min(synthetic.std) > 0.2 and max(synthetic.mean) < 0.8


def test_synthetic_is_deterministic_per_seed(synthetic: ImageDataset) -> None:
    again = make_synthetic(train_per_class=8, test_per_class=4, seed=0)
    for a, b in ((synthetic.train, again.train), (synthetic.test, again.test)):
        assert torch.equal(a.images, b.images)
        assert torch.equal(a.labels, b.labels)
    other = make_synthetic(train_per_class=8, test_per_class=4, seed=1)
    assert not torch.equal(synthetic.train.images, other.train.images)
    assert not torch.equal(synthetic.test.images, other.test.images)


def test_synthetic_train_and_test_differ(synthetic: ImageDataset) -> None:
    assert not torch.equal(synthetic.train.images[:400], synthetic.test.images)


def _class_means(split: ImageSplit, num_classes: int) -> torch.Tensor:
    pixels = split.images.flatten(1).float() / 255
    return torch.stack([pixels[split.labels == c].mean(0) for c in range(num_classes)])


def test_synthetic_siblings_are_closer_than_other_classes(synthetic: ImageDataset) -> None:
    means = _class_means(synthetic.train, 100)
    distance = torch.cdist(means, means)
    coarse = torch.tensor(synthetic.coarse_of_fine)
    sibling = (coarse[:, None] == coarse[None, :]) & ~torch.eye(100, dtype=torch.bool)
    other = coarse[:, None] != coarse[None, :]
    per_class_sibling = (distance * sibling).sum(1) / sibling.sum(1)
    per_class_other = (distance * other).sum(1) / other.sum(1)
    assert per_class_sibling.mean() < 0.8 * per_class_other.mean()
    assert (per_class_sibling < per_class_other).float().mean() > 0.9


def test_synthetic_nearest_class_mean_is_hard_but_above_chance(synthetic: ImageDataset) -> None:
    means = _class_means(synthetic.train, 100)
    test_pixels = synthetic.test.images.flatten(1).float() / 255
    predicted = torch.cdist(test_pixels, means).argmin(1)
    labels = synthetic.test.labels
    fine_accuracy = (predicted == labels).float().mean().item()
    coarse = torch.tensor(synthetic.coarse_of_fine)
    coarse_accuracy = (coarse[predicted] == coarse[labels]).float().mean().item()
    assert 0.08 < fine_accuracy < 0.8  # chance is 0.01
    assert coarse_accuracy > max(0.5, fine_accuracy + 0.2)  # confusions stay among siblings


def test_synthetic_options_change_the_task() -> None:
    easy = make_synthetic(2, 1, seed=0, noise=0.0, nuisance=0.0, max_shift=0)
    hard = make_synthetic(2, 1, seed=0)
    assert easy.train.images.shape == hard.train.images.shape == (200, 3, 32, 32)
    assert not torch.equal(easy.train.images, hard.train.images)


# ---------------------------------------------------------------------------- split


def _check_split(split: ImageSplit, val_size: int, seed: int) -> None:
    train, val = stratified_split(split, val_size, seed)
    count = len(split)
    assert len(val) == val_size and len(train) == count - val_size
    # Images encode their position: disjoint, covering and in the original order.
    ids_train = split_ids(train)
    ids_val = split_ids(val)
    assert sorted(ids_train + ids_val) == list(range(count))
    assert ids_train == sorted(ids_train) and ids_val == sorted(ids_val)
    assert torch.equal(train.labels, split.labels[ids_train])
    classes, counts = torch.unique(split.labels, return_counts=True)
    val_counts = torch.bincount(val.labels, minlength=int(split.labels.max()) + 1)
    for c, n in zip(classes.tolist(), counts.tolist(), strict=True):
        assert abs(val_counts[c].item() - val_size * n / count) < 1
    again_train, again_val = stratified_split(split, val_size, seed)
    assert split_ids(again_val) == ids_val and split_ids(again_train) == ids_train


def _indexed(labels: list[int]) -> ImageSplit:
    count = len(labels)
    ids = torch.arange(count)
    images = torch.stack([ids // 256, ids % 256], dim=1).to(torch.uint8).view(count, 1, 1, 2)
    return ImageSplit(images, torch.tensor(labels, dtype=torch.int64))


def split_ids(split: ImageSplit) -> list[int]:
    pair = split.images.view(len(split), 2).long()
    return (pair[:, 0] * 256 + pair[:, 1]).tolist()


def test_stratified_split_on_balanced_labels() -> None:
    split = _indexed([c for _ in range(30) for c in range(10)])
    _check_split(split, 50, seed=0)
    _, val = stratified_split(split, 50, seed=0)
    assert torch.bincount(val.labels).tolist() == [5] * 10


def test_stratified_split_on_unbalanced_labels() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 15 + [3] * 5
    _check_split(_indexed(labels), 20, seed=3)
    _, val = stratified_split(_indexed(labels), 20, seed=3)
    assert torch.bincount(val.labels).tolist() == [10, 6, 3, 1]


def test_stratified_split_depends_on_seed() -> None:
    split = _indexed([c for _ in range(20) for c in range(5)])
    a = split_ids(stratified_split(split, 25, seed=0)[1])
    b = split_ids(stratified_split(split, 25, seed=1)[1])
    assert a != b


def test_stratified_split_of_synthetic(synthetic: ImageDataset) -> None:
    train, val = stratified_split(synthetic.train, 200, seed=0)
    assert torch.bincount(val.labels, minlength=100).tolist() == [2] * 100
    assert len(train) == 600


@pytest.mark.parametrize("val_size", [-1, 12, 13, 100])
def test_stratified_split_size_out_of_range(val_size: int) -> None:
    with pytest.raises(DataError, match="val_size"):
        stratified_split(_indexed(list(range(12))), val_size, seed=0)


def test_stratified_split_zero() -> None:
    train, val = stratified_split(_indexed([0, 1, 0, 1]), 0, seed=0)
    assert len(val) == 0 and len(train) == 4


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 7), min_size=2, max_size=120),
    st.floats(0.0, 1.0, exclude_max=True),
    st.integers(0, 2**31),
)
def test_stratified_split_property(labels: list[int], fraction: float, seed: int) -> None:
    val_size = int(fraction * len(labels))
    _check_split(_indexed(labels), val_size, seed)


def test_stratified_subset() -> None:
    split = _indexed([c for _ in range(10) for c in range(4)])
    assert stratified_subset(split, 40, seed=0) is split
    assert stratified_subset(split, 100, seed=0) is split
    subset = stratified_subset(split, 20, seed=0)
    assert len(subset) == 20
    assert torch.bincount(subset.labels).tolist() == [5] * 4
    assert split_ids(subset) == split_ids(stratified_split(split, 20, seed=0)[1])


# ---------------------------------------------------------------------------- loader

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


def _loader(split: ImageSplit, batch_size: int, **kwargs: object) -> DeviceLoader:
    return DeviceLoader(split, batch_size, MEAN, STD, "cpu", **kwargs)  # type: ignore[arg-type]


def _epoch(loader: DeviceLoader, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def _labels_of(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[list[int]]:
    return [labels.tolist() for _, labels in batches]


def test_epoch_generator_is_a_pure_function() -> None:
    draw = [torch.rand(3, generator=epoch_generator(1, 2, 3)) for _ in range(2)]
    assert torch.equal(draw[0], draw[1])
    for other in ((1, 2, 4), (1, 3, 3), (2, 2, 3)):
        assert not torch.equal(draw[0], torch.rand(3, generator=epoch_generator(*other)))


def test_shuffled_epochs_are_deterministic_and_differ() -> None:
    split = _split(20)
    augment = Augment(crop_padding=1, flip=True)
    a = _loader(split, 4, shuffle=True, augment=augment, seed=5, generation=1)
    b = _loader(split, 4, shuffle=True, augment=augment, seed=5, generation=1)
    for epoch in (0, 3):
        first, second = _epoch(a, epoch), _epoch(b, epoch)
        assert _labels_of(first) == _labels_of(second)
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(first, second, strict=True))
    assert _labels_of(_epoch(a, 0)) != _labels_of(_epoch(a, 1))
    other_generation = _loader(split, 4, shuffle=True, seed=5, generation=2)
    assert _labels_of(_epoch(a, 0)) != _labels_of(_epoch(other_generation, 0))
    other_seed = _loader(split, 4, shuffle=True, seed=6, generation=1)
    assert _labels_of(_epoch(a, 0)) != _labels_of(_epoch(other_seed, 0))


def test_shuffled_loader_drops_last_partial_batch() -> None:
    loader = _loader(_split(10), 3, shuffle=True)
    batches = _epoch(loader)
    assert len(loader) == 3 and len(batches) == 3
    seen = [label for labels in _labels_of(batches) for label in labels]
    assert all(len(labels) == 3 for labels in _labels_of(batches))
    assert len(set(seen)) == 9 and set(seen) < set(range(10))


def test_eval_loader_keeps_every_image_in_order() -> None:
    split = _split(10)
    loader = _loader(split, 3)
    batches = _epoch(loader)
    assert len(loader) == 4
    assert _labels_of(batches) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    # Evaluation never augments, even if asked to.
    augmented = _loader(split, 3, augment=Augment(crop_padding=2, flip=True))
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(batches, _epoch(augmented), strict=True))


@pytest.mark.parametrize("shuffle", [False, True])
def test_normalization(shuffle: bool) -> None:
    split = _split(8)
    loader = _loader(split, 8, shuffle=shuffle, augment=Augment(crop_padding=0, flip=False))
    [(images, labels)] = _epoch(loader)
    raw = split.images[labels].float() / 255
    expected = (raw - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert images.dtype == torch.float32
    assert torch.allclose(images, expected, atol=1e-5)


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_layout(channels_last: bool) -> None:
    loader = _loader(_split(6), 3, channels_last=channels_last)
    images, _ = _epoch(loader)[0]
    assert images.shape == (3, 3, 4, 4)
    assert images.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert images.is_contiguous() != channels_last


def _crop_offsets(images: torch.Tensor, cropped: torch.Tensor, padding: int) -> list[set]:
    """Every offset at which each cropped image matches its zero-padded original."""
    height, width = images.shape[2:]
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    span = range(2 * padding + 1)
    return [
        {
            (r, c)
            for r, c in itertools.product(span, span)
            if torch.equal(padded[i, :, r : r + height, c : c + width], cropped[i])
        }
        for i in range(len(images))
    ]


# The loader's crop and flip, one batch at a time.
def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Crop each image of a batch at its own random offset in the padded image."""
    offsets = crop_offsets(images.shape[0], padding, generator, generator.device)
    return crop(images, padding, offsets.to(images.device))


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of a batch left-right with probability 1/2."""
    return flip(images, flip_mask(images.shape[0], generator, generator.device).to(images.device))


def test_random_crop_matches_a_slice_of_the_padded_image() -> None:
    images = _split(40, size=5).images  # values in [1, 255]: zeros can only be padding
    cropped = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert cropped.shape == images.shape and cropped.dtype == torch.uint8
    offsets = _crop_offsets(images, cropped, 2)
    assert all(len(found) == 1 for found in offsets)
    distinct = set().union(*offsets)
    assert len(distinct) > 5
    assert (cropped == 0).any()  # zero padding shows up
    again = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert torch.equal(cropped, again)


def test_random_crop_without_padding_is_identity() -> None:
    images = _split(4).images
    assert torch.equal(random_crop(images, 0, torch.Generator().manual_seed(0)), images)


def test_random_flip_rows_are_identical_or_mirrored() -> None:
    images = _split(64).images
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    same = [torch.equal(a, b) for a, b in zip(images, flipped, strict=True)]
    mirrored = [torch.equal(a.flip(-1), b) for a, b in zip(images, flipped, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 10 < sum(mirrored) < 54 and 10 < sum(same) < 54


def test_loader_augments_with_crop_and_flip() -> None:
    split = _split(16, size=6)
    plain = _loader(split, 16, shuffle=True, seed=1)
    augmented = _loader(split, 16, shuffle=True, seed=1, augment=Augment(crop_padding=1))
    (x, labels), (y, labels2) = _epoch(plain)[0], _epoch(augmented)[0]
    assert torch.equal(labels, labels2)
    assert not torch.allclose(x, y)
    # Padding pixels are zeros before normalisation, i.e. -mean/std after it.
    zero = (-torch.tensor(MEAN) / torch.tensor(STD)).view(1, 3, 1, 1)
    assert torch.isclose(y, zero.expand_as(y), atol=1e-5).all(dim=1).any()


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("augment", [Augment(0, False), Augment(2, True)])
def test_shards_split_the_global_batch(shuffle: bool, augment: Augment) -> None:
    split, batch_size, world = _split(23), 3, 2
    single = _loader(split, batch_size * world, shuffle=shuffle, augment=augment, seed=4)
    ranks = [
        _loader(split, batch_size, shuffle=shuffle, augment=augment, seed=4, shard=(r, world))
        for r in range(world)
    ]
    assert all(len(loader) == len(single) for loader in ranks)
    for epoch in (0, 1):
        expected = _epoch(single, epoch)
        per_rank = [_epoch(loader, epoch) for loader in ranks]
        for step, (images, labels) in enumerate(expected):
            assert torch.equal(torch.cat([batches[step][1] for batches in per_rank]), labels)
            assert torch.equal(torch.cat([batches[step][0] for batches in per_rank]), images)


# ---------------------------------------------------------------------------- containers


def test_image_split_validation() -> None:
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    labels = torch.zeros(4, dtype=torch.int64)
    assert len(ImageSplit(images, labels)) == 4
    with pytest.raises(DataError, match="uint8"):
        ImageSplit(images.float(), labels)
    with pytest.raises(DataError, match="uint8"):
        ImageSplit(images[:, 0], labels)
    with pytest.raises(DataError, match="int64"):
        ImageSplit(images, labels.int())
    with pytest.raises(DataError, match="int64"):
        ImageSplit(images, labels[:3])
    with pytest.raises(DataError, match="int64"):
        ImageSplit(images, labels.view(4, 1))


def _dataset(**changes: object) -> ImageDataset:
    values: dict[str, object] = {
        "name": "toy",
        "train": ImageSplit(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2, 3])),
        "test": ImageSplit(torch.zeros(2, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 3])),
        "class_names": ["a", "b", "c", "d"],
        "mean": (0.5, 0.5, 0.5),
        "std": (0.2, 0.2, 0.2),
        "coarse_of_fine": [0, 0, 1, 1],
    }
    values.update(changes)
    return ImageDataset(**values)  # type: ignore[arg-type]


def test_image_dataset_validation() -> None:
    dataset = _dataset()
    assert dataset.num_classes == 4 and dataset.in_channels == 3 and dataset.image_size == (2, 2)
    bad_test_labels = ImageSplit(torch.zeros(2, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 4]))
    with pytest.raises(DataError, match="test labels"):
        _dataset(test=bad_test_labels)
    negative = ImageSplit(torch.zeros(2, 3, 2, 2, dtype=torch.uint8), torch.tensor([-1, 0]))
    with pytest.raises(DataError, match="train labels"):
        _dataset(train=negative)
    other_shape = ImageSplit(torch.zeros(2, 3, 3, 3, dtype=torch.uint8), torch.tensor([0, 1]))
    with pytest.raises(DataError, match="shape"):
        _dataset(test=other_shape)
    with pytest.raises(DataError, match="mean/std"):
        _dataset(mean=(0.5,))
    with pytest.raises(DataError, match="coarse_of_fine"):
        _dataset(coarse_of_fine=[0, 1])
    empty = ImageSplit(
        torch.zeros(0, 3, 2, 2, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    )
    assert len(_dataset(test=empty).test) == 0


# ---------------------------------------------------------------------------- registry


def test_registry_lists_and_loads_synthetic() -> None:
    assert {"synthetic", "cifar100", "fashion-mnist"} <= set(list_datasets())
    dataset = load_dataset("synthetic", train_per_class=1, test_per_class=1, seed=2)
    assert dataset.name == "synthetic"
    assert len(dataset.train) == 100 and len(dataset.test) == 100
    direct = make_synthetic(1, 1, seed=2)
    assert torch.equal(dataset.train.images, direct.train.images)


def test_registry_unknown_name_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean: synthetic"):
        load_dataset("synthtic")
    with pytest.raises(ConfigError, match="available"):
        load_dataset("imagenet-xyz")

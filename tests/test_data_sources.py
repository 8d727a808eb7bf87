"""The data-source registry: every source, in memory or on disk, behind one interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdgen import data
from kdgen.config import build_config
from kdgen.data import ImageDataset, ImageSplit, LoaderSettings, load_dataset, load_source
from kdgen.data.imagefolder import FolderData
from kdgen.errors import ConfigError


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 255, (12, 10, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{index}.png")
    return root


def test_synthetic_options_come_from_their_config_section() -> None:
    config = build_config("smoke", ["data.synthetic.train_per_class=3", "data.val_size=0"])
    source = load_source(config.data, val_seed=0)
    assert isinstance(source, ImageDataset) and len(source.train) == 3 * source.num_classes
    hierarchy = source.class_hierarchy()
    assert hierarchy is not None and hierarchy.num_classes == source.num_classes


def test_imagefolder_is_a_registered_source(tmp_path: Path) -> None:
    root = _folder(tmp_path / "images")
    overrides = [
        "data.name=imagefolder",
        f"data.root={root}",
        "data.imagefolder.image_size=8",
        "data.imagefolder.workers=0",
        "data.val_size=2",
    ]
    config = build_config("smoke", overrides)
    source = load_source(config.data, val_seed=1)
    assert isinstance(source, FolderData) and "imagefolder" in data.list_datasets()
    assert (source.num_classes, source.in_channels, source.image_size) == (2, 3, 8)
    assert source.class_hierarchy() is None  # folder names are not WordNet ids
    settings = LoaderSettings(batch_size=4, eval_batch_size=3, device=torch.device("cpu"))
    train, evals = source.run_loaders(settings)
    images, labels = next(iter(train))
    assert images.shape == (4, 3, 8, 8) and labels.dtype == torch.int64
    assert set(evals) == {"val", "test"} and len(evals["val"]) == 1
    with pytest.raises(ConfigError, match="train_subset is not supported"):
        source.run_loaders(LoaderSettings(4, 3, torch.device("cpu"), train_subset=4))
    with pytest.raises(ConfigError, match=r"data\.batch_size=64 exceeds the 10 training images"):
        source.run_loaders(LoaderSettings(64, 3, torch.device("cpu")))
    with pytest.raises(ConfigError, match="not held in memory"):
        load_dataset("imagefolder", str(root))
    with pytest.raises(ConfigError, match=r"needs data\.root"):
        load_source(build_config("smoke", ["data.name=imagefolder"]).data, val_seed=0)


def test_old_imagefolder_key_names_still_work() -> None:
    config = build_config("smoke", ["data.image_size=16", "data.workers=0"])
    assert (config.data.imagefolder.image_size, config.data.imagefolder.workers) == (16, 0)


def test_a_new_source_is_one_function_and_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    def stripes(request: data.SourceRequest) -> ImageDataset:
        images = torch.zeros(8, 1, 4, 4, dtype=torch.uint8)
        images[4:, :, ::2] = 200
        labels = torch.tensor([0] * 4 + [1] * 4)
        split = ImageSplit(images, labels)
        return ImageDataset("stripes", split, split, ["flat", "striped"], (0.5,), (0.5,))

    monkeypatch.setitem(data._LOADERS, "stripes", stripes)
    config = build_config("smoke", ["data.name=stripes", "data.val_size=2", "data.batch_size=2"])
    source = load_source(config.data, val_seed=0)
    settings = LoaderSettings(2, 4, torch.device("cpu"), val_size=2, augment=data.Augment(0, False))
    train, evals = source.run_loaders(settings)
    assert len(train) == 3 and [len(evals["val"].labels), len(evals["test"].labels)] == [2, 8]

"""The imagefolder data source on a tiny folder data set written in tmp_path, and a run on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from kdgen.build import load_data
from kdgen.config import build_config
from kdgen.data.dataset_loader import DatasetLoader, shard_batches
from kdgen.data.hierarchy import Hierarchy
from kdgen.data.imagefolder import eval_transform, load_image_folder, train_transform
from kdgen.errors import DataError
from kdgen.generations import train_generations

CLASSES = ["ant", "bee", "cow"]
SIZE = 16


def _make_folder(root: Path, per_class: dict[str, int]) -> None:
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                colour = (80 * label, 10 * i, 200)
                Image.new("RGB", (40, 30), colour).save(folder / f"img{i}.png")


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    _make_folder(root, {"train": 6, "val": 2})
    return root


def test_load_classes_and_splits(dataset_root: Path) -> None:
    data = load_image_folder(dataset_root, image_size=SIZE, val_size=3, seed=1, workers=0)
    assert data.class_names == CLASSES
    assert (data.num_classes, data.in_channels, data.image_size) == (3, 3, SIZE)
    assert data.val is not None
    assert (len(data.train), len(data.val), len(data.test)) == (15, 3, 6)
    val_labels = sorted(data.train.dataset.targets[i] for i in data.val.indices)
    assert val_labels == [0, 1, 2]  # stratified
    assert not set(data.train.indices) & set(data.val.indices)
    assert data.hierarchy is None
    assert load_image_folder(dataset_root, workers=0).val is None


def test_loaders_shapes_labels_and_len(dataset_root: Path) -> None:
    data = load_image_folder(dataset_root, image_size=SIZE, val_size=3, seed=1, workers=0)
    train, evals = data.loaders(4, 5, "cpu", seed=0, generation=0, channels_last=True)
    assert set(evals) == {"val", "test"}
    assert train.device == torch.device("cpu")
    assert len(train) == 3  # 15 // 4, the partial batch dropped
    batches = list(train)
    assert len(batches) == 3
    images, labels = batches[0]
    assert images.shape == (4, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64
    test_batches = list(evals["test"])
    assert [len(b[1]) for b in test_batches] == [5, 1]  # kept
    assert torch.cat([b[1] for b in test_batches]).tolist() == [0, 0, 1, 1, 2, 2]
    # The colours encode the class: the red channel rises with the label.
    red = torch.cat([b[0][:, 0].mean(dim=(1, 2)) for b in test_batches])
    assert red[0] < red[2] < red[4]


def test_shuffled_order_is_a_function_of_seed_and_epoch(dataset_root: Path) -> None:
    data = load_image_folder(dataset_root, image_size=SIZE, workers=0)

    def order(seed: int, epoch: int) -> list[list[int]]:
        train, _ = data.loaders(6, 6, seed=seed)
        train.set_epoch(epoch)
        return train.batches()

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1)
    flat = [i for batch in order(0, 1) for i in batch]
    assert len(flat) == len(set(flat)) == 18


def test_crops_and_flips_are_a_function_of_seed_generation_and_epoch(dataset_root: Path) -> None:
    def images(workers: int, generation: int, epoch: int) -> torch.Tensor:
        data = load_image_folder(dataset_root, image_size=SIZE, workers=workers)
        train, _ = data.loaders(6, 6, seed=0)
        train.set_generation(generation)
        train.set_epoch(epoch)
        return torch.cat([batch for batch, _ in train])

    first = images(0, 0, 1)
    assert torch.equal(first, images(0, 0, 1))
    assert torch.equal(first, images(1, 0, 1))  # a worker process draws the same crops
    assert not torch.equal(first, images(0, 0, 2)) and not torch.equal(first, images(0, 1, 1))


def test_sharding_splits_each_global_batch() -> None:
    full = shard_batches(10, 4, shuffle=True, generator=torch.Generator().manual_seed(3))
    parts = [
        shard_batches(
            10, 2, shuffle=True, generator=torch.Generator().manual_seed(3), shard=(rank, 2)
        )
        for rank in range(2)
    ]
    assert [a + b for a, b in zip(*parts, strict=True)] == full
    evals = [shard_batches(5, 2, shuffle=False, shard=(rank, 2)) for rank in range(2)]
    assert evals == [[[0, 1], [4]], [[2, 3]]]
    with pytest.raises(DataError, match="rank < world"):
        shard_batches(5, 2, shuffle=False, shard=(2, 2))


def test_transforms_output_size() -> None:
    image = Image.new("RGB", (40, 30), (255, 0, 0))
    out = eval_transform(SIZE)(image)
    assert type(out) is torch.Tensor and out.shape == (3, SIZE, SIZE)
    assert out[0].mean() == pytest.approx((1 - 0.485) / 0.229, abs=1e-4)
    assert train_transform(SIZE)(image).shape == (3, SIZE, SIZE)


def _hierarchy_file(tmp_path: Path) -> Path:
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"ant": "insect", "bee": "insect", "cow": "mammal"}))
    return path


def test_hierarchy_file(dataset_root: Path, tmp_path: Path) -> None:
    data = load_image_folder(dataset_root, workers=0, hierarchy_file=_hierarchy_file(tmp_path))
    assert isinstance(data.hierarchy, Hierarchy)
    assert data.hierarchy.coarse_of_fine().tolist() == [0, 0, 1]


@pytest.mark.slow
def test_a_run_on_an_image_folder_with_a_hierarchy_file(dataset_root: Path, tmp_path: Path) -> None:
    config = build_config(
        "smoke",
        [
            "data.name=imagefolder",
            f"data.root={dataset_root}",
            f"data.hierarchy={_hierarchy_file(tmp_path)}",
            f"data.imagefolder.image_size={SIZE}",
            "data.imagefolder.workers=0",
            "data.val_size=3",
            "data.batch_size=5",
            "data.eval_batch_size=6",
            "k=2",
            "schedule.epochs=2",
            "progress=false",
            "tensorboard=false",
            f"out_dir={tmp_path / 'run'}",
        ],
    )
    result = train_generations(config)
    summary = result.summary
    assert summary["num_classes"] == 3
    assert [g["generation"] for g in summary["generations"]] == [0, 1]
    for entry in summary["generations"]:
        # K=2: one secondary class, a sibling (distance 1) or outside the group (distance
        # 2), so Dist^S = 1 + Dist^C; a cow (a third of the test images) has no sibling.
        dist_c, dist_s = entry["test"]["dist_c"], entry["test"]["dist_s"]
        assert 1 / 3 - 1e-6 <= dist_c <= 1
        assert dist_s == pytest.approx(1 + dist_c, abs=1e-5)
    classes = json.loads((result.path / "classes.json").read_text())
    assert classes["class_names"] == CLASSES
    assert classes["coarse_of_fine"] == [0, 0, 1]


def test_no_hierarchy_warns_that_dist_c_and_s_are_null(dataset_root: Path) -> None:
    with pytest.warns(UserWarning, match="no class hierarchy.*data.hierarchy=FILE.json"):
        data = load_image_folder(dataset_root, workers=0)
    assert data.hierarchy is None


def test_default_workers_are_at_most_the_usable_cores(
    dataset_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert load_image_folder(dataset_root).workers == 2
    assert load_image_folder(dataset_root, workers=3).workers == 3  # an explicit choice stays
    config = build_config(
        "smoke", ["data.name=imagefolder", f"data.root={dataset_root}", "data.val_size=3"]
    )
    assert config.data.imagefolder.workers is None
    assert load_data(config).workers == 2


def test_workers_and_pinning(dataset_root: Path) -> None:
    data = load_image_folder(dataset_root, image_size=SIZE, workers=1)
    train, _ = data.loaders(6, 6, seed=0)
    assert train.loader.num_workers == 1 and train.loader.persistent_workers
    assert not train.loader.pin_memory  # CPU device
    assert len(list(train)) == 3


def _copy(root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(root, target)
    return target


def test_missing_root_and_splits(dataset_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")
    root = _copy(dataset_root, tmp_path)
    shutil.rmtree(root / "val")
    with pytest.raises(DataError, match="val is missing"):
        load_image_folder(root)
    (root / "val").mkdir()
    with pytest.raises(DataError, match="one sub-folder per class"):
        load_image_folder(root)


def test_empty_class_folder(dataset_root: Path, tmp_path: Path) -> None:
    root = _copy(dataset_root, tmp_path)
    for image in (root / "train" / "bee").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"1 class folder.*hold no images: bee"):
        load_image_folder(root)


def test_class_sets_differ(dataset_root: Path, tmp_path: Path) -> None:
    root = _copy(dataset_root, tmp_path)
    (root / "val" / "cow").rename(root / "val" / "cat")
    with pytest.raises(DataError, match=r"only in train: \['cow'\], only in val: \['cat'\]"):
        load_image_folder(root)


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image(dataset_root: Path, tmp_path: Path, workers: int) -> None:
    root = _copy(dataset_root, tmp_path)
    (root / "val" / "ant" / "img0.png").write_bytes(b"not a png")
    data = load_image_folder(root, image_size=SIZE, workers=workers)
    _, evals = data.loaders(6, 6)
    with pytest.raises(DataError, match=r"^cannot read image .*img0\.png.*delete the file$"):
        list(evals["test"])


def test_loader_rejects_bad_batch_size(dataset_root: Path) -> None:
    data = load_image_folder(dataset_root, workers=0)
    with pytest.raises(DataError, match="batch_size=0"):
        DatasetLoader(data.test, 0)
    with pytest.raises(DataError, match="exceeds the 18 training images"):
        data.loaders(19, 4)

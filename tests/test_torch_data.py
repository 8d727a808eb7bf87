"""A user's own data (``kdgen.TorchData``: any map-style Dataset of (input, label)) and
model factory, on a small tabular set: 20 features, 5 classes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import kdgen
from kdgen import preemption
from kdgen.build import factory_name, load_data, prepare_data, with_user_objects
from kdgen.config import NOT_RECORDED, Config, build_config, config_hash
from kdgen.data import TorchData
from kdgen.data.dataset_loader import DatasetLoader
from kdgen.errors import ConfigError, DataError, RunDirError
from kdgen.preemption import TrainingStopped
from kdgen.report import write_report
from kdgen.runs import RunFolder

FEATURES, CLASSES = 20, 5
CPU = torch.device("cpu")


def tabular(rows: int, seed: int) -> TensorDataset:
    """Rows of 20 features scattered around one fixed centre per class; labels 0..4 in turn."""
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(rows) % CLASSES
    noise = torch.randn(rows, FEATURES, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(centres[labels] + 2.0 * noise, labels)


class Jittered(Dataset):
    """A user's random transform: each read adds noise drawn from torch's generator. It
    has no ``targets``, so TorchData reads its labels item by item."""

    def __init__(self, rows: TensorDataset) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        features, label = self.rows[index]
        return features + 0.1 * torch.randn(FEATURES), int(label)


def mlp_of_width(num_classes: int, width: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, width), nn.ReLU(), nn.Linear(width, num_classes))


def mlp(num_classes: int) -> nn.Module:
    return mlp_of_width(num_classes)


# model instance -> checksums of the training batches it saw, in order (as test_streams)
SEEN: dict[int, list[str]] = {}


class RecordingMLP(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            digest = hashlib.sha1(x.detach().contiguous().numpy().tobytes()).hexdigest()
            SEEN.setdefault(id(self), []).append(digest)
        return super().forward(x)


def recording_mlp(num_classes: int) -> nn.Module:
    return RecordingMLP(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, num_classes))


def tabular_data(train: Dataset | None = None, val_size: int = 50) -> TorchData:
    return TorchData(
        train=train if train is not None else tabular(300, 1),
        test=tabular(100, 2),
        num_classes=CLASSES,
        val_size=val_size,
    )


@pytest.fixture
def tabular_config(tmp_path: Path) -> Callable[..., Config]:
    """Configs of 2-epoch generations on the tabular set, writing under ``tmp_path``."""

    def make(*overrides: str, out: str = "run") -> Config:
        settings = [
            "schedule.epochs=2",
            "schedule.lr=0.05",
            "data.batch_size=32",
            "progress=false",
            "tensorboard=false",
            f"out_dir={tmp_path / out}",
        ]
        return build_config("smoke", [*settings, *overrides])

    return make


def _loaders(config: Config, data: TorchData) -> dict[str, DatasetLoader]:
    prepared = prepare_data(with_user_objects(config, data=data), CPU)
    return {"train": prepared.train_loader, **prepared.eval_loaders}  # type: ignore[dict-item]


def test_splits_are_stratified_disjoint_and_chosen_by_the_seed(
    tabular_config: Callable[..., Config],
) -> None:
    data = tabular_data()
    loaders = _loaders(tabular_config("eval_train_max=40"), data)
    test = loaders.pop("test")
    index = {name: set(loader.dataset.indices) for name, loader in loaders.items()}
    assert len(test.dataset) == 100
    assert index["train"] | index["val"] == set(range(300)) and not index["train"] & index["val"]
    assert index["train_eval"] <= index["train"]
    labels = data.train_labels
    assert torch.bincount(labels[sorted(index["val"])]).tolist() == [10] * CLASSES
    assert torch.bincount(labels[sorted(index["train_eval"])]).tolist() == [8] * CLASSES
    other_seed = _loaders(tabular_config("eval_train_max=40", "seed=1"), data)
    assert set(other_seed["val"].dataset.indices) != index["val"]
    assert (data.in_channels, data.class_names) == (FEATURES, ["0", "1", "2", "3", "4"])


def _epoch(loader: DatasetLoader, generation: int, epoch: int) -> list[torch.Tensor]:
    loader.set_generation(generation)
    loader.set_epoch(epoch)
    return [inputs for inputs, _ in loader]


def test_each_generation_and_epoch_reads_its_own_stream_with_the_users_transforms(
    tabular_config: Callable[..., Config],
) -> None:
    data = tabular_data(Jittered(tabular(300, 1)))
    assert torch.equal(data.train_labels, tabular(300, 1).tensors[1])  # read item by item
    train = _loaders(tabular_config(), data)["train"]
    state = torch.get_rng_state()
    first = _epoch(train, 0, 0)
    assert torch.equal(torch.get_rng_state(), state)  # the items' seeds leave no trace
    again = _epoch(train, 0, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert len(first) == 250 // 32 and first[0].shape == (32, FEATURES)
    for other in (_epoch(train, 1, 0), _epoch(train, 0, 1)):
        assert not any(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    # Each of 2 ranks reads its half of every global batch, jitter included.
    halves = [_loaders(tabular_config("data.batch_size=16"), data)["train"] for _ in range(2)]
    for rank, loader in enumerate(halves):
        loader.sampler.shard = (rank, 2)
    ranks = [_epoch(loader, 0, 0) for loader in halves]
    assert all(
        torch.equal(torch.cat(parts), whole) for *parts, whole in zip(*ranks, first, strict=True)
    )


def test_user_objects_are_named_in_the_config_and_its_hash(
    tabular_config: Callable[..., Config],
) -> None:
    config = tabular_config()
    data = tabular_data()
    mine = with_user_objects(config, model=mlp, data=data)
    assert mine.model == "<user factory: tests.test_torch_data.mlp>"
    assert mine.data.name == (
        "<user TorchData: train TensorDataset of 300, test TensorDataset of 100, 5 classes, "
        f"labels {data.labels_digest()}>"
    )
    assert mine.data.val_size == 50 and config.model == "tiny_cnn"  # the caller's is unchanged
    other = with_user_objects(config, model=recording_mlp, data=data)
    assert len({config_hash(config), config_hash(mine), config_hash(other)}) == 3
    assert with_user_objects(config) is config
    assert load_data(mine) is data
    assert factory_name(partial(mlp_of_width, width=8)) == (
        "tests.test_torch_data.mlp_of_width(width=8)"
    )
    assert factory_name(RecordingMLP) == "tests.test_torch_data.RecordingMLP"
    # Rebuilt from the same rows: the same description; one label changed: another.
    assert tabular_data().describe() == data.describe()
    relabelled = tabular(300, 1)
    relabelled.tensors[1][0] = 1
    assert tabular_data(relabelled).describe() != data.describe()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TorchData(tabular(10, 1), tabular(5, 2), 4), r"train labels must lie in \[0, 3\]"),
        (
            lambda: TorchData(TensorDataset(torch.zeros(4, 2)), tabular(5, 2), 5),
            r"train\[0\] is tuple; every item must be an \(input, label\) pair",
        ),
        (
            lambda: TorchData(TensorDataset(torch.zeros(4, 2), torch.zeros(4)), tabular(5, 2), 5),
            "train labels must be 4 integers",
        ),
        (
            lambda: TorchData(tabular(10, 1), tabular(5, 2), 5, eval_train=tabular(9, 1)),
            "eval_train has 9 items, train 10",
        ),
        (lambda: TorchData(tabular(10, 1), tabular(5, 2), 5, classes=["a"]), "1 class names"),
    ],
)
def test_bad_data_is_refused_in_one_line(make: Callable[[], TorchData], message: str) -> None:
    with pytest.raises(DataError, match=message) as refused:
        make()
    assert "\n" not in str(refused.value)


def test_user_objects_that_cannot_be_used_are_refused(
    tabular_config: Callable[..., Config],
) -> None:
    with pytest.raises(ConfigError, match=r"data= takes a kdgen\.TorchData, not TensorDataset"):
        with_user_objects(tabular_config(), data=tabular(10, 1))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"model_args \(widths\) go to a named model"):
        with_user_objects(tabular_config("model_args.widths=[8,8,8]"), model=mlp)
    never_given = replace(tabular_config(), model="<user factory: elsewhere.mlp>")
    with pytest.raises(ConfigError, match="a Python object that kdgen does not record; pass"):
        load_data(never_given)


def _streams(config: Config, **kwargs: object) -> list[list[str]]:
    """Train ``config`` and return each trained generation's batch checksums, in order."""
    SEEN.clear()
    kdgen.train_generations(config, **kwargs)  # type: ignore[arg-type]
    return [list(batches) for batches in SEEN.values()]


@pytest.mark.slow
def test_a_tabular_run_learns_and_resumes_mid_epoch_exactly(
    tabular_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    overrides = ("process=D(0.6,0.6)", "generations=2", "schedule.epochs=4", "schedule.lr=0.1")
    data = tabular_data(Jittered(tabular(300, 1)))
    objects = {"model": recording_mlp, "data": data}
    reference = _streams(tabular_config(*overrides, out="ref"), **objects)
    per_epoch = [tuple(stream[e * 7 : (e + 1) * 7]) for stream in reference for e in range(4)]
    assert len(per_epoch) == len(set(per_epoch)) == 12  # 7 steps an epoch, none replayed
    calls = {"n": 0}

    def stop_in_generation_1() -> bool:
        calls["n"] += 1
        return calls["n"] >= len(reference[0]) + 3  # a few steps into M_1

    SEEN.clear()
    monkeypatch.setattr(preemption, "stop_requested", stop_in_generation_1)
    with pytest.raises(TrainingStopped) as stopped:
        kdgen.train_generations(tabular_config(*overrides, out="run"), **objects)
    monkeypatch.undo()
    assert stopped.value.generation == 1 and stopped.value.step > 0  # mid-epoch
    before = [list(batches) for batches in SEEN.values()]
    with pytest.raises(RunDirError, match=r"model: '<user factory: tests.test_torch_data."):
        kdgen.train_generations(tabular_config(*overrides, out="run"), data=data, resume=True)
    after = _streams(tabular_config(*overrides, out="run"), resume=True, **objects)
    assert before[1] + after[0] == reference[1] and after[1] == reference[2]

    resumed = RunFolder(tabular_config(out="run").out_dir).read_summary()
    uninterrupted = RunFolder(tabular_config(out="ref").out_dir).read_summary()
    assert resumed == uninterrupted
    assert resumed["model"] == "<user factory: tests.test_torch_data.recording_mlp>"
    assert resumed["data"].startswith("<user TorchData: train Jittered of 300")
    assert resumed["not_recorded"] == NOT_RECORDED
    for entry in resumed["generations"]:
        assert entry["test"]["top1"] > 0.7  # chance: 0.2; the true centres' rule: 0.86

    model = kdgen.load_generation_model(tabular_config(out="run").out_dir, 2, data=data)
    rows, labels = data.test.tensors  # type: ignore[attr-defined]
    top1 = (model(rows).argmax(1) == labels).float().mean().item()
    assert top1 == pytest.approx(resumed["generations"][2]["test"]["top1"], abs=1e-6)
    report = write_report([tmp_path], tmp_path / "report").read_text()
    assert "Not recorded: the model of 2 runs and the data of 2 runs were Python objects" in report

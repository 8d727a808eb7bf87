"""Tests of the transfer linear probe (docs/method.md, "Transfer feature extraction")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import kdgen
from kdgen import transfer
from kdgen.data import DeviceLoader, ImageSplit
from kdgen.data.fashion_mnist import FILES
from kdgen.errors import ConfigError, DataError, RunDirError
from kdgen.evaluation import load_generation_model
from kdgen.models import create_model, registry
from kdgen.transfer import (
    InputAdapter,
    extract_features,
    fit_logistic_torch,
    fit_probe,
    format_transfer_table,
    penultimate_features,
    standardize,
    transfer_path,
    transfer_run,
)
from tests.conftest import FAST

SYNTHETIC = {"seed": 5, "train_per_class": 2, "test_per_class": 1}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-generation run (patriarch + one student), one epoch each."""
    out = tmp_path_factory.mktemp("transfer") / "run"
    config = kdgen.build_config(
        "smoke",
        [
            "schedule.epochs=1",
            "generations=1",
            "data.synthetic.train_per_class=8",
            "data.synthetic.test_per_class=2",
            "data.val_size=100",
            "data.batch_size=50",
            "progress=false",
            "tensorboard=false",
            f"out_dir={out}",
        ],
    )
    kdgen.train_generations(config)
    return out


def _write_fashion_mnist(folder: Path, n_train: int = 40, n_test: int = 20) -> Path:
    """Tiny 28x28 idx files with labels cycling through 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("test", n_test)):
        pixels = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        header = np.array([2051, count, 28, 28], dtype=">u4").tobytes()
        (folder / FILES[f"{split}_images"]).write_bytes(header + pixels.tobytes())
        labels = bytes(i % 10 for i in range(count))
        head = np.array([2049, count], dtype=">u4").tobytes()
        (folder / FILES[f"{split}_labels"]).write_bytes(head + labels)
    return folder


def _blobs(
    per_class: int, classes: int, dim: int, spread: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    labels = torch.arange(classes).repeat(per_class)
    points = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return points, labels


# ------------------------------------------------------------------------ whole runs


def _check_result(result: dict, run_dir: Path, data: str) -> None:
    assert json.loads(transfer_path(run_dir, data).read_text()) == result
    assert result["data"] == data
    assert [g["generation"] for g in result["generations"]] == [0, 1]
    for entry in result["generations"]:
        assert 0 <= entry["test_top1"] <= 1 and 0 <= entry["train_top1"] <= 1
    assert result["feature_dim"] == load_generation_model(run_dir, 0).num_features


@pytest.mark.slow
def test_transfer_synthetic(run_dir: Path) -> None:
    result = transfer_run(
        run_dir, "synthetic", options=SYNTHETIC, device="cpu", test_subset=100, max_iter=100
    )
    _check_result(result, run_dir, "synthetic")
    assert result["classifier"] in ("sklearn", "torch-lbfgs")
    assert (result["train_size"], result["test_size"]) == (200, 100)
    assert result["adaptation"] == {"channels": "as is", "resize": None}
    table = format_transfer_table(result)
    assert "| gen | test top-1 |" in table
    assert f"{result['generations'][1]['test_top1']:.4f}" in table.splitlines()[-1]


@pytest.mark.slow
def test_transfer_fashion_mnist_repeats_grey_and_resizes(run_dir: Path, tmp_path: Path) -> None:
    _write_fashion_mnist(tmp_path / "fm")
    result = transfer_run(
        run_dir, "fashion-mnist", root=str(tmp_path / "fm"), device="cpu", classifier="torch-lbfgs"
    )
    _check_result(result, run_dir, "fashion-mnist")
    assert result["classifier"] == "torch-lbfgs"
    assert (result["train_size"], result["test_size"]) == (40, 20)
    assert result["adaptation"] == {
        "channels": "grey repeated to 3",
        "resize": [[28, 28], [32, 32]],
    }
    assert result["generations"][0]["train_top1"] > 0.5  # 40 points in 32 dims: separable


@pytest.mark.slow
def test_grey_features_through_colour_model(run_dir: Path) -> None:
    model = load_generation_model(run_dir, 1)
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    loader = DeviceLoader(ImageSplit(images, torch.arange(6)), 4, (0.3,), (0.35,))
    adapter = InputAdapter(3, (32, 32))
    features, labels = extract_features(model, loader, adapter)
    assert features.shape == (6, model.num_features) and torch.isfinite(features).all()
    assert torch.equal(labels, torch.arange(6))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("subsets", "message"),
    [
        ({"train_subset": 99}, "train_subset=99 is smaller than the 100 classes of synthetic"),
        ({"test_subset": 50}, "test_subset=50 is smaller than the 100 classes"),
    ],
)
def test_a_subset_smaller_than_the_classes_is_refused(
    run_dir: Path, subsets: dict[str, int], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        transfer_run(run_dir, "synthetic", options=SYNTHETIC, device="cpu", **subsets)


@pytest.mark.slow
def test_errors(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="no run"):
        transfer_run(tmp_path / "empty", "synthetic")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_dir / "config.yaml", bare / "config.yaml")
    with pytest.raises(RunDirError, match="no generation checkpoints"):
        transfer_run(bare, "synthetic")
    with pytest.raises(ConfigError, match=r"unknown data set 'fashion_mnist'.*fashion-mnist"):
        transfer_run(run_dir, "fashion_mnist")
    with pytest.raises(ConfigError, match="C=0"):
        transfer_run(run_dir, "synthetic", C=0)
    with pytest.raises(ConfigError, match="classifier"):
        transfer_run(run_dir, "synthetic", classifier="svm")
    assert not list(run_dir.glob("transfer-fashion_mnist*"))


# ------------------------------------------------------------------------ input adaptation


def test_adapter_repeats_averages_and_resizes() -> None:
    grey = torch.randn(2, 1, 28, 28)
    colour = InputAdapter(3, (32, 32))(grey)
    assert colour.shape == (2, 3, 32, 32)
    assert torch.equal(colour[:, 0], colour[:, 2])
    constant = torch.full((1, 3, 16, 16), 0.7)
    resized = InputAdapter(3, (32, 32), channels_last=True)(constant)
    assert torch.allclose(resized, torch.full_like(resized, 0.7))
    assert resized.is_contiguous(memory_format=torch.channels_last)
    rgb = torch.stack([torch.zeros(8, 8), torch.ones(8, 8), 2 * torch.ones(8, 8)])[None]
    assert torch.allclose(InputAdapter(1, (8, 8))(rgb), torch.ones(1, 1, 8, 8))
    assert torch.equal(InputAdapter(3, (8, 8))(rgb), rgb)
    with pytest.raises(DataError, match="2-channel"):
        InputAdapter(3, (8, 8))(torch.zeros(1, 2, 8, 8))


def test_standardize_uses_training_statistics() -> None:
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    test = torch.tensor([[2.0, 6.0]])
    scaled_train, scaled_test = standardize(train, test)
    assert scaled_train.dtype == torch.float64
    assert torch.allclose(
        scaled_train, torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    )
    assert torch.allclose(scaled_test, torch.tensor([[0.0, 1.0]], dtype=torch.float64))


# ------------------------------------------------------------------------ classifiers


def test_torch_lbfgs_separates_blobs_and_not_noise() -> None:
    train_x, train_y = _blobs(40, 5, 8, 0.5, seed=0)
    test_x, test_y = _blobs(40, 5, 8, 0.5, seed=1)
    probe = fit_logistic_torch(train_x, train_y, C=1.0, max_iter=200)
    assert probe.converged and probe.classifier == "torch-lbfgs"
    assert transfer.accuracy(probe.predict(test_x), test_y) >= 0.98
    # Labels shuffled against the points: nothing to learn, test accuracy near chance (0.2).
    noise_x, noise_y = _blobs(200, 5, 8, 0.5, seed=2)
    noise_test, noise_test_y = _blobs(200, 5, 8, 0.5, seed=3)
    generator = torch.Generator().manual_seed(4)
    noise_y = noise_y[torch.randperm(len(noise_y), generator=generator)]
    noise_test_y = noise_test_y[torch.randperm(len(noise_test_y), generator=generator)]
    probe = fit_logistic_torch(noise_x, noise_y, max_iter=50)
    assert abs(transfer.accuracy(probe.predict(noise_test), noise_test_y) - 0.2) < 0.06


def test_torch_lbfgs_keeps_original_class_labels() -> None:
    x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    y = torch.tensor([3, 3, 7, 7])
    probe = fit_logistic_torch(x, y)
    assert probe.predict(torch.tensor([[-5.0], [5.0]])).tolist() == [3, 7]


def test_torch_matches_sklearn() -> None:
    pytest.importorskip("sklearn")
    train_x, train_y = _blobs(30, 4, 6, 2.5, seed=0)
    test_x, test_y = _blobs(50, 4, 6, 2.5, seed=1)
    train_x, test_x = standardize(train_x, test_x)
    ours = fit_probe(train_x, train_y, C=0.5, max_iter=500, classifier="torch-lbfgs")
    theirs = fit_probe(train_x, train_y, C=0.5, max_iter=500, classifier="sklearn")
    assert theirs.classifier == "sklearn" and theirs.converged
    ours_acc = transfer.accuracy(ours.predict(test_x), test_y)
    theirs_acc = transfer.accuracy(theirs.predict(test_x), test_y)
    assert 0.5 < ours_acc < 1.0  # the blobs overlap: a real test of the fit
    assert abs(ours_acc - theirs_acc) <= 0.02
    # The same objective, so the same weights (sklearn's lbfgs stops at tol=1e-4).
    assert torch.allclose(ours.weight, theirs.weight.double(), atol=2e-3, rtol=1e-2)


def test_fit_probe_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _blobs(5, 2, 2, 0.1, seed=0)
    with pytest.raises(ConfigError, match="classifier"):
        fit_probe(x, y, classifier="svm")
    monkeypatch.setattr(transfer, "sklearn_available", lambda: False)
    assert fit_probe(x, y).classifier == "torch-lbfgs"
    with pytest.raises(ConfigError, match=r"kdgen\[transfer\]"):
        fit_probe(x, y, classifier="sklearn")


# ------------------------------------------------------------------------ a user's model


class _Scaled(torch.nn.Module):
    """A model whose logits are not its last Linear's output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * 2


def test_penultimate_features_without_forward_features_are_the_classifier_s_input() -> None:
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.ReLU())
    model = torch.nn.Sequential(body, torch.nn.Linear(8, 3))
    images = torch.randn(4, 3, 2, 2)
    assert torch.equal(penultimate_features(model)(images), body(images))
    tiny = create_model("tiny_cnn", 10)
    assert penultimate_features(tiny) == tiny.forward_features
    pooled = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Flatten())
    with pytest.raises(ConfigError, match=r"neither a forward_features method nor an nn\.Linear"):
        penultimate_features(pooled)
    with pytest.raises(ConfigError, match=r"its output is not that of its last nn\.Linear"):
        penultimate_features(_Scaled())(images)


def test_transfer_of_a_registered_model_without_forward_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def user_mlp(num_classes: int, in_channels: int) -> torch.nn.Module:
        hidden = torch.nn.Linear(in_channels * 32 * 32, 16)
        return torch.nn.Sequential(
            torch.nn.Flatten(), hidden, torch.nn.ReLU(), torch.nn.Linear(16, num_classes)
        )

    monkeypatch.setitem(registry._REGISTRY, "test_user_mlp", user_mlp)
    config = kdgen.build_config(
        "smoke",
        [*FAST, "model=test_user_mlp", "generations=0", "schedule.epochs=1", f"out_dir={tmp_path}"],
    )
    kdgen.train_generations(config)
    result = transfer_run(tmp_path, "synthetic", options=SYNTHETIC, device="cpu", max_iter=50)
    assert result["feature_dim"] == 16
    assert 0 <= result["generations"][0]["test_top1"] <= 1

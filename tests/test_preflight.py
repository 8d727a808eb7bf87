"""Checks before the run folder is made (kdgen.preflight): a mistake they catch
leaves no folder behind, and a folder whose run failed before its first checkpoint is
taken by the corrected command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from kdgen.build import check_model, load_data, run_numerics
from kdgen.cli import main
from kdgen.config import Config, build_config
from kdgen.errors import KdgenError
from kdgen.generations import train_generations
from kdgen.models import registry
from kdgen.preflight import Preflight, preflight
from kdgen.runs import RunFolder
from tests.conftest import FAST

CPU = torch.device("cpu")


def _preflight(config: Config) -> Preflight:
    """:func:`preflight` for a run on the CPU."""
    return preflight(config, CPU, run_numerics(config, CPU, {}))


MISTAKES = {
    "model name": ("model=ResNet20", "did you mean: resnet20"),
    "model_args": ("model_args.dropout=0.3", "takes no argument dropout"),
    "missing patriarch": ("patriarch={tmp}/nowhere", "nowhere does not exist"),
    "missing CIFAR data": ("data.name=cifar100 data.root={tmp}/empty", "CIFAR-100 not found"),
    "validation split too large": ("data.val_size=5000", "data.val_size=5000"),
    "k above the classes": ("data.synthetic.train_per_class=8 k=101", "k=101 exceeds"),
    "hierarchy file": ("data.hierarchy={tmp}/tree.json", "tree.json"),
    "user module": ("imports=[kdgen_no_such_module]", "kdgen_no_such_module"),
    "student model": ("student_model=ResNet20", "did you mean: resnet20"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_is_refused_before_the_run_folder_exists(
    mistake: str, fast_config: Callable[..., Config], tmp_path: Path
) -> None:
    overrides, message = MISTAKES[mistake]
    (tmp_path / "empty").mkdir()
    config = fast_config(*overrides.format(tmp=tmp_path).split())
    with pytest.raises(KdgenError, match=message):
        train_generations(config)
    assert not (tmp_path / "run").exists()


def _mnist_mlp(num_classes: int, in_channels: int) -> nn.Module:
    """A user's model made for 28x28 images."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, num_classes))


def test_the_model_is_checked_with_the_data_s_classes_and_image_size(
    fast_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry._REGISTRY, "test_mnist_mlp", _mnist_mlp)
    config = fast_config("model=test_mnist_mlp")
    message = r"model test_mnist_mlp cannot take the 3x32x32 images of synthetic: mat1 and mat2"
    with pytest.raises(KdgenError, match=message):
        check_model(config, load_data(config))
    config = fast_config()
    convolutions, batch_norms = 3 * 16 * 9 + 16 * 32 * 9 + 32 * 64 * 9, 2 * (16 + 32 + 64)
    classifier = 64 * 100 + 100  # tiny_cnn's Linear for the 100 synthetic classes
    assert check_model(config, load_data(config)) == convolutions + batch_norms + classifier


def test_a_folder_whose_run_failed_before_its_first_checkpoint_is_reused(
    fast_config: Callable[..., Config], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A divergence in epoch 1 leaves config.yaml, run.json and metrics but no checkpoint;
    the error says the folder may be reused, and the corrected command writes there."""
    run = tmp_path / "run"
    argv = ["train", "smoke", *FAST, "generations=0", "schedule.epochs=1", "--out", str(run)]
    assert main([*argv, "schedule.lr=1e30"]) == 2
    err = capsys.readouterr().err
    assert f"{run} holds no checkpoint yet: the corrected command may reuse it" in err
    assert RunFolder(run).read_state()["status"] == "failed"
    assert (run / "config.yaml").exists() and not (run / "checkpoints").exists()

    assert main(argv) == 0
    folder = RunFolder(run)
    assert folder.read_state()["status"] == "finished"
    assert folder.read_config().schedule.lr == 0.1
    keys = [(r["generation"], r["epoch"], r["split"]) for r in folder.read_metrics()]
    assert keys == [(0, 1, "train"), (0, 1, "val"), (0, 1, "test"), (0, 1, "train_eval")]
    with pytest.raises(KdgenError, match="already holds a run"):  # now it holds results
        train_generations(fast_config("generations=0", "schedule.epochs=1"))


def test_a_config_yaml_not_written_by_a_run_is_never_replaced(
    fast_config: Callable[..., Config], tmp_path: Path
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("mine: true\n")
    with pytest.raises(KdgenError, match="already holds a run"):
        train_generations(fast_config())
    assert (tmp_path / "run" / "config.yaml").read_text() == "mine: true\n"


def test_preflight_returns_the_data_the_run_trains_on(fast_config: Callable[..., Config]) -> None:
    checked = _preflight(fast_config())
    assert checked.dataset.num_classes == 100
    assert checked.steps_per_epoch == (100 * 8 - 100) // 50
    assert checked.parameters == check_model(fast_config(), checked.dataset)


def test_a_resume_needs_no_patriarch_once_its_own_generation_0_is_saved(
    tmp_path: Path,
) -> None:
    config = build_config("smoke", [*FAST, f"out_dir={tmp_path / 'run'}", f"patriarch={tmp_path}"])
    gen0 = RunFolder(tmp_path / "run").generation_checkpoint(0)
    gen0.parent.mkdir(parents=True)
    with pytest.raises(KdgenError, match="patriarch"):
        _preflight(config)
    gen0.write_bytes(b"saved")
    _preflight(config)

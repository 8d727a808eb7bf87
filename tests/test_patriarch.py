"""A reused patriarch (``patriarch=DIR``) must be the patriarch this run would train: it is
loaded, never retrained, and refused with one line naming the keys that differ."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kdgen.cli import main
from kdgen.config import Config, build_config
from kdgen.errors import CheckpointError
from kdgen.generations import train_generations
from kdgen.runs import RunFolder
from tests.conftest import FAST


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A strict run whose patriarch the tests reuse (none of them writes in it)."""
    out = tmp_path_factory.mktemp("strict") / "run"
    config = build_config("smoke", [*FAST, "process=D(1.0,0.0)", f"out_dir={out}"])
    return train_generations(config).path


@pytest.mark.slow
def test_a_reused_patriarch_is_loaded_not_trained(
    fast_config: Callable[..., Config], strict: Path
) -> None:
    checkpoint = strict / "checkpoints" / "gen0.pt"
    before = (checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns)
    shared = train_generations(fast_config("process=D(1.0,0.6)", f"patriarch={strict}"))
    assert (checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns) == before
    records = RunFolder(shared.path).read_metrics()
    assert not [r for r in records if r["generation"] == 0 and r["split"] == "train"]
    assert [r for r in records if r["generation"] == 1 and r["split"] == "train"]
    gen0 = shared.summary["generations"][0]
    theirs = RunFolder(strict).read_summary()["generations"][0]  # type: ignore[index]
    assert gen0["test"] == theirs["test"] and gen0["train"] == theirs["train"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "was", "has"),
    [
        ("seed=1", "seed=0", "seed=1"),
        ("data.val_size=60", "data.val_size=100", "data.val_size=60"),
        ("data.train_subset=200", "data.train_subset=None", "data.train_subset=200"),
        ("data.flip=false", "data.flip=True", "data.flip=False"),
        ("data.crop_padding=2", "data.crop_padding=4", "data.crop_padding=2"),
        ("schedule.epochs=3", "schedule.epochs=2", "schedule.epochs=3"),
        ("generation_schedules={0: {lr: 0.05}}", "schedule.lr=0.1", "schedule.lr=0.05"),
        ("process=D(0.6,0.6)", "eta=1.0", "eta=0.6"),
        ("model=resnet8", "model='tiny_cnn'", "model='resnet8'"),
    ],
)
def test_a_mismatched_patriarch_is_refused_naming_the_keys(
    fast_config: Callable[..., Config], strict: Path, override: str, was: str, has: str
) -> None:
    config = fast_config("process=D(1.0,0.6)", f"patriarch={strict}", override, out="x")
    with pytest.raises(CheckpointError) as refused:
        train_generations(config)
    message = str(refused.value)
    assert f"was trained with {was}" in message and f"this run has {has}" in message
    assert "\n" not in message


@pytest.mark.slow
def test_what_does_not_shape_the_patriarch_may_differ(
    fast_config: Callable[..., Config], strict: Path
) -> None:
    overrides = ("process=D(1.0,0.6)", "generations=2", "data.eval_batch_size=7", "eval_every=2")
    shared = train_generations(fast_config(*overrides, f"patriarch={strict}", out="ok"))
    assert [g["generation"] for g in shared.summary["generations"]] == [0, 1, 2]


@pytest.mark.slow
def test_the_cli_refuses_a_mismatched_patriarch_with_exit_2(
    strict: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "smoke", *FAST, "process=D(1.0,0.6)", "seed=3", f"patriarch={strict}"]
    argv += ["--out", str(tmp_path / "y")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "was trained with seed=0, this run has seed=3" in err

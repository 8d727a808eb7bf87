"""A reused patriarch (``patriarch=DIR``) must be the patriarch this run would train: it is
loaded, never retrained, and refused with one line naming the keys that differ, its
precision and layout compared as its run.json recorded them."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kdgen.cli import main
from kdgen.config import Config, build_config
from kdgen.errors import CheckpointError
from kdgen.generations import RunResult, train_generations
from kdgen.policy import patriarch_mismatch
from kdgen.precision import Numerics
from kdgen.runs import RunFolder, atomic_write_json
from tests.conftest import FAST


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A strict run whose patriarch the tests reuse (those that change its folder change a
    copy)."""
    out = tmp_path_factory.mktemp("strict") / "run"
    overrides = [*FAST, "process=D(1.0,0.0)", "generations=0", f"out_dir={out}"]
    return train_generations(build_config("smoke", overrides)).path


def _with_record(folder: Path, **fields: Any) -> Path:
    """Change the run.json of a (copied) run folder; a field set to None is removed."""
    run = RunFolder(folder)
    state = {
        key: value for key, value in {**run.read_state(), **fields}.items() if value is not None
    }
    atomic_write_json(run.state_path, state)
    return folder


def _load(
    fast_config: Callable[..., Config], patriarch: Path, *overrides: str, out: str = "run"
) -> RunResult:
    """A run that loads ``patriarch`` and trains nothing (generation 0 only)."""
    config = fast_config(
        "process=D(1.0,0.6)", "generations=0", f"patriarch={patriarch}", *overrides, out=out
    )
    return train_generations(config)


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
    theirs = RunFolder(strict).read_summary()
    assert theirs is not None
    assert gen0["test"] == theirs["generations"][0]["test"]
    assert gen0["train"] == theirs["generations"][0]["train"]


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
        ("model_args.widths=[8,16,32]", "model_args.widths=None", "model_args.widths=[8, 16, 32]"),
        ("channels_last=true", "layout='contiguous'", "layout='channels_last'"),
        ("data.batch_size=25", "data.batch_size=50", "data.batch_size=25"),
        (
            "schedule.weight_decay=0.001",
            "schedule.weight_decay=0.0005",
            "schedule.weight_decay=0.001",
        ),
        ("schedule.momentum=0.5", "schedule.momentum=0.9", "schedule.momentum=0.5"),
        ("schedule.nesterov=false", "schedule.nesterov=True", "schedule.nesterov=False"),
    ],
)
def test_a_mismatched_patriarch_is_refused_naming_the_keys(
    fast_config: Callable[..., Config], strict: Path, override: str, was: str, has: str
) -> None:
    """Every key that shapes generation 0, the resolved layout included (channels_last
    unset is the contiguous layout on the CPU)."""
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


def test_the_identity_compares_resolved_numerics_and_model_args() -> None:
    """Precision and layout as resolved, not as written: "auto" that ran in bf16 is "bf16";
    two "auto" runs on a bf16 CPU and on an fp32-only one differ."""
    bf16, fp32 = Numerics("bf16", False), Numerics("fp32", False)
    auto, written = (
        build_config("smoke", ["precision=auto"]),
        build_config("smoke", ["precision=bf16"]),
    )
    assert patriarch_mismatch(auto, bf16, written, bf16) == ""
    assert patriarch_mismatch(auto, fp32, auto, bf16) == (
        "it was trained with precision='fp32', this run has precision='bf16'"
    )
    assert patriarch_mismatch(auto, bf16, auto, Numerics("bf16", True)) == (
        "it was trained with layout='contiguous', this run has layout='channels_last'"
    )
    wrn = build_config("smoke", ["model=wrn_16_8"])
    dropout = build_config("smoke", ["model=wrn_16_8", "model_args.dropout=0.3"])
    assert patriarch_mismatch(wrn, fp32, dropout, fp32) == (
        "it was trained with model_args.dropout=None, this run has model_args.dropout=0.3"
    )


@pytest.mark.slow
def test_a_patriarch_is_checked_on_the_precision_its_run_recorded(
    fast_config: Callable[..., Config], strict: Path, tmp_path: Path
) -> None:
    """Its config says precision=auto; what it ran in is what its run.json recorded (written
    here, so that the test does not depend on this CPU's bf16 instructions)."""
    copy = _with_record(shutil.copytree(strict, tmp_path / "auto"), precision="bf16")
    assert RunFolder(copy).read_config().precision == "auto"
    loaded = _load(fast_config, copy, "precision=bf16", out="bf16")
    assert loaded.summary["precision"] == "bf16"
    _with_record(copy, precision="fp32")
    with pytest.raises(CheckpointError) as refused:
        _load(fast_config, copy, "precision=bf16", out="refused")
    assert "it was trained with precision='fp32', this run has precision='bf16'" in str(
        refused.value
    )

"""A reused patriarch (``patriarch=DIR``) must be the patriarch this run would train: it is
loaded, never retrained, and refused with one line naming the keys that differ, its
precision and layout compared as its run.json recorded them. The loading run records it by
what it is (its run's config hash and its gen0 checkpoint's sha256), and that, not where
it lies, enters the loading run's config hash."""

from __future__ import annotations

import hashlib
import itertools
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import kdgen
from kdgen import preemption
from kdgen.cli import main
from kdgen.config import Config, build_config, config_hash, legacy_config_hash
from kdgen.errors import CheckpointError
from kdgen.generations import RunResult, train_generations
from kdgen.policy import patriarch_mismatch
from kdgen.precision import Numerics
from kdgen.preemption import TrainingStopped
from kdgen.provenance import begin_run, run_digest
from kdgen.runs import RunFolder, atomic_write_json, load_checkpoint, save_checkpoint
from kdgen.seeding import SEEDING_SCHEME
from tests.conftest import FAST

CPU = torch.device("cpu")


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
    assert theirs is not None and theirs["patriarch"] is None  # trained there
    assert gen0["test"] == theirs["generations"][0]["test"]
    assert gen0["train"] == theirs["generations"][0]["train"]
    # Its provenance: where it was found, and what it is.
    record = {
        "source": str(strict),
        "config_hash": theirs["config_hash"],
        "sha256": hashlib.sha256(before[0]).hexdigest(),
        "seeding": SEEDING_SCHEME,
        "kind": "run",
    }
    state = RunFolder(shared.path).read_state()
    for written in (shared.summary, state):
        assert written["patriarch"] == record
        assert (written["torch"], written["device"]) == (torch.__version__, "cpu")
        assert (written["kdgen"], written["threads"]) == (
            kdgen.__version__,
            [torch.get_num_threads()],
        )
        assert (written["seeding"], written["student_loss"]) == (SEEDING_SCHEME, "kd")


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
def test_every_differing_key_is_named(fast_config: Callable[..., Config], strict: Path) -> None:
    """Batch size, optimiser, model arguments and the resolved layout (channels_last unset
    is channels_last on the CPU), named in one line, sorted."""
    overrides = (
        "data.batch_size=25",
        "schedule.weight_decay=0.001",
        "schedule.momentum=0.5",
        "schedule.nesterov=false",
        "model_args.widths=[8,16,32]",
        "channels_last=false",
    )
    with pytest.raises(CheckpointError) as refused:
        _load(fast_config, strict, *overrides, out="x")
    assert str(refused.value) == (
        f"patriarch {strict} does not match this run: it was trained with "
        "data.batch_size=50, layout='channels_last', model_args.widths=None, "
        "schedule.momentum=0.9, schedule.nesterov=True, schedule.weight_decay=0.0005, "
        "this run has data.batch_size=25, layout='contiguous', "
        "model_args.widths=[8, 16, 32], schedule.momentum=0.5, schedule.nesterov=False, "
        "schedule.weight_decay=0.001"
    )


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


@pytest.mark.slow
def test_the_patriarch_enters_the_hash_by_what_it_is(
    fast_config: Callable[..., Config], strict: Path, tmp_path: Path
) -> None:
    moved = shutil.copytree(strict, tmp_path / "elsewhere" / "strict")
    here, there = _load(fast_config, strict, out="here"), _load(fast_config, moved, out="there")
    assert here.summary["config_hash"] == there.summary["config_hash"]
    assert (here.summary["patriarch"]["source"], there.summary["patriarch"]["source"]) == (
        str(strict),
        str(moved),
    )
    # Another gen0 under the same config is another patriarch: another hash.
    checkpoint = RunFolder(moved).generation_checkpoint(0)
    payload = load_checkpoint(checkpoint)
    first = next(iter(payload["model"]))
    payload["model"][first] = payload["model"][first] + 1
    save_checkpoint(checkpoint, payload)
    config = fast_config("process=D(1.0,0.6)", "generations=0", f"patriarch={moved}")
    assert begin_run(config, CPU, {}).digest != here.summary["config_hash"]


def test_a_run_folder_from_before_the_record_keeps_its_hash() -> None:
    """1a8af958f18a2e44 is the hash kdgen gave this config before it hashed the patriarch
    by what it is (commit 38b3c8f): the path itself entered it."""
    config = build_config("smoke", ["process=D(1.0,0.6)", "patriarch=/elsewhere/runs/strict"])
    assert legacy_config_hash(config) == "1a8af958f18a2e44"
    assert run_digest(config, {"status": "finished"}) == "1a8af958f18a2e44"
    with pytest.raises(ValueError, match="identity"):
        config_hash(config)
    record = {"source": "runs/strict", "config_hash": "c4cb722c5128fc17", "sha256": "ab" * 32}
    moved = build_config("smoke", ["process=D(1.0,0.6)", "patriarch=/other/place"])
    digest = run_digest(config, {"patriarch": record})
    assert digest == run_digest(moved, {"patriarch": record}) != "1a8af958f18a2e44"


@pytest.mark.slow
def test_a_run_that_loaded_its_patriarch_passes_it_on_before_and_after_the_record(
    fast_config: Callable[..., Config], strict: Path, tmp_path: Path
) -> None:
    """Its gen0 checkpoint carries its own hash: with the record, the path-free one; in a
    folder written before the record (as the committed studies' were), the one with the
    patriarch's path, which is still accepted."""
    born = _load(fast_config, strict, out="born")
    expected = born.summary["generations"][0]["test"]
    chained = _load(fast_config, born.path, "process=D(1.0,0.3)", out="c1")
    assert chained.summary["generations"][0]["test"] == expected
    old = RunFolder(shutil.copytree(born.path, tmp_path / "old"))
    payload = load_checkpoint(old.generation_checkpoint(0))
    payload["config_hash"] = legacy_config_hash(old.read_config())
    save_checkpoint(old.generation_checkpoint(0), payload)
    _with_record(old.path, patriarch=None, seeding=None, threads=None)
    again = _load(fast_config, old.path, "process=D(1.0,0.3)", out="c2")
    assert again.summary["generations"][0]["test"] == expected


@pytest.mark.slow
def test_another_thread_count_or_seeding_scheme_warns_and_loads(
    fast_config: Callable[..., Config],
    strict: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    threads = torch.get_num_threads()
    copy = shutil.copytree(strict, tmp_path / "older")
    _with_record(copy, threads=[threads + 1], seeding=1)
    with caplog.at_level(logging.WARNING, logger="kdgen"):
        loaded = _load(fast_config, copy, out="loaded")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert f"trained with {threads + 1} torch thread(s), this process uses {threads}" in warnings[0]
    assert "was trained under seeding scheme 1, this run draws by scheme 2" in warnings[1]
    assert loaded.summary["patriarch"]["seeding"] == 1


@pytest.mark.slow
def test_a_resume_is_refused_under_another_seeding_scheme_and_warned_of_other_threads(
    strict: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under another recorded scheme its remaining epochs would draw other streams than its
    first ones: exit 2, one line. Another thread count (a sweep resumed with other --jobs)
    resumes with a warning, as does a folder from before the seeding record."""
    run = shutil.copytree(strict, tmp_path / "run")
    _with_record(run, seeding=1)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "trained under seeding scheme 1" in err and "--force-new" in err
    threads = torch.get_num_threads()
    _with_record(run, seeding=SEEDING_SCHEME, threads=[threads + 1])
    with caplog.at_level(logging.WARNING, logger="kdgen"):
        assert main(["train", "--resume", str(run)]) == 0
    assert f"trained with {threads + 1} torch thread(s), this process uses {threads}" in caplog.text
    assert RunFolder(run).read_state()["threads"] == [threads + 1, threads]
    assert (RunFolder(run).read_summary() or {})["threads"] == [threads + 1, threads]
    caplog.clear()
    _with_record(run, seeding=None)
    with caplog.at_level(logging.WARNING, logger="kdgen"):
        assert main(["train", "--resume", str(run)]) == 0
    assert f"run {run} records no seeding scheme" in caplog.text
    assert "seeding" not in RunFolder(run).read_state()  # not claimed on resume


# What kdgen records of a run's provenance since the record (absent from older folders).
PROVENANCE = ("torch", "kdgen", "device", "threads", "seeding", "student_loss", "patriarch")


@pytest.mark.slow
def test_a_run_folder_hashed_with_its_patriarchs_path_still_resumes(
    fast_config: Callable[..., Config],
    strict: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run stopped in generation 1 as kdgen left it before the record (its checkpoints
    and summary carry the hash of the patriarch's absolute path, its run.json and summary
    no provenance) resumes from its folder alone, keeps that hash and ends as a run that
    was never stopped."""
    reference = _load(fast_config, strict, "generations=1", out="ref")
    polls = itertools.count(1)  # stops at the 6th poll: in generation 1's first epoch
    monkeypatch.setattr(preemption, "stop_requested", lambda: next(polls) >= 6)
    with pytest.raises(TrainingStopped) as stopped:
        _load(fast_config, strict, "generations=1", out="old")
    monkeypatch.undo()
    assert (stopped.value.generation, stopped.value.epoch) == (1, 1) and stopped.value.step > 0
    old = RunFolder(tmp_path / "old")
    legacy = legacy_config_hash(old.read_config())
    assert str(strict) == old.read_config().patriarch and strict.is_absolute()
    for checkpoint in (old.generation_checkpoint(0), old.last_checkpoint):
        payload = load_checkpoint(checkpoint)
        payload["config_hash"] = legacy
        save_checkpoint(checkpoint, payload)
    summary = {k: v for k, v in (old.read_summary() or {}).items() if k not in PROVENANCE}
    atomic_write_json(old.summary_path, {**summary, "config_hash": legacy})
    _with_record(old.path, **dict.fromkeys(PROVENANCE))
    with caplog.at_level(logging.WARNING, logger="kdgen"):
        assert main(["train", "--resume", str(old.path)]) == 0
    assert "records no seeding scheme" in caplog.text
    resumed = old.read_summary() or {}
    assert resumed["config_hash"] == legacy != reference.summary["config_hash"]
    assert resumed["generations"] == reference.summary["generations"]
    assert "patriarch" not in resumed and "patriarch" not in old.read_state()

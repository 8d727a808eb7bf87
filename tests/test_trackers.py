"""Experiment trackers (``loggers``): one tracked run per kdgen run, with the resolved config
as parameters and every metric of metrics.jsonl; a sweep groups its runs. MLflow writes a
local SQLite store, read back here with its client; W&B runs offline without an API key."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from kdgen.cli import main
from kdgen.config import build_config, config_hash
from kdgen.errors import ConfigError
from kdgen.generations import train_generations
from kdgen.runs import RunFolder
from kdgen.sweep import plan_sweep
from kdgen.trackers import TRACKERS, metric_values, mlflow_uri, selected_loggers
from tests.conftest import FAST


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracking server, no W&B key: the trackers' local defaults."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_PROJECT", "kdgen-tests")


def test_loggers_are_checked_and_change_no_config_hash() -> None:
    with pytest.raises(ConfigError, match="loggers: 'neptune' must be one of tensorboard, mlflow"):
        build_config("smoke", ["loggers=[neptune]"])
    with pytest.raises(ConfigError, match="names a logger twice"):
        build_config("smoke", ["loggers=[mlflow,mlflow]"])
    config = build_config("smoke", ["loggers=[tensorboard,wandb]", "tensorboard=false"])
    assert selected_loggers(config) == ["wandb"]
    assert selected_loggers(build_config("smoke")) == ["tensorboard"]
    extras = ["loggers=[mlflow]", "imports=[os.path]", "sweep_dir=elsewhere"]
    assert config_hash(build_config("smoke", extras)) == config_hash(build_config("smoke"))


def test_a_missing_extra_is_named_with_its_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = replace(TRACKERS["mlflow"], package="kdgen_absent_tracker_package")
    monkeypatch.setitem(TRACKERS, "mlflow", absent)
    out = tmp_path / "run"
    assert main(["train", "smoke", *FAST, "loggers=[mlflow]", "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.endswith("pip install 'kdgen[mlflow]'") and len(message.splitlines()) == 1
    assert not out.exists()
    sweep = ["sweep", "smoke", *FAST, "loggers=[mlflow]", "--processes", "D(1.0,0.0)"]
    assert main([*sweep, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith("pip install 'kdgen[mlflow]'")
    assert not out.exists()  # refused before the sweep's plan is written


def test_metric_names_carry_generation_and_split() -> None:
    record = {"generation": 2, "epoch": 3, "split": "val", "top1": 0.5, "dist_c": None, "n": 7}
    assert metric_values(record) == {"gen2/val/top1": 0.5, "gen2/val/n": 7.0}


def test_mlflows_store_is_the_run_folders_or_the_tracking_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_uri(tmp_path) == "http://127.0.0.1:5000"


@pytest.mark.slow
@pytest.mark.usefixtures("offline")
def test_each_run_of_a_sweep_is_one_tracked_run_in_the_sweeps_group(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    out = tmp_path / "study"
    overrides = (*FAST, "schedule.epochs=2", "generations=1", "loggers=[mlflow,wandb]")
    runs = plan_sweep("smoke", ["D(1.0,0.0)", "D(0.6,0.6)"], [0], out, overrides)
    assert all(f"sweep_dir={out}" in run.overrides for run in runs)
    untracked = plan_sweep("smoke", ["D(1.0,0.0)"], [0], tmp_path / "plain", FAST)
    assert not any(o.startswith("sweep_dir=") for o in untracked[0].overrides)
    for run in runs:  # one after another, in this process
        train_generations(build_config("smoke", [*run.overrides, f"out_dir={run.path}"]))

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("study")
    assert experiment is not None
    found = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in found) == ["D0.6-0.6/seed0", "D1.0-0.0/seed0"]
    run_dir = Path(runs[1].path)
    state = json.loads((run_dir / "run.json").read_text())
    tracked = state["trackers"]["mlflow"]
    mlflow_run = client.get_run(tracked["run_id"])
    assert mlflow_run.info.status == "FINISHED"
    params = mlflow_run.data.params
    assert (params["model"], params["process"], params["schedule.epochs"]) == (
        "tiny_cnn",
        "D(0.6,0.6)",
        "2",
    )
    records = RunFolder(run_dir).read_metrics()
    assert set(mlflow_run.data.metrics) == {k for r in records for k in metric_values(r)}
    history = client.get_metric_history(tracked["run_id"], "gen1/test/top1")
    tests = [r for r in records if r["generation"] == 1 and r["split"] == "test"]
    assert [(m.step, m.value) for m in history] == [(r["epoch"], r["top1"]) for r in tests]

    wandb = state["trackers"]["wandb"]
    assert (wandb["mode"], wandb["project"], wandb["group"]) == ("offline", "kdgen-tests", "study")
    offline_dir = Path(wandb["dir"])
    assert offline_dir.parent == run_dir / "wandb" and offline_dir.name.startswith("offline-run")
    log = (offline_dir / f"run-{wandb['id']}.wandb").read_bytes()
    assert b"gen1/test/top1" in log and b"gen0/train/loss_reg" in log and b"D(0.6,0.6)" in log

    folder = RunFolder(run_dir)  # a resume continues the same tracked runs
    folder.open_trackers(build_config("smoke", [*runs[1].overrides, f"out_dir={run_dir}"]))
    reopened = json.loads((run_dir / "run.json").read_text())["trackers"]
    folder.close()
    assert reopened["mlflow"] == tracked and reopened["wandb"]["id"] == wandb["id"]

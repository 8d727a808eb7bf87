"""Sweep executors: parallel local jobs with a shared patriarch, failures, kill and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kdgen.cli import main
from kdgen.errors import ConfigError
from kdgen.executors import LocalExecutor, available_cores, exit_status, launch_order
from kdgen.runs import RunFolder
from kdgen.sweep import plan_sweep, read_plan, run_status, write_plan
from tests.conftest import FAST

STUDY = (*FAST, "generations=1")
PROCESSES = ("D(1.0,0.0)", "D(1.0,0.6)")


def _sweep_argv(out: Path) -> list[str]:
    return ["sweep", "smoke", *STUDY, "--processes", *PROCESSES, "--jobs", "2", "--out", str(out)]


def _summaries(out: Path) -> dict[str, dict[str, object]]:
    """Every run's summary without where its patriarch was found (in its own sweep); what
    the patriarch is, and so the config hash, is the same in every sweep."""
    summaries = {}
    for path in sorted(out.glob("*/seed*/summary.json")):
        summary = json.loads(path.read_text())
        if summary["patriarch"] is not None:
            summary["patriarch"].pop("source")
        summaries[str(path.parent.relative_to(out))] = summary
    return summaries


def _wait_until_gone(out: Path) -> None:
    """Wait for the SIGKILLed trainings to vanish (the kill is delivered asynchronously)."""
    for resources in out.glob("*/seed*/resources.json"):
        pid = json.loads(resources.read_text())["pid"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _exists(pid):
            time.sleep(0.05)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rpartition(")")[2].split()[0] == "Z")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-job sweep: a strict patriarch and a run that shares it."""
    out = tmp_path_factory.mktemp("reference")
    assert main(_sweep_argv(out)) == 0
    return out


@pytest.mark.slow
def test_two_jobs_share_the_patriarch_and_split_the_cores(reference: Path) -> None:
    patriarch, born_again = reference / "D1.0-0.0" / "seed0", reference / "D1.0-0.6" / "seed0"
    assert run_status(patriarch) == run_status(born_again) == "finished"
    strict = json.loads((patriarch / "summary.json").read_text())["generations"][0]
    shared = json.loads((born_again / "summary.json").read_text())["generations"][0]
    assert shared["test"] == strict["test"] and shared["train"] == strict["train"]
    # Each run was trained once, and the second started only once gen0 was on disk.
    for run in (patriarch, born_again):
        assert (run / "train.log").read_text().count("\n$ ") == 1
    resources = json.loads((born_again / "resources.json").read_text())
    assert resources["started"] >= (patriarch / "checkpoints" / "gen0.pt").stat().st_mtime
    assert resources["threads"] == max(1, available_cores() // 2)
    recorded = json.loads((born_again / "run.json").read_text())  # what the training used
    assert recorded["threads"] == [resources["threads"]]
    assert resources["jobs"] == 2
    assert not any(r["generation"] == 0 for r in RunFolder(born_again).read_metrics())


@pytest.mark.slow
def test_a_failing_run_stops_neither_the_others_nor_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two GPUs as CUDA_VISIBLE_DEVICES names them (on a CPU machine the runs still use CPU).
    monkeypatch.setattr("kdgen.executors.visible_gpus", lambda: ["3", "5"])
    good, bad, child = plan_sweep(
        "smoke", ["D(0.6,0.6)", "D(1.0,0.0)", "D(1.0,0.6)"], [0], tmp_path, STUDY
    )
    # Valid when planned, broken when run: the data set is not where the config says.
    bad = replace(bad, overrides=(*bad.overrides, "data.name=cifar100", "data.root=/nonexistent"))
    write_plan(tmp_path, "smoke", [good, bad, child], {"jobs": 2})
    code = main(["sweep", "--resume", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1
    assert run_status(good.path) == "finished"
    assert "kdgen: error:" in (Path(bad.path) / "train.log").read_text()
    assert not (Path(child.path) / "train.log").exists()  # its patriarch never existed
    # The run's error, the last line of its train.log, beside "failed":
    error = "kdgen: error: CIFAR-100 not found: looked for /nonexistent/cifar-100-python/"
    assert re.search(rf"D\(1\.0,0\.0\) seed 0: failed in \d+\.\ds: {re.escape(error)}", out)
    assert f"run failed: {bad.path}: {error}" in err and f"(log: {bad.path}/train.log)" in err
    assert f"run failed: {child.path}" in err
    table = out[out.index("process  ") :].splitlines()
    assert [line.split()[2] for line in table[1:4]] == ["finished", "failed", "failed"]
    devices = {RunFolder(r.path).read_resources()["cuda_visible_devices"] for r in (good, bad)}
    assert devices == {"3", "5"}  # started together: one GPU each


def test_more_jobs_than_gpus_only_when_asked() -> None:
    with pytest.raises(ConfigError, match="--share-gpus"):
        LocalExecutor(jobs=3, gpus=["0", "1"])
    shared = LocalExecutor(jobs=3, gpus=["0", "1"], share_gpus=True, cores=8)
    assert shared.threads == 2
    assert LocalExecutor(jobs=4, cores=2).threads == 1


@pytest.mark.slow
def test_the_executor_skips_finished_runs(reference: Path) -> None:
    _, runs, _ = read_plan(reference)
    lines: list[str] = []
    outcomes = LocalExecutor(jobs=2, print_fn=lambda line, **_: lines.append(line)).execute(
        "smoke", runs
    )
    assert [o.state for o in outcomes] == ["skipped", "skipped"]
    assert exit_status(outcomes) == 0 and all("finished earlier" in line for line in lines)


@pytest.mark.slow
def test_a_killed_sweep_resumes_to_the_uninterrupted_results(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "kdgen", *_sweep_argv(out)]
    sweep = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    last = out / "D1.0-0.0" / "seed0" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and sweep.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(sweep.pid, signal.SIGKILL)  # the sweep and every training it started
    sweep.wait()
    _wait_until_gone(out)
    assert run_status(out / "D1.0-0.0" / "seed0") == "running"  # killed mid-training
    assert main(["status", str(out)]) == 0
    header, patriarch, born_again = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["process", "seed", "state", "generation", "epoch", "test", "top-1"]
    assert patriarch.split()[:3] == ["D(1.0,0.0)", "0", "interrupted"]  # its pid is gone
    assert born_again.split()[2] in ("waiting", "interrupted")

    assert main(_sweep_argv(out)) == 0
    assert _summaries(out) == _summaries(reference)
    assert len(_summaries(out)) == 2
    assert main(["status", str(out)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[-2:]
    assert [row.split()[2:5] for row in rows] == [["finished", "1", "2"]] * 2


@pytest.mark.slow
def test_sigterm_to_the_sweep_stops_each_training_gracefully_once(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "kdgen", *_sweep_argv(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    last = out / "D1.0-0.0" / "seed0" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and sweep.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    sweep.send_signal(signal.SIGTERM)  # to the sweep alone: it passes the signal on
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, output
    state = RunFolder(out / "D1.0-0.0" / "seed0").read_state()
    assert state["status"] == "interrupted" and "SIGTERM" in state["reason"]  # saved, not killed
    assert "D(1.0,0.0) seed 0: interrupted" in output


def test_patriarchs_start_first_and_dependent_runs_last(tmp_path: Path) -> None:
    specs = ["D(1.0,0.0)", "D(1.0,0.6)", "D(0.6,0.6)"]
    runs = plan_sweep("smoke", specs, [0, 1], tmp_path)
    order = [(run.label, run.seed) for run in launch_order(runs)]
    assert order == [
        ("D(1.0,0.0)", 0),
        ("D(1.0,0.0)", 1),
        ("D(0.6,0.6)", 0),
        ("D(0.6,0.6)", 1),
        ("D(1.0,0.6)", 0),
        ("D(1.0,0.6)", 1),
    ]

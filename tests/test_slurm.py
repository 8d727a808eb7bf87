"""kdgen sweep --executor slurm against fake Slurm commands that record their arguments."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from submitit.core.utils import DelayedSubmission

from kdgen.cli import main
from kdgen.errors import ConfigError
from kdgen.executors import TrainJob, parse_minutes, train_argv
from kdgen.sweep import plan_sweep, read_plan
from tests.conftest import FAST

SBATCH = """#!/usr/bin/env bash
here=$(dirname "$0")
id=$(( $(cat "$here/last_id" 2>/dev/null || echo 4000) + 1 ))
echo "$id" > "$here/last_id"
echo "sbatch $*" >> "$here/calls.log"
echo "Submitted batch job $id"
"""
SQUEUE = """#!/usr/bin/env bash
echo "squeue $*" >> "$(dirname "$0")/calls.log"
cat "$(dirname "$0")/squeue.out" 2>/dev/null || true
"""
RECORD = """#!/usr/bin/env bash
echo "{name} $*" >> "$(dirname "$0")/calls.log"
"""


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of fake sbatch, squeue, sacct, scancel and srun, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"sbatch": SBATCH, "squeue": SQUEUE}
    for name in ("sacct", "scancel", "srun"):
        scripts[name] = RECORD.format(name=name)
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def _calls(slurm: Path, command: str) -> list[str]:
    log = slurm / "calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.startswith(f"{command} ")]


def _submission(run: Path, job_id: int) -> str:
    return (run / "slurm" / str(job_id) / f"{job_id}_submission.sh").read_text()


ARGV = [
    "sweep",
    "smoke",
    *FAST,
    "--processes",
    "D(1.0,0.0)",
    "D(1.0,0.6)",
    "D(0.6,0.6)",
    "--executor",
    "slurm",
    "--partition",
    "gpu",
    "--gpus-per-job",
    "1",
    "--cpus-per-job",
    "8",
    "--mem",
    "32G",
    "--time",
    "1-12:00:00",
    "--slurm-opt",
    "account=proj",
    "--slurm-opt",
    "qos=high",
]


@pytest.mark.slow
def test_one_job_per_run_with_resources_and_patriarch_dependencies(
    slurm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    assert main([*ARGV, "--out", str(out)]) == 0
    assert "Slurm job 4002, after job 4001" in capsys.readouterr().out
    submitted = _calls(slurm, "sbatch")
    assert len(submitted) == 3 and all(str(out) in call for call in submitted)
    strict, born_again, tolerant = (out / p / "seed0" for p in ("D1.0-0.0", "D1.0-0.6", "D0.6-0.6"))
    scripts = {4001: _submission(strict, 4001), 4002: _submission(born_again, 4002)}
    scripts[4003] = _submission(tolerant, 4003)
    for script in scripts.values():
        for flag in (
            "--partition=gpu",
            "--gpus-per-node=1",
            "--cpus-per-task=8",
            "--mem=32G",
            "--time=2160",
            "--account=proj",
            "--qos=high",
            "--signal=USR2@90",  # submitit's warning before the limit: checkpoint, requeue
        ):
            assert f"#SBATCH {flag}\n" in script
        assert re.search(r"-m submitit\.core\._submit \S+/seed0/slurm/%j\n", script)
    assert "#SBATCH --dependency=afterok:4001\n" in scripts[4002]
    assert "dependency" not in scripts[4001] and "dependency" not in scripts[4003]

    # What each job will run: kdgen train for its own run, with its cpus as torch threads.
    preset, runs, _ = read_plan(out)
    for job_id, run in zip((4001, 4002, 4003), runs, strict=True):
        pickled = Path(run.path) / "slurm" / str(job_id) / f"{job_id}_submitted.pkl"
        job = DelayedSubmission.load(pickled).function
        assert isinstance(job, TrainJob) and job.run == run and job.threads == 8
    assert f"patriarch={strict}" in runs[1].overrides
    assert train_argv(preset, runs[0])[-2:] == ["--out", str(strict)]


@pytest.mark.slow
def test_a_rerun_submits_only_runs_without_an_active_job(
    slurm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    assert main([*ARGV, "--out", str(out)]) == 0
    (slurm / "squeue.out").write_text("PENDING\n")  # every earlier job is still queued
    assert main(["sweep", "--resume", str(out)]) == 0
    assert len(_calls(slurm, "sbatch")) == 3
    assert capsys.readouterr().out.count("already Slurm job") == 3
    (slurm / "squeue.out").write_text("")  # gone from the queue (failed or cancelled)
    assert main(["sweep", "--resume", str(out)]) == 0
    assert len(_calls(slurm, "sbatch")) == 6
    assert "#SBATCH --partition=gpu\n" in _submission(out / "D1.0-0.0" / "seed0", 4004)


@pytest.mark.slow
def test_a_preempted_job_stops_training_and_resubmits_itself(tmp_path: Path) -> None:
    (run,) = plan_sweep("smoke", ["D(1.0,0.0)"], [0], tmp_path, FAST)
    job = TrainJob("smoke", run, threads=2)
    job._process = subprocess.Popen(["sleep", "30"])
    resubmission = job.checkpoint()
    assert job._process.returncode == -signal.SIGTERM  # asked to stop (it saves and exits)
    assert isinstance(resubmission.function, TrainJob) and resubmission.function.run == run
    # The requeued job resumes the run from its checkpoints.
    Path(run.path).mkdir(parents=True)
    (Path(run.path) / "config.yaml").write_text("name: smoke\n")
    assert train_argv("smoke", run)[-2:] == ["--resume", run.path]


def test_slurm_times_are_read_as_minutes() -> None:
    assert [parse_minutes(t) for t in ("90", "1:30:00", "2-00:00:00", "2-12", "0:30")] == [
        90,
        90,
        2880,
        3600,
        1,
    ]
    with pytest.raises(ConfigError):
        parse_minutes("soon")

"""Real kills: SIGKILL a training process at random moments, resume after each kill, and
end with exactly the summary of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdgen.runs import RunFolder, load_checkpoint
from tests.conftest import FAST

ARGS = ["smoke", *FAST, "schedule.epochs=3", "generations=2", "data.batch_size=10"]


def _launch(run: Path, *extra: str) -> subprocess.Popen[bytes]:
    resume = ["--resume", str(run)] if (run / "config.yaml").exists() else ["--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "kdgen",
        "train",
        *([*ARGS, *extra] if resume[0] != "--resume" else []),
    ]
    return subprocess.Popen(
        [*command, *resume], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )


def _uninterrupted(run: Path, *extra: str) -> dict:
    """The reference summary, from a child process with the same environment (thread count
    included) as the killed ones, so float results are comparable bit for bit."""
    process = _launch(run, *extra)
    _, err = process.communicate(timeout=180)
    assert process.returncode == 0, err.decode()
    return json.loads((run / "summary.json").read_text())


def _wait_until_training(run: Path, process: subprocess.Popen[bytes], since: float) -> None:
    """Until this process has written run.json (it has loaded its data), or has ended."""
    deadline = time.monotonic() + 60
    state = run / "run.json"
    while process.poll() is None and time.monotonic() < deadline:
        if state.exists() and state.stat().st_mtime > since:
            return
        time.sleep(0.01)


def _phase(run: Path) -> str:
    """Where a killed run stood: in a generation, or between two."""
    folder = RunFolder(run)
    if not folder.last_checkpoint.exists():
        return "before the first checkpoint"
    state = load_checkpoint(folder.last_checkpoint)
    done = folder.generation_checkpoint(state["generation"]).exists()
    if done:
        return f"between generations {state['generation']} and {state['generation'] + 1}"
    return f"generation {state['generation']}, epoch {state['epoch']}, step {state['step']}"


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "precision"), [(0, "fp32"), (1, "bf16")])
def test_random_kills_then_resume_give_the_uninterrupted_summary(
    tmp_path: Path, seed: int, precision: str
) -> None:
    reference = _uninterrupted(tmp_path / "ref", f"precision={precision}")
    rng = random.Random(seed)
    run, kills, phases, with_temp = tmp_path / "run", 0, [], 0
    while True:
        since = time.time() - 0.01
        process = _launch(run, f"precision={precision}")
        if kills < 5:
            _wait_until_training(run, process, since)
            time.sleep(rng.uniform(0.0, 1.2))
        if kills >= 5 or process.poll() is not None:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, err.decode()
            break
        with_temp += bool(list(run.glob("**/.*.tmp")))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        phases.append(_phase(run))
    print(f"seed {seed}: {kills} kills at {phases}; {with_temp} with a temp file present")
    assert kills == 5
    assert json.loads((run / "summary.json").read_text()) == reference
    assert not list(run.glob("**/.*.tmp"))


# A child whose fsync is slow, so that a checkpoint write lasts long enough to be killed in.
SLOW_FSYNC = (
    "import os, sys, time\n"
    "real = os.fsync\n"
    "def slow(fd):\n"
    "    time.sleep(0.4)\n"
    "    return real(fd)\n"
    "os.fsync = slow\n"
    "from kdgen.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL while a temporary checkpoint file exists (the write is under way): the
    resumed run still ends with the uninterrupted summary, and no temporary file stays."""
    reference = _uninterrupted(tmp_path / "ref")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_FSYNC, "train", *ARGS, "--out", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 120
    temporary: list[Path] = []
    while child.poll() is None and time.monotonic() < deadline:
        temporary = (
            list((run / "checkpoints").glob(".*.tmp")) if (run / "checkpoints").exists() else []
        )
        if (
            any("last.pt" in p.name for p in temporary)
            and (run / "checkpoints" / "last.pt").exists()
        ):
            break  # a second or later last.pt write is under way
        time.sleep(0.005)
    assert child.poll() is None, "the run ended before a checkpoint write could be caught"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert temporary, "no temporary file was seen"
    load_checkpoint(run / "checkpoints" / "last.pt")  # the previous checkpoint is intact
    resumed = _launch(run)
    _, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err.decode()
    assert not list(run.glob("**/.*.tmp"))
    assert json.loads((run / "summary.json").read_text()) == reference

"""Graceful preemption: a stop request saves a resumable state, and resuming from it gives
exactly the result of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from kdgen import generations, preemption, runs, seeding
from kdgen.cli import main
from kdgen.config import Config, config_hash
from kdgen.errors import CheckpointError
from kdgen.generations import train_generations
from kdgen.preemption import TrainingStopped
from kdgen.runs import RunFolder, load_checkpoint
from tests.conftest import FAST


def _stop_after(polls: int) -> Callable[[], bool]:
    """A stop predicate that turns true at its ``polls``-th call."""
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= polls

    return stop


@pytest.mark.slow
@pytest.mark.parametrize(
    ("polls", "where", "precision"),
    [
        (6, (0, 1, 5), "fp32"),  # inside gen 0's first epoch, after its 5th step
        (6, (0, 1, 5), "bf16"),
        (15, (0, 1, 14), "bf16"),  # at the end of gen 0's first epoch
        (29, (1, 0, 0), "bf16"),  # between generations 0 and 1
    ],
)
def test_stop_then_resume_matches_an_uninterrupted_run(
    fast_config: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
    polls: int,
    where: tuple[int, int, int],
    precision: str,
) -> None:
    reference = train_generations(fast_config(f"precision={precision}", out="ref"))
    monkeypatch.setattr(preemption, "stop_requested", _stop_after(polls))
    with pytest.raises(TrainingStopped) as stopped:
        train_generations(fast_config(f"precision={precision}", out="run"))
    monkeypatch.undo()
    assert (stopped.value.generation, stopped.value.epoch, stopped.value.step) == where
    folder = RunFolder(reference.path.with_name("run"))
    state = folder.read_state()
    assert state["status"] == "interrupted" and str(stopped.value) in state["reason"]
    if where[2] not in (0, 14):
        saved = load_checkpoint(folder.last_checkpoint)
        assert (saved["generation"], saved["epoch"], saved["step"]) == (0, 0, where[2])
    resumed = train_generations(fast_config(f"precision={precision}", out="run"), resume=True)
    assert resumed.summary == reference.summary
    assert folder.summary_path.read_bytes() == (reference.path / "summary.json").read_bytes()


@pytest.mark.slow
def test_sigint_in_the_cli_exits_130_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = generations.RunHooks.save_state

    def save_then_signal(self, state):  # type: ignore[no-untyped-def]
        real_save(self, state)
        os.kill(os.getpid(), signal.SIGINT)  # handled: sets the flag, raises nothing here

    monkeypatch.setattr(generations.RunHooks, "save_state", save_then_signal)
    run = tmp_path / "run"
    code = main(["train", "smoke", *FAST, "--out", str(run)])
    _, err = capsys.readouterr()
    assert code == 130
    assert err.strip() == (
        f"kdgen: interrupted by SIGINT at generation 0, epoch 1, step 14; "
        f"resume with: kdgen train --resume {run}"
    )
    assert RunFolder(run).read_state()["status"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@pytest.mark.slow
def test_sigterm_to_a_training_process(tmp_path: Path) -> None:
    """A real SIGTERM: exit 143, run.json interrupted, and the resumed run's summary equals
    an uninterrupted run's."""
    args = ["smoke", *FAST, "schedule.epochs=3", "data.batch_size=10"]
    run, ref = tmp_path / "run", tmp_path / "ref"
    process = subprocess.Popen(
        [sys.executable, "-m", "kdgen", "train", *args, "--out", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("kdgen: interrupted by SIGTERM at generation")
    assert err.strip().endswith(f"resume with: kdgen train --resume {run}")
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert main(["train", "--resume", str(run)]) == 0
    assert main(["train", *args, "--out", str(ref)]) == 0
    assert json.loads((run / "summary.json").read_text()) == json.loads(
        (ref / "summary.json").read_text()
    )


@pytest.mark.slow
def test_resumable_checkpoint_contents_and_config_check(
    fast_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preemption, "stop_requested", _stop_after(4))
    with pytest.raises(TrainingStopped):
        train_generations(fast_config(out="run"))
    monkeypatch.undo()
    folder = RunFolder(fast_config(out="run").out_dir or "")
    state = load_checkpoint(folder.last_checkpoint)  # weights_only: plain types only
    for key in ("config_hash", "generation", "epoch", "step", "optimizer", "scheduler"):
        assert key in state, key
    assert {"torch_rng", "numpy_rng", "python_rng", "partial"} <= set(state)
    assert len(state["python_rng"]["state"]) == 625 and state["numpy_rng"]["keys"].numel() == 624

    random.seed(3)
    np.random.seed(3)
    seeding.restore_rng_state({**state, "torch_rng": torch.get_rng_state()})
    saved_python, saved_numpy = random.random(), np.random.rand()
    seeding.restore_rng_state({**state, "torch_rng": torch.get_rng_state()})
    assert (random.random(), np.random.rand()) == (saved_python, saved_numpy)

    other = fast_config("process=D(0.7,0.6)", out="run")
    with pytest.raises(CheckpointError, match=r"another config \(eta: 0\.6 -> 0\.7"):
        folder.resume_state(0, config_hash(other), other)
    incomplete = {k: v for k, v in state.items() if k != "scheduler"}
    with pytest.raises(CheckpointError, match="lacks scheduler"):
        runs.check_resume_state(incomplete, folder.last_checkpoint, state["config_hash"])


def test_cpu_state_has_no_cuda_rng_and_restores_without_it() -> None:
    """On a process that never used CUDA nothing is saved for it, and a state without it
    (CPU, or an older checkpoint) restores the CPU generator alone."""
    assert seeding.cuda_rng_state() == {}
    torch.manual_seed(5)
    state = {"torch_rng": torch.get_rng_state()}
    expected = torch.rand(3)
    torch.manual_seed(6)
    seeding.restore_rng_state(state)
    assert torch.equal(torch.rand(3), expected)


def test_cuda_rng_is_saved_per_device_and_restored_on_the_devices_present(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With CUDA in use every device's generator state is saved; a resume on a machine with
    fewer devices restores those it has (CUDA itself is stood in for: no GPU here)."""
    states = [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]
    restored: list[tuple[int, int]] = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    assert seeding.cuda_rng_state() == {"cuda_rng": states}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state), device))
    )
    seeding.restore_rng_state({"torch_rng": torch.get_rng_state(), "cuda_rng": states})
    assert restored == [(1, 0)]

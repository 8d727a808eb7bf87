"""The divergence guard: a non-finite loss or a gradient norm above max_grad_norm stops
training with one line, and the last good checkpoint stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdgen.cli import main
from kdgen.runs import RunFolder, load_checkpoint
from tests.conftest import FAST


@pytest.mark.slow
def test_non_finite_loss_stops_with_one_line_and_keeps_the_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    diverge = "generation_schedules={1: {lr: 1.0e+6}}"  # generation 0 trains normally
    code = main(["train", "smoke", *FAST, diverge, "--out", str(run)])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("kdgen: error: training diverged at generation 1, epoch 1, step ")
    assert "a non-finite loss" in lines[0] and "last good checkpoint is kept" in lines[0]
    folder = RunFolder(run)
    assert folder.read_state()["status"] == "failed"
    state = load_checkpoint(folder.last_checkpoint)
    assert (state["generation"], state["epoch"], state["step"]) == (0, 2, 0)
    assert all(v.isfinite().all() for v in state["model"].values() if v.is_floating_point())


def test_gradient_norm_bound_is_checked_every_n_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    bound = ["max_grad_norm=1.0e-6", "check_every=3"]
    assert main(["train", "smoke", *FAST, *bound, "--out", str(run)]) == 2
    _, err = capsys.readouterr()
    assert err.strip().startswith(
        "kdgen: error: training diverged at generation 0, epoch 1, step 3: "
        "a gradient norm above 1e-06 (checked every 3 steps)"
    )
    assert not RunFolder(run).last_checkpoint.exists(), "a state past the bound was saved"

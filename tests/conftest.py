"""Shared fixtures: small, fast configs built from the shipped ``smoke`` preset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kdgen.cli import main
from kdgen.config import Config, build_config

# Two epochs a generation on a very small synthetic set: for tests of the mechanics.
FAST = (
    "schedule.epochs=2",
    "data.synthetic.train_per_class=8",
    "data.synthetic.test_per_class=2",
    "data.val_size=100",
    "data.batch_size=50",
    "progress=false",
    "tensorboard=false",
)


@pytest.fixture
def fast_config(tmp_path: Path) -> Callable[..., Config]:
    """A factory of tiny smoke configs writing under ``tmp_path``."""

    def make(*overrides: str, out: str = "run") -> Config:
        return build_config("smoke", [*FAST, f"out_dir={tmp_path / out}", *overrides])

    return make


def refusal(capsys: pytest.CaptureFixture[str], *overrides: str) -> str:
    """The one line ``kdgen train smoke OVERRIDES`` prints when it refuses them (exit 2)."""
    assert main(["train", "smoke", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err

"""``kdgen export``: safetensors per generation that round-trip into create_model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kdgen.cli import main
from kdgen.export import load_exported
from kdgen.runs import load_checkpoint
from tests.conftest import FAST


@pytest.mark.slow
def test_export_round_trips_into_create_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, out = tmp_path / "run", tmp_path / "out"
    assert main(["train", "smoke", *FAST, "--out", str(run)]) == 0
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert "gen1.safetensors" in capsys.readouterr().out
    for generation in (0, 1):
        model, metadata = load_exported(out / f"gen{generation}.safetensors")
        assert metadata["model"] == "tiny_cnn" and metadata["generation"] == str(generation)
        assert metadata["num_classes"] == "100" and '"c00_f0"' in metadata["classes"]
        saved = load_checkpoint(run / "checkpoints" / f"gen{generation}.pt")["model"]
        for key, value in model.state_dict().items():
            assert torch.equal(value, saved[key]), key


def test_export_without_safetensors_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.yaml").write_text("name: x\n")
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert main(["export", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "kdgen: error: kdgen export needs safetensors; install it with: pip install 'kdgen[export]'"
    )

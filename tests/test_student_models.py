"""A student of another model: ``student_model`` and ``generation_models`` let the patriarch
teach a different (e.g. smaller) network. The teacher is the frozen previous generation,
and summaries, checkpoints, ensembles and the report name each generation's model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kdgen import generations as generations_module
from kdgen.cli import main
from kdgen.config import build_config, config_hash, model_args_of, model_of
from kdgen.errors import ConfigError
from kdgen.evaluation import load_generation_model
from kdgen.generations import train_generations
from kdgen.models import create_model
from kdgen.policy import patriarch_identity
from kdgen.precision import Numerics
from kdgen.report import find_runs, generations_table, group_runs
from kdgen.report.tables import ensembles_table, generations_summary_table
from kdgen.runs import load_checkpoint
from tests.conftest import FAST


def test_each_generation_has_its_model() -> None:
    config = build_config(
        "smoke",
        ["generations=3", "student_model=resnet8", "generation_models={3: resnet14}",
         "model_args={widths: [8, 16]}"],
    )  # fmt: skip
    assert [model_of(config, g) for g in range(4)] == ["tiny_cnn", "resnet8", "resnet8", "resnet14"]
    assert model_args_of(config, 0) == {"widths": [8, 16]} and model_args_of(config, 1) == {}
    plain = build_config("smoke", ["generations=3"])
    assert [model_of(plain, g) for g in range(4)] == ["tiny_cnn"] * 4
    # The students' model shapes the students, not the patriarch, which a sweep may share.
    assert config_hash(build_config("smoke", ["student_model=resnet8"])) != config_hash(plain)
    numerics = Numerics()
    assert patriarch_identity(build_config("smoke", ["student_model=resnet8"]), numerics) == (
        patriarch_identity(build_config("smoke"), numerics)
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("generation_models={3: resnet8}", "generation_models key 3 is no student generation"),
        ("generation_models={0: resnet8}", "generation_models key 0 is no student generation"),
        ("generation_models={1: ''}", "generation_models.1 must name a model"),
    ],
)
def test_a_generation_out_of_range_is_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        build_config("smoke", ["generations=2", override])
    assert "\n" not in str(refused.value)


def test_an_unknown_student_model_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["train", "smoke", *FAST, "generation_models={1: resnet7}", "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "unknown model 'resnet7'" in message
    assert not out.exists()


@pytest.mark.slow
def test_a_patriarch_teaches_a_student_of_another_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    train = generations_module.train_generation

    def recording(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        teacher = kwargs["teacher"]
        calls.append(
            {
                "model": type(model),
                "teacher": teacher,
                "teacher_state": None if teacher is None else dict(teacher.state_dict()),
            }
        )
        return train(model, *args, **kwargs)

    monkeypatch.setattr(generations_module, "train_generation", recording)
    out = tmp_path / "run"
    config = build_config(
        "smoke",
        [*FAST, "schedule.epochs=1", "model=resnet8", "student_model=tiny_cnn", f"out_dir={out}"],
    )
    run = train_generations(config)

    resnet, tiny = type(create_model("resnet8", 10)), type(create_model("tiny_cnn", 10))
    assert [call["model"] for call in calls] == [resnet, tiny]
    teacher = calls[1]["teacher"]
    assert type(teacher) is resnet and not teacher.training
    assert not any(parameter.requires_grad for parameter in teacher.parameters())
    gen0 = load_checkpoint(out / "checkpoints" / "gen0.pt")
    assert gen0["model_name"] == "resnet8"
    assert all(torch.equal(calls[1]["teacher_state"][k], v) for k, v in gen0["model"].items())
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in gen0["model"].items())
    assert load_checkpoint(out / "checkpoints" / "gen1.pt")["model_name"] == "tiny_cnn"
    assert isinstance(load_generation_model(out, 1), tiny)  # eval and transfer rebuild it

    summary = run.summary
    assert [e["model"] for e in summary["generations"]] == ["resnet8", "tiny_cnn"]
    ensemble = summary["ensembles"][-1]
    assert ensemble["members"] == [0, 1] and ensemble["models"] == ["resnet8", "tiny_cnn"]
    assert "| 1 (tiny_cnn) |" in generations_table([summary])
    groups = group_runs(find_runs([out]))
    rows = generations_summary_table(groups).rows
    assert [row[1] for row in rows] == ["0 (resnet8)", "1 (tiny_cnn)"]
    table = ensembles_table(groups)
    assert table is not None and any("(resnet8, tiny_cnn)" in row[1] for row in table.rows)

"""The engine: frozen teachers, schedules, and one generation that really learns."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import replace

import pytest
import torch

from kdgen.build import build_model, prepare_data
from kdgen.config import ScheduleConfig, build_config
from kdgen.engine import (
    EvalSettings,
    Hooks,
    TrainSettings,
    freeze,
    lr_factor,
    predict,
    train_generation,
)
from kdgen.models import create_model
from kdgen.policy import make_loss
from tests.conftest import FAST

CPU = torch.device("cpu")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_freeze_returns_a_separate_frozen_copy() -> None:
    student = create_model("tiny_cnn", 10)
    teacher = freeze(student)
    assert teacher is not student
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for (name, a), b in zip(
        student.state_dict().items(), teacher.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
        assert a.data_ptr() != b.data_ptr(), f"{name} shares storage with the student"


def test_train_generation_refuses_the_student_as_its_own_teacher() -> None:
    config = build_config("smoke", [*FAST, "schedule.epochs=1"])
    data = prepare_data(config, CPU)
    model = build_model(config, data.dataset, 1, CPU)
    with pytest.raises(ValueError, match="frozen copy"):
        train_generation(
            model, data.train_loader, {}, config.schedule, make_loss(config, 1), teacher=model
        )


@pytest.mark.slow
def test_teacher_weights_and_buffers_do_not_change_while_it_teaches() -> None:
    config = build_config("smoke", ["progress=false", "schedule.epochs=1"])
    data = prepare_data(config, CPU)
    patriarch = build_model(config, data.dataset, 0, CPU)
    train_generation(patriarch, data.train_loader, {}, config.schedule, make_loss(config, 0))
    teacher = freeze(patriarch)
    before = _state(teacher)
    student = build_model(config, data.dataset, 1, CPU)
    student_before = _state(student)
    train_generation(
        student, data.train_loader, {}, config.schedule, make_loss(config, 1), teacher=teacher
    )
    for name, value in teacher.state_dict().items():
        assert torch.equal(before[name], value), f"teacher's {name} changed"
    assert not teacher.training
    changed = [n for n, v in student.state_dict().items() if not torch.equal(student_before[n], v)]
    assert changed, "the student did not train"


@pytest.mark.slow
def test_one_generation_really_learns() -> None:
    config = build_config("smoke", ["progress=false"])
    data = prepare_data(config, CPU)
    model = build_model(config, data.dataset, 0, CPU)
    records: list[dict] = []

    class Recorder(Hooks):
        def log(self, record: dict) -> None:
            records.append(record)

    result = train_generation(
        model,
        data.train_loader,
        data.eval_loaders,
        config.schedule,
        make_loss(config, 0),
        evaluation=EvalSettings(
            coarse_of_fine=torch.tensor(data.dataset.coarse_of_fine), k=config.k
        ),
        hooks=Recorder(),
    )
    chance = 1 / data.dataset.num_classes
    assert result.final["test"]["top1"] > 10 * chance
    assert result.final["val"]["top1"] > 10 * chance
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert train_losses[-1] < 0.8 * train_losses[0]
    assert {r["split"] for r in records} == {"train", "val", "test", "train_eval"}
    assert [r["epoch"] for r in records if r["split"] == "test"] == list(range(1, 7))


def test_predict_restores_training_mode_and_returns_all_rows() -> None:
    config = build_config("smoke", list(FAST))
    data = prepare_data(config, CPU)
    model = build_model(config, data.dataset, 0, CPU)
    model.train()
    logits, labels = predict(model, data.eval_loaders["test"])
    assert model.training
    assert logits.shape == (len(data.dataset.test), data.dataset.num_classes)
    assert torch.equal(labels, data.dataset.test.labels)


@pytest.mark.parametrize(
    ("schedule", "epoch", "expected"),
    [
        (ScheduleConfig(epochs=10, milestones=[5, 8], gamma=0.1), 0, 1.0),
        (ScheduleConfig(epochs=10, milestones=[5, 8], gamma=0.1), 5, 0.1),
        (ScheduleConfig(epochs=10, milestones=[5, 8], gamma=0.1), 9, 0.01),
        (ScheduleConfig(epochs=10, scheduler="cosine"), 5, 0.5),
        (ScheduleConfig(epochs=10, scheduler="cosine"), 0, 1.0),
        (ScheduleConfig(epochs=10, scheduler="cosine", warmup_epochs=2), 6, 0.5),
        (ScheduleConfig(epochs=10, scheduler="constant"), 9, 1.0),
    ],
)
def test_lr_factor_by_hand(schedule: ScheduleConfig, epoch: int, expected: float) -> None:
    steps = 4
    assert lr_factor(schedule, epoch * steps, steps) == pytest.approx(expected)


def test_linear_warmup_rises_to_one() -> None:
    schedule = ScheduleConfig(epochs=10, scheduler="cosine", warmup_epochs=2)
    factors = [lr_factor(schedule, step, 5) for step in range(10)]
    assert factors == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr_factor(schedule, 10, 5) == pytest.approx(1.0)
    assert math.isclose(lr_factor(schedule, 49, 5), 0.5 * (1 + math.cos(math.pi * 7.8 / 8)))


def test_without_a_progress_bar_each_epoch_logs_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = build_config("smoke", [*FAST, "schedule.epochs=2"])
    data = prepare_data(config, CPU)
    model = build_model(config, data.dataset, 0, CPU)
    with caplog.at_level(logging.INFO, logger="kdgen"):
        train_generation(
            model, data.train_loader, data.eval_loaders, config.schedule, make_loss(config, 0)
        )
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    number = r"\d\.\d{3}"
    for epoch, line in enumerate(lines, 1):
        splits = ("val", "test", "train_eval")
        metrics = f"loss {number}, acc {number}, " + ", ".join(f"{s}_acc {number}" for s in splits)
        assert re.fullmatch(rf"gen 0 epoch {epoch}/2: {metrics} \(\d+\.\ds\)", line), line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kdgen"):
        train_generation(
            model,
            data.train_loader,
            {},
            replace(config.schedule, epochs=1),
            make_loss(config, 0),
            settings=TrainSettings(progress=True),
        )
    assert not caplog.records  # the bar shows the epochs instead

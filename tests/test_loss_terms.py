"""The loss in its parts: loss_ce, loss_reg and loss_kd beside the total, in the loss
functions, in metrics.jsonl train records and in TensorBoard."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from kdgen import losses
from kdgen.config import Config
from kdgen.generations import train_generations
from kdgen.runs import RunFolder, load_checkpoint

LOGITS = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
TARGETS = torch.tensor([0, 1])


def _ce_by_hand() -> float:
    first = -math.log(math.exp(2) / (math.exp(2) + math.exp(1) + 1))
    second = -math.log(1 / (2 + math.exp(3)))
    return (first + second) / 2


def test_teacher_terms_are_the_unweighted_parts_of_the_total() -> None:
    terms = losses.teacher_loss_terms(LOGITS, TARGETS, eta=0.6, regularizer="tsd", k=2)
    p = torch.softmax(LOGITS, dim=1).sort(dim=1, descending=True).values
    tsd_by_hand = float((p[:, 0] - p[:, 1]).mean())
    assert float(terms["loss_ce"]) == pytest.approx(_ce_by_hand(), rel=1e-6)
    assert float(terms["loss_reg"]) == pytest.approx(tsd_by_hand, rel=1e-6)
    assert float(terms["loss"]) == pytest.approx(0.6 * _ce_by_hand() + 0.4 * tsd_by_hand)
    assert torch.equal(terms["loss"], losses.teacher_loss(LOGITS, TARGETS, 0.6, "tsd", 2))
    normalized = losses.teacher_loss_terms(LOGITS, TARGETS, 0.6, "tsd", 2, "normalized")
    assert float(normalized["loss"]) == pytest.approx(_ce_by_hand() + (0.4 / 0.6) * tsd_by_hand)


def test_a_strict_teacher_has_no_regulariser_part() -> None:
    terms = losses.teacher_loss_terms(LOGITS, TARGETS, eta=1.0)
    assert set(terms) == {"loss", "loss_ce"} and torch.equal(terms["loss"], terms["loss_ce"])


def test_student_terms() -> None:
    teacher = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    terms = losses.student_loss_terms(LOGITS, teacher, TARGETS, lam=0.25, temperature=2.0)
    p_t = torch.softmax(teacher / 2, dim=1)
    log_p_s = torch.log_softmax(LOGITS / 2, dim=1)
    kl = float((p_t * (p_t.log() - log_p_s)).sum(dim=1).mean())
    assert float(terms["loss_kd"]) == pytest.approx(4 * kl, rel=1e-6)
    assert float(terms["loss"]) == pytest.approx(0.75 * _ce_by_hand() + 0.25 * 4 * kl, rel=1e-6)
    plain = losses.student_loss_terms(LOGITS, teacher, TARGETS, lam=0.0)
    assert set(plain) == {"loss", "loss_ce"}


def _train_records(folder: RunFolder, generation: int) -> list[dict]:
    return [
        r for r in folder.read_metrics() if r["split"] == "train" and r["generation"] == generation
    ]


@pytest.mark.slow
def test_train_records_and_tensorboard_hold_the_parts(
    fast_config: Callable[..., Config],
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train_generations(fast_config("process=D(0.6,0.6)", "tensorboard=true"))
    folder = RunFolder(run.path)
    for record in _train_records(folder, 0):
        assert {"loss", "loss_ce", "loss_reg"} <= record.keys() and "loss_kd" not in record
        weighted = 0.6 * record["loss_ce"] + 0.4 * record["loss_reg"]
        assert record["loss"] == pytest.approx(weighted, rel=1e-5)
    for record in _train_records(folder, 1):
        assert {"loss", "loss_ce", "loss_kd"} <= record.keys() and "loss_reg" not in record
        weighted = 0.4 * record["loss_ce"] + 0.6 * record["loss_kd"]
        assert record["loss"] == pytest.approx(weighted, rel=1e-5)
    events = EventAccumulator(str(run.path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"gen0/train/loss_ce", "gen0/train/loss_reg", "gen1/train/loss_kd"} <= tags


@pytest.mark.slow
def test_independent_runs_log_cross_entropy_alone_and_keep_float32_logits(
    fast_config: Callable[..., Config],
) -> None:
    run = train_generations(fast_config("process=D(1.0,0.0)", "generations=1"))
    for generation in (0, 1):
        for record in _train_records(RunFolder(run.path), generation):
            assert "loss_reg" not in record and "loss_kd" not in record
            assert record["loss"] == record["loss_ce"]
    saved = load_checkpoint(run.path / "logits" / "gen1.pt")["splits"]
    assert {split["logits"].dtype for split in saved.values()} == {torch.float32}
    test_logits, test_labels = saved["test"]["logits"], saved["test"]["labels"]
    top1 = float((test_logits.argmax(dim=1) == test_labels).float().mean())
    assert run.summary["generations"][1]["test"]["top1"] == pytest.approx(top1, abs=1e-9)

"""The D(eta, lambda) policy (``kdgen.policy``) and the one list of loss names."""

from __future__ import annotations

import pytest
import torch

from kdgen import losses
from kdgen.config import build_config, config_hash
from kdgen.errors import ConfigError
from kdgen.policy import (
    is_strict,
    loss_settings,
    make_loss,
    patriarch_key,
    patriarch_loss_key,
)
from tests.helpers import SMOKE_CONFIG_HASH


def test_every_strict_patriarch_has_one_key() -> None:
    strict = [
        build_config("smoke", overrides)
        for overrides in (["process=D(1.0,0.0)"], ["process=D(1.0,0.6)", "regularizer=lsr"])
    ]
    assert patriarch_key(strict[0]) == patriarch_key(strict[1]) == ("strict",)
    assert is_strict(1.0) and not is_strict(0.99)


def test_tolerant_patriarchs_share_only_with_equal_losses() -> None:
    base = build_config("smoke", ["eta=0.6", "lam=0.6"])
    same = build_config("smoke", ["process=D(0.6,0.3)", "temperature=2"])  # student-only keys
    assert patriarch_key(base) == patriarch_key(same)
    for change in ("eta=0.7", "regularizer=cp", "k=3", "regularizer_form=normalized"):
        other = build_config("smoke", ["lam=0.6", change])
        assert patriarch_key(other) != patriarch_key(base), change


def test_no_regulariser_is_strict_only_at_eta_1() -> None:
    """docs/method.md, "Tolerance regularisers": regularizer=none trains eta * CE in the
    convex form, which under weight decay is not the strict patriarch; one rule says so
    for sharing (patriarch_key), the checkpoint check (loss_settings) and the report."""
    strict = build_config("smoke", ["process=D(1.0,0.0)"])
    scaled = build_config("smoke", ["process=D(0.6,0.0)", "regularizer=none"])
    assert patriarch_key(scaled) != patriarch_key(strict)
    assert patriarch_key(scaled) == patriarch_loss_key(0.6, "none", 5, "convex")
    assert loss_settings(scaled, 0)["eta"] == 0.6 and loss_settings(strict, 0) == {
        "generation_role": "patriarch",
        "eta": 1.0,
    }
    logits, targets = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([1])
    ce = torch.nn.functional.cross_entropy(logits, targets)
    loss = make_loss(scaled, 0)(logits, targets, None)["loss"]
    assert loss.item() == pytest.approx(0.6 * ce.item())  # eta * CE, by hand


def test_the_config_accepts_the_regularisers_the_losses_register(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match="regularizer='maxlogit' must be one of tsd, lsr"):
        build_config("smoke", ["regularizer=maxlogit"])
    monkeypatch.setitem(
        losses.REGULARIZERS, "maxlogit", lambda logits, k: logits.max(dim=1).values.mean()
    )
    config = build_config("smoke", ["process=D(0.6,0.6)", "regularizer=maxlogit"])
    loss = losses.teacher_loss(torch.zeros(2, 3), torch.tensor([0, 1]), 0.5, config.regularizer)
    assert loss.item() == pytest.approx(0.5 * torch.log(torch.tensor(3.0)).item())
    with pytest.raises(ConfigError, match="regularizer_form='affine' must be one of convex"):
        build_config("smoke", ["regularizer_form=affine"])


def test_a_new_student_loss_is_one_function_and_one_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match="student_loss='mse' must be one of kd"):
        build_config("smoke", ["student_loss=mse"])

    def mse(student, teacher, targets, lam, temperature=1.0, *, validate=True):  # type: ignore[no-untyped-def]
        ce = torch.nn.functional.cross_entropy(student, targets)
        return (1 - lam) * ce + lam * (student - teacher).pow(2).mean()

    monkeypatch.setitem(losses.STUDENT_LOSSES, "mse", mse)
    config = build_config("smoke", ["process=D(1.0,0.5)", "student_loss=mse"])
    student, teacher = torch.zeros(2, 3), torch.ones(2, 3)
    targets = torch.tensor([0, 1])
    loss = make_loss(config, 1)(student, targets, teacher)
    expected = 0.5 * torch.log(torch.tensor(3.0)) + 0.5 * 1.0
    assert float(loss) == pytest.approx(float(expected))
    assert loss_settings(config, 1)["student_loss"] == "mse"
    assert "student_loss" not in loss_settings(build_config("smoke"), 1)
    # computed before student_loss existed
    assert config_hash(build_config("smoke", ["student_loss=kd"])) == SMOKE_CONFIG_HASH

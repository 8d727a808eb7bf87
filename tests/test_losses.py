"""Tests of kdgen.losses: hand-computed values, properties, validation, gradient flow."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kdgen import losses
from kdgen.losses import (
    REGULARIZERS,
    confidence_penalty_reg,
    label_smoothing_reg,
    student_loss,
    teacher_loss,
    tolerance_regularizer,
    tsd,
)

PROPS = settings(max_examples=50, deadline=None)
REG_NAMES = ["tsd", "lsr", "cp", "none"]
FORM_NAMES = ["convex", "normalized"]

# Row 0 has probabilities exactly [0.5, 0.25, 0.125, 0.125]; row 1 is uniform over 4 classes.
P0 = [0.5, 0.25, 0.125, 0.125]
LOGITS = torch.tensor([[math.log(p) for p in P0], [0.0, 0.0, 0.0, 0.0]])
TARGETS = torch.tensor([0, 2])
# CE per row: -log 0.5 for row 0 (class 0), -log 0.25 for row 1 (uniform).
CE = (-math.log(0.5) - math.log(0.25)) / 2
TSD3 = ((0.5 - (0.25 + 0.125) / 2) + (0.25 - (0.25 + 0.25) / 2)) / 2
LSR = (
    (-math.log(4) - (math.log(0.5) + math.log(0.25) + 2 * math.log(0.125)) / 4)
    + (-math.log(4) - math.log(0.25))
) / 2
CP = (
    (0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 2 * 0.125 * math.log(0.125))
    + 4 * 0.25 * math.log(0.25)
) / 2
R_BY_NAME = {"tsd": TSD3, "lsr": LSR, "cp": CP, "none": 0.0}


def close(actual: torch.Tensor, expected: float, tol: float = 1e-6) -> None:
    assert actual.dim() == 0
    assert actual.dtype == torch.float32
    assert actual.item() == pytest.approx(expected, abs=tol, rel=tol)


def py_log_softmax(z: list[float]) -> list[float]:
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


# ----------------------------------------------------------------------------- hand values


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (2, ((0.5 - 0.25) + (0.25 - 0.25)) / 2),
        (3, ((0.5 - (0.25 + 0.125) / 2) + 0.0) / 2),
        (4, ((0.5 - (0.25 + 0.125 + 0.125) / 3) + 0.0) / 2),
    ],
)
def test_tsd_hand_values(k: int, expected: float) -> None:
    close(tsd(LOGITS, k), expected)


def test_tsd_is_order_invariant() -> None:
    shuffled = LOGITS[:, [2, 0, 3, 1]]
    close(tsd(shuffled, 3), TSD3)


def test_tsd_one_hot_limit_is_one() -> None:
    close(tsd(torch.tensor([[100.0, 0.0, 0.0]]), 3), 1.0, tol=1e-5)


def test_label_smoothing_hand_value() -> None:
    close(label_smoothing_reg(LOGITS), LSR)
    assert pytest.approx(0.25 * math.log(2) / 2) == LSR  # sanity of the literal above


def test_confidence_penalty_hand_value() -> None:
    close(confidence_penalty_reg(LOGITS), CP)


@pytest.mark.parametrize("name", REG_NAMES)
def test_registry_dispatch_matches_hand_values(name: str) -> None:
    close(tolerance_regularizer(name, LOGITS, k=3), R_BY_NAME[name])
    close(REGULARIZERS[name](LOGITS, 3), R_BY_NAME[name])


def test_registry_names() -> None:
    assert set(REGULARIZERS) == set(REG_NAMES)


@pytest.mark.parametrize("name", REG_NAMES)
@pytest.mark.parametrize("eta", [0.0, 0.3, 0.6, 1.0])
def test_teacher_loss_convex_hand_values(name: str, eta: float) -> None:
    expected = eta * CE + (1 - eta) * R_BY_NAME[name]
    close(teacher_loss(LOGITS, TARGETS, eta, regularizer=name, k=3), expected)


@pytest.mark.parametrize("name", REG_NAMES)
@pytest.mark.parametrize("eta", [0.25, 0.6, 1.0])
def test_teacher_loss_normalized_hand_values(name: str, eta: float) -> None:
    expected = CE + (1 - eta) / eta * R_BY_NAME[name]
    got = teacher_loss(LOGITS, TARGETS, eta, regularizer=name, k=3, form="normalized")
    close(got, expected, tol=1e-5)


def test_teacher_loss_default_is_convex_tsd_k5() -> None:
    z = torch.tensor([[math.log(p) for p in [0.4, 0.2, 0.1, 0.1, 0.1, 0.1]]])
    expected = 0.6 * -math.log(0.2) + 0.4 * (0.4 - (0.2 + 0.1 + 0.1 + 0.1) / 4)
    close(teacher_loss(z, torch.tensor([1]), 0.6), expected)


def test_new_regularizer_is_one_function_plus_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    def max_logit(logits: torch.Tensor, k: int = 5) -> torch.Tensor:
        return logits.float().max(dim=1).values.mean()

    monkeypatch.setitem(REGULARIZERS, "maxlogit", max_logit)
    expected = 0.5 * CE + 0.5 * (math.log(0.5) + 0.0) / 2
    close(teacher_loss(LOGITS, TARGETS, 0.5, regularizer="maxlogit"), expected)


STUDENT = [[0.0, 1.0, 0.0, -2.0], [0.5, -0.5, 1.5, 0.0]]
TEACHER = [[2.0, 0.0, -1.0, 1.0], [0.0, 0.0, 3.0, -1.0]]
STUDENT_Y = [1, 2]


def hand_kl(tau: float) -> float:
    """Batch-mean KL(p_T^tau || p_S^tau), by hand."""
    total = 0.0
    for s_row, t_row in zip(STUDENT, TEACHER, strict=True):
        ls = py_log_softmax([v / tau for v in s_row])
        lt = py_log_softmax([v / tau for v in t_row])
        total += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt, strict=True))
    return total / len(STUDENT)


def hand_ce() -> float:
    rows = zip(STUDENT, STUDENT_Y, strict=True)
    return sum(-py_log_softmax(row)[y] for row, y in rows) / len(STUDENT)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.6, 1.0])
def test_student_loss_hand_values(lam: float, tau: float) -> None:
    expected = (1 - lam) * hand_ce() + lam * tau**2 * hand_kl(tau)
    got = student_loss(
        torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(STUDENT_Y), lam, tau
    )
    close(got, expected, tol=1e-5)


def test_student_loss_tau_squared_factor() -> None:
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(STUDENT_Y)
    kl_tau3 = hand_kl(3.0)
    assert kl_tau3 > 0.01
    close(student_loss(s, t, y, 1.0, temperature=3.0), 9.0 * kl_tau3, tol=1e-5)
    # Without the tau^2 factor the value would be 9x smaller.
    assert student_loss(s, t, y, 1.0, temperature=3.0).item() > 8.0 * kl_tau3


# ----------------------------------------------------------------------------- properties


def logit_batches(
    min_c: int = 2, max_c: int = 8, elements: st.SearchStrategy[float] | None = None
) -> st.SearchStrategy[np.ndarray]:
    if elements is None:
        elements = st.floats(-30.0, 30.0, width=32)
    shapes = st.tuples(st.integers(1, 4), st.integers(min_c, max_c))
    return shapes.flatmap(lambda s: arrays(np.float32, s, elements=elements))


@st.composite
def logits_and_targets(
    draw: st.DrawFn, elements: st.SearchStrategy[float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    z = draw(logit_batches(elements=elements))
    n, c = z.shape
    y = draw(arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    return torch.from_numpy(z), torch.from_numpy(y)


@PROPS
@given(z=logit_batches(), data=st.data())
def test_tsd_in_unit_interval(z: np.ndarray, data: st.DataObject) -> None:
    k = data.draw(st.integers(2, z.shape[1]))
    r = tsd(torch.from_numpy(z), k).item()
    assert -1.0 - 1e-6 <= r <= 1.0 + 1e-6


@PROPS
@given(z=logit_batches())
def test_label_smoothing_nonnegative(z: np.ndarray) -> None:
    assert label_smoothing_reg(torch.from_numpy(z)).item() >= -1e-5


@PROPS
@given(z=logit_batches())
def test_confidence_penalty_bounds(z: np.ndarray) -> None:
    c = z.shape[1]
    r = confidence_penalty_reg(torch.from_numpy(z)).item()
    assert -math.log(c) - 1e-5 <= r <= 1e-6


@PROPS
@given(zy=logits_and_targets(), name=st.sampled_from(REG_NAMES), form=st.sampled_from(FORM_NAMES))
def test_eta_one_is_cross_entropy(
    zy: tuple[torch.Tensor, torch.Tensor], name: str, form: str
) -> None:
    z, y = zy
    got = teacher_loss(z, y, 1.0, regularizer=name, k=2, form=form)
    torch.testing.assert_close(got, F.cross_entropy(z, y))


@PROPS
@given(zy=logits_and_targets(), tau=st.floats(0.1, 10.0))
def test_lam_zero_is_cross_entropy(zy: tuple[torch.Tensor, torch.Tensor], tau: float) -> None:
    z, y = zy
    teacher = torch.randn_like(z) * 5
    got = student_loss(z, teacher, y, 0.0, temperature=tau)
    torch.testing.assert_close(got, F.cross_entropy(z, y))


@PROPS
@given(zy=logits_and_targets(), tau=st.floats(0.1, 10.0))
def test_kl_of_identical_distributions_is_zero(
    zy: tuple[torch.Tensor, torch.Tensor], tau: float
) -> None:
    z, y = zy
    assert abs(student_loss(z, z.clone(), y, 1.0, temperature=tau).item()) <= 1e-4


EXTREME = st.one_of(
    st.sampled_from([float(np.float32(v)) for v in (-1e4, 1e4, -1e30, 1e30, 0.0)]),
    st.floats(-1e4, 1e4, width=32),
)


def all_losses(
    z: torch.Tensor, y: torch.Tensor, other: torch.Tensor
) -> list[Callable[[], torch.Tensor]]:
    fns: list[Callable[[], torch.Tensor]] = [
        lambda: tsd(z, 2),
        lambda: tsd(z, z.shape[1]),
        lambda: label_smoothing_reg(z),
        lambda: confidence_penalty_reg(z),
    ]
    for name in REG_NAMES:
        for form in FORM_NAMES:
            fns.append(lambda n=name, f=form: teacher_loss(z, y, 0.5, n, 2, f))
    for tau in (1.0, 4.0):
        fns.append(lambda t=tau: student_loss(z, other, y, 0.5, t))
    return fns


@PROPS
@given(zy=logits_and_targets(elements=EXTREME), data=st.data())
def test_extreme_logits_give_finite_values_and_gradients(
    zy: tuple[torch.Tensor, torch.Tensor], data: st.DataObject
) -> None:
    z0, y = zy
    other = torch.from_numpy(data.draw(arrays(np.float32, tuple(z0.shape), elements=EXTREME)))
    z = z0.clone().requires_grad_(True)
    for fn in all_losses(z, y, other):
        z.grad = None
        value = fn()
        assert torch.isfinite(value)
        value.backward()
        assert z.grad is not None
        assert torch.isfinite(z.grad).all()


def test_overflowing_logit_gaps_keep_gradients_finite() -> None:
    # Gaps beyond float32 range make log p = -inf; values may be inf but gradients stay finite.
    z = torch.tensor([[3e38, -3e38, 0.0]], requires_grad=True)
    y = torch.tensor([1])
    for fn in all_losses(z, y, z.detach() * 0.5):
        z.grad = None
        fn().backward()
        assert torch.isfinite(z.grad).all()
    assert confidence_penalty_reg(z).item() == 0.0


# ----------------------------------------------------------------------------- gradient flow


def test_teacher_receives_no_gradient() -> None:
    s = torch.tensor(STUDENT, requires_grad=True)
    t = torch.tensor(TEACHER, requires_grad=True)
    student_loss(s, t, torch.tensor(STUDENT_Y), 0.6, temperature=2.0).backward()
    assert t.grad is None
    assert s.grad is not None
    assert s.grad.abs().sum() > 0


def test_distillation_gradient_matches_hand_formula() -> None:
    # d/ds [tau^2 KL(p_T^tau || p_S^tau)] = tau * (p_S^tau - p_T^tau) / N with 'batchmean'.
    s = torch.tensor(STUDENT, requires_grad=True)
    t = torch.tensor(TEACHER)
    tau = 2.0
    student_loss(s, t, torch.tensor(STUDENT_Y), 1.0, temperature=tau).backward()
    expected = tau * (torch.softmax(s.detach() / tau, 1) - torch.softmax(t / tau, 1)) / 2
    torch.testing.assert_close(s.grad, expected)


def test_bf16_autocast_computes_in_float32() -> None:
    z = LOGITS.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = [
            teacher_loss(z, TARGETS, 0.6, "tsd", 3),
            student_loss(z, z.flip(1), TARGETS, 0.5, 2.0),
            label_smoothing_reg(z),
            confidence_penalty_reg(z),
        ]
    assert all(v.dtype == torch.float32 for v in got)
    close(got[0], 0.6 * CE + 0.4 * TSD3, tol=1e-2)


def test_validate_false_gives_same_value() -> None:
    a = teacher_loss(LOGITS, TARGETS, 0.6, "cp", validate=False)
    b = teacher_loss(LOGITS, TARGETS, 0.6, "cp", validate=True)
    torch.testing.assert_close(a, b)
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    y = torch.tensor(STUDENT_Y)
    torch.testing.assert_close(
        student_loss(s, t, y, 0.5, validate=False), student_loss(s, t, y, 0.5)
    )


def test_int32_targets_accepted() -> None:
    close(teacher_loss(LOGITS, TARGETS.int(), 1.0), CE)


# ----------------------------------------------------------------------------- validation

Z = LOGITS
Y = TARGETS
ZS, ZT, YS = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(STUDENT_Y)

BAD_CALLS: list[tuple[str, Callable[[], object], str]] = [
    ("tsd k=1", lambda: tsd(Z, 1), r"k must be .*\[2, C=4\].*got 1"),
    ("tsd k>C", lambda: tsd(Z, 5), r"k must be .*\[2, C=4\].*got 5"),
    ("tsd k float", lambda: tsd(Z, 2.5), r"k must be an integer"),
    ("tsd 1-D", lambda: tsd(Z[0], 2), r"logits must be 2-D"),
    ("lsr 3-D", lambda: label_smoothing_reg(Z[None]), r"logits must be 2-D"),
    ("cp 1-D", lambda: confidence_penalty_reg(Z[0]), r"logits must be 2-D"),
    ("empty batch", lambda: label_smoothing_reg(Z[:0]), r"N >= 1"),
    ("reg unknown", lambda: tolerance_regularizer("foo", Z), r"regularizer must be one of .*tsd"),
    ("teacher eta<0", lambda: teacher_loss(Z, Y, -0.1), r"eta must be in \[0, 1\], got -0.1"),
    ("teacher eta>1", lambda: teacher_loss(Z, Y, 1.5), r"eta must be in \[0, 1\], got 1.5"),
    ("teacher eta nan", lambda: teacher_loss(Z, Y, math.nan), r"eta must be in \[0, 1\], got nan"),
    ("teacher k>C", lambda: teacher_loss(Z, Y, 0.5, "tsd", k=9), r"k must be .*C=4"),
    ("teacher reg", lambda: teacher_loss(Z, Y, 0.5, "bogus"), r"regularizer must be one of"),
    ("teacher form", lambda: teacher_loss(Z, Y, 0.5, form="affine"), r"form must be one of"),
    (
        "teacher normalized eta=0",
        lambda: teacher_loss(Z, Y, 0.0, form="normalized"),
        r"eta must be in \(0, 1\] for form='normalized'",
    ),
    ("teacher 1-D", lambda: teacher_loss(Z[0], Y, 0.5), r"logits must be 2-D"),
    ("targets 2-D", lambda: teacher_loss(Z, Y[:, None], 0.5), r"targets must be 1-D of length"),
    ("targets length", lambda: teacher_loss(Z, Y[:1], 0.5), r"targets must be 1-D of length N=2"),
    ("targets float", lambda: teacher_loss(Z, Y.float(), 0.5), r"targets must have an integer"),
    ("targets bool", lambda: teacher_loss(Z, Y.bool(), 0.5), r"targets must have an integer"),
    ("targets <0", lambda: teacher_loss(Z, torch.tensor([0, -1]), 0.5), r"\[0, C=4\)"),
    ("targets >=C", lambda: teacher_loss(Z, torch.tensor([4, 0]), 0.5), r"\[0, C=4\)"),
    ("student lam<0", lambda: student_loss(ZS, ZT, YS, -0.5), r"lam must be in \[0, 1\]"),
    ("student lam>1", lambda: student_loss(ZS, ZT, YS, 1.01), r"lam must be in \[0, 1\]"),
    ("student lam nan", lambda: student_loss(ZS, ZT, YS, math.nan), r"lam must be in \[0, 1\]"),
    ("student tau=0", lambda: student_loss(ZS, ZT, YS, 0.5, 0.0), r"temperature must be .*> 0"),
    ("student tau<0", lambda: student_loss(ZS, ZT, YS, 0.5, -1.0), r"temperature must be .*> 0"),
    (
        "student tau nan",
        lambda: student_loss(ZS, ZT, YS, 0.5, math.nan),
        r"temperature must be",
    ),
    (
        "student shape",
        lambda: student_loss(ZS, ZT[:, :3], YS, 0.5),
        r"student_logits and teacher_logits must have the same shape",
    ),
    ("student 1-D", lambda: student_loss(ZS[0], ZT[0], YS, 0.5), r"student_logits must be 2-D"),
    ("teacher_logits 3-D", lambda: student_loss(ZS, ZT[None], YS, 0.5), r"teacher_logits must"),
    ("student targets", lambda: student_loss(ZS, ZT, YS[:1], 0.5), r"targets must be 1-D"),
    ("student targets >=C", lambda: student_loss(ZS, ZT, YS + 3, 0.5), r"\[0, C=4\)"),
    (
        "validate=False keeps dtype check",
        lambda: student_loss(ZS, ZT, YS.float(), 0.5, validate=False),
        r"targets must have an integer",
    ),
]


@pytest.mark.parametrize(
    ("call", "match"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_invalid_arguments_raise_value_error(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_hyperparameter_errors_are_config_errors() -> None:
    from kdgen.errors import ConfigError

    with pytest.raises(ConfigError):
        teacher_loss(Z, Y, 2.0)
    with pytest.raises(ConfigError):
        student_loss(ZS, ZT, YS, 0.5, temperature=0.0)


def test_module_exports() -> None:
    assert set(losses.__all__) <= set(dir(losses))

"""Losses of training in generations: tolerance regularisers, teacher loss, student loss.

Every function here is pure, takes logits of shape ``(N, C)`` and returns the batch mean as a
0-dim float32 tensor. Equations and section names refer to ``docs/method.md``.

Numerics: logits are cast to float32 before any softmax / log-softmax, so the losses are safe
to call under bf16/fp16 autocast.

Validation: hyperparameters (``eta``, ``lam``, ``k``, ``temperature``, regulariser and form
names) and tensor shapes/dtypes are checked on every call; these checks read only Python values
and tensor metadata, so they never synchronise with the device. Checking that the targets lie in
``[0, C)`` has to read tensor values, which forces a host-device sync; ``teacher_loss`` and
``student_loss`` do it only when ``validate=True`` (the default). Training passes
``validate=False`` in its step: its labels come from a data set whose loader already checked
that they lie in ``[0, C)`` (:class:`~kdgen.data.ImageDataset`).
Hyperparameter errors raise ``ConfigError`` (a ``ValueError``); tensor errors raise
``ValueError``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from kdgen.errors import ConfigError

__all__ = [
    "FORMS",
    "REGULARIZERS",
    "STUDENT_LOSSES",
    "LossFn",
    "LossTerms",
    "Regularizer",
    "StudentLoss",
    "as_terms",
    "check_targets",
    "confidence_penalty_reg",
    "label_smoothing_reg",
    "no_reg",
    "student_loss",
    "student_loss_terms",
    "teacher_loss",
    "teacher_loss_terms",
    "tolerance_regularizer",
    "tsd",
]

FORMS = ("convex", "normalized")

LossTerms = dict[str, Tensor]
"""A loss and its parts: ``"loss"`` (the total that is minimised) and named components
such as ``"loss_ce"``, ``"loss_reg"``, ``"loss_kd"``; every entry is a batch mean."""
LossFn = Callable[[Tensor, Tensor, "Tensor | None"], "LossTerms | Tensor"]
"""(student logits, targets, teacher logits) -> the loss, or the loss and its parts."""


def as_terms(loss: LossTerms | Tensor) -> LossTerms:
    """A loss function's result as terms: a bare tensor is ``{"loss": tensor}``."""
    return loss if isinstance(loss, dict) else {"loss": loss}


# ----------------------------------------------------------------------------- validation


def _check_logits(logits: Tensor, name: str = "logits") -> None:
    if logits.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, C), got shape {tuple(logits.shape)}")
    n, c = logits.shape
    if n < 1 or c < 1:
        raise ValueError(f"{name} must have N >= 1 rows and C >= 1 classes, got shape ({n}, {c})")


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ConfigError(f"{name} must be in [0, 1], got {value}")
    return value


def _check_k(k: int, num_classes: int) -> int:
    try:
        k = operator.index(k)
    except TypeError:
        raise ConfigError(f"k must be an integer in [2, C={num_classes}], got {k!r}") from None
    if not 2 <= k <= num_classes:
        raise ConfigError(f"k must be an integer in [2, C={num_classes}], got {k}")
    return k


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not (temperature > 0.0 and math.isfinite(temperature)):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature}")
    return temperature


def check_targets(targets: Tensor, num_rows: int, num_classes: int, *, values: bool = True) -> None:
    """Check class-index targets for a batch of ``num_rows`` rows over ``num_classes`` classes.

    Shape and dtype checks are free. With ``values=True`` it also checks ``0 <= y < C``: one
    combined reduction and a single host-device sync. Raises ``ValueError``.
    """
    if targets.dim() != 1 or targets.shape[0] != num_rows:
        raise ValueError(
            f"targets must be 1-D of length N={num_rows}, got shape {tuple(targets.shape)}"
        )
    dtype = targets.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise ValueError(f"targets must have an integer dtype (class indices), got {dtype}")
    if values and targets.numel():
        bad = (targets.min() < 0) | (targets.max() >= num_classes)
        if bool(bad):
            raise ValueError(
                f"targets must lie in [0, C={num_classes}), got values in "
                f"[{int(targets.min())}, {int(targets.max())}]"
            )


def _ce(logits: Tensor, targets: Tensor, validate: bool) -> Tensor:
    """Mean CE(p, y) = -log p_y in float32 (docs/method.md, "Problem and notation")."""
    check_targets(targets, logits.shape[0], logits.shape[1], values=validate)
    return F.cross_entropy(logits.float(), targets.long())


# ----------------------------------------------------------------------------- regularisers

Regularizer = Callable[[Tensor, int], Tensor]
"""A tolerance regulariser R: ``fn(logits, k) -> batch mean``; ``k`` may be unused."""


def tsd(logits: Tensor, k: int = 5) -> Tensor:
    """Top-score difference, docs/method.md "Tolerance regularisers", the paper's Eq. 3.

    R = p_(1) - 1/(K-1) * sum_{k=2..K} p_(k), where p_(1) >= p_(2) >= ... are the softmax
    probabilities sorted in descending order. Lies in [0, 1]. Requires 2 <= k <= C.
    """
    _check_logits(logits)
    k = _check_k(k, logits.shape[1])
    top = torch.softmax(logits.float(), dim=1).topk(k, dim=1).values
    return (top[:, 0] - top[:, 1:].mean(dim=1)).mean()


def label_smoothing_reg(logits: Tensor, k: int = 5) -> Tensor:
    """Label-smoothing regulariser (LSR), docs/method.md "Tolerance regularisers".

    R = KL(u || p) = sum_c u_c (log u_c - log p_c) = -log C - mean_c log p_c, with u uniform
    over the C classes. Always >= 0. ``k`` is unused (common regulariser signature).
    """
    del k
    _check_logits(logits)
    log_p = F.log_softmax(logits.float(), dim=1)
    return (-math.log(logits.shape[1]) - log_p.mean(dim=1)).mean()


def confidence_penalty_reg(logits: Tensor, k: int = 5) -> Tensor:
    """Confidence-penalty regulariser (CP), docs/method.md "Tolerance regularisers".

    R = -H(p) = sum_c p_c log p_c, in [-log C, 0]. ``log p`` is clamped to the most negative
    finite float so that 0 * log 0 = 0 (and its gradient stays finite) for extreme logits.
    ``k`` is unused (common regulariser signature).
    """
    del k
    _check_logits(logits)
    log_p = F.log_softmax(logits.float(), dim=1)
    log_p = log_p.clamp(min=torch.finfo(log_p.dtype).min)
    return (log_p.exp() * log_p).sum(dim=1).mean()


def no_reg(logits: Tensor, k: int = 5) -> Tensor:
    """No regulariser: R = 0, docs/method.md "Tolerance regularisers". The convex teacher
    loss is then eta * CE (under weight decay not the strict teacher unless eta = 1), the
    normalized one CE. ``k`` is unused."""
    del k
    _check_logits(logits)
    return torch.zeros((), dtype=torch.float32, device=logits.device)


REGULARIZERS: dict[str, Regularizer] = {
    "tsd": tsd,
    "lsr": label_smoothing_reg,
    "cp": confidence_penalty_reg,
    "none": no_reg,
}
"""Tolerance regularisers by name. A new one is one ``Regularizer`` function plus one entry."""


def _get_regularizer(name: str) -> Regularizer:
    try:
        return REGULARIZERS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"regularizer must be one of {sorted(REGULARIZERS)}, got {name!r}"
        ) from None


def tolerance_regularizer(name: str, logits: Tensor, k: int = 5) -> Tensor:
    """Evaluate the tolerance regulariser ``name`` (a key of ``REGULARIZERS``) on ``logits``."""
    return _get_regularizer(name)(logits, k)


# ----------------------------------------------------------------------------- losses


def teacher_loss_terms(
    logits: Tensor,
    targets: Tensor,
    eta: float,
    regularizer: str = "tsd",
    k: int = 5,
    form: str = "convex",
    *,
    validate: bool = True,
) -> dict[str, Tensor]:
    """The tolerant-teacher loss and its parts, docs/method.md "Teacher loss".

    Returns ``{"loss": L, "loss_ce": CE(p, y), "loss_reg": R(p)}``, the parts unweighted;
    ``loss_reg`` only when R has a weight (eta < 1). See :func:`teacher_loss`.
    """
    eta = _check_unit("eta", eta)
    reg = _get_regularizer(regularizer)
    if form not in FORMS:
        raise ConfigError(f"form must be one of {list(FORMS)}, got {form!r}")
    if form == "normalized" and eta == 0.0:
        raise ConfigError("eta must be in (0, 1] for form='normalized', got 0.0")
    _check_logits(logits)
    ce = _ce(logits, targets, validate)
    ce_weight, reg_weight = (eta, 1.0 - eta) if form == "convex" else (1.0, (1.0 - eta) / eta)
    if reg_weight == 0.0:
        return {"loss": ce, "loss_ce": ce}
    r = reg(logits, k)
    loss = reg_weight * r if ce_weight == 0.0 else ce_weight * ce + reg_weight * r
    return {"loss": loss, "loss_ce": ce, "loss_reg": r}


def teacher_loss(
    logits: Tensor,
    targets: Tensor,
    eta: float,
    regularizer: str = "tsd",
    k: int = 5,
    form: str = "convex",
    *,
    validate: bool = True,
) -> Tensor:
    """Tolerant-teacher (patriarch) loss, docs/method.md "Teacher loss".

    ``form="convex"``:     L = eta * CE(p, y) + (1 - eta) * R(p), eta in [0, 1].
    ``form="normalized"``: L = CE(p, y) + u(eta) * R(p), u(eta) = (1 - eta) / eta, eta in (0, 1]
    (the convex form divided by eta). eta = 1 gives plain cross-entropy in both forms; R is not
    evaluated when its weight is 0. ``validate=False`` skips the target-range check (the only
    one that syncs with the device); see the module docstring.
    """
    terms = teacher_loss_terms(logits, targets, eta, regularizer, k, form, validate=validate)
    return terms["loss"]


def student_loss_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    lam: float,
    temperature: float = 1.0,
    *,
    validate: bool = True,
) -> dict[str, Tensor]:
    """The student loss and its parts, docs/method.md "Student loss".

    Returns ``{"loss": L, "loss_ce": CE(p_S, y), "loss_kd": tau^2 * KL(p_T^tau || p_S^tau)}``,
    so that L = (1 - lam) * loss_ce + lam * loss_kd; ``loss_kd`` only when lam > 0.
    See :func:`student_loss`.
    """
    lam = _check_unit("lam", lam)
    tau = _check_temperature(temperature)
    _check_logits(student_logits, "student_logits")
    _check_logits(teacher_logits, "teacher_logits")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student_logits and teacher_logits must have the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    ce = _ce(student_logits, targets, validate)
    if lam == 0.0:
        return {"loss": ce, "loss_ce": ce}
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / tau, dim=1)
    kd = tau**2 * F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
    loss = kd if lam == 1.0 else (1.0 - lam) * ce + lam * kd
    return {"loss": loss, "loss_ce": ce, "loss_kd": kd}


def student_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    lam: float,
    temperature: float = 1.0,
    *,
    validate: bool = True,
) -> Tensor:
    """Student loss, docs/method.md "Student loss".

    L = (1 - lam) * CE(p_S, y) + lam * tau^2 * KL(p_T^tau || p_S^tau), p^tau = softmax(z / tau),
    KL averaged over the batch ('batchmean'). The teacher logits are detached: no gradient
    reaches the teacher. A term whose weight is 0 is not evaluated. ``validate=False`` skips
    the target-range check (the only one that syncs with the device).
    """
    terms = student_loss_terms(
        student_logits, teacher_logits, targets, lam, temperature, validate=validate
    )
    return terms["loss"]


StudentLoss = Callable[..., "dict[str, Tensor] | Tensor"]
"""A student loss: ``fn(student_logits, teacher_logits, targets, lam, temperature, *,
validate)`` -> the batch-mean loss and its parts, ``{"loss": L, "loss_ce": ..., ...}`` (or
the loss alone), with ``lam`` the weight of what the student learns from the teacher (see
:func:`student_loss_terms`)."""

STUDENT_LOSSES: dict[str, StudentLoss] = {
    "kd": student_loss_terms,
}
"""Student losses by name (the config's ``student_loss``). A new one is one
``StudentLoss`` function plus one entry."""

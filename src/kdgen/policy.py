"""The D(eta, lambda) policy: which loss each generation trains with, and when two runs
share a patriarch (docs/method.md).

The patriarch M_0 learns from ``eta * CE + (1 - eta) * R`` (a strict teacher at eta = 1,
whatever the regulariser R), every student M_g from the ground truth and from M_{g-1}
with weight ``lam``. Everything here is a pure function of the config.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, replace
from typing import Any

import torch

from kdgen import losses
from kdgen.config import Config, ScheduleConfig, effective_lr, schedule_for, to_dict
from kdgen.engine import LossFn, as_terms
from kdgen.precision import Numerics

DEFAULT_STUDENT_LOSS = "kd"


def is_strict(eta: float) -> bool:
    """Whether a teacher loss with this ``eta`` is plain cross-entropy: the regulariser has
    no weight, so every strict patriarch is the same model whatever ``regularizer`` says."""
    return eta == 1.0


def patriarch_loss_key(eta: float, regularizer: str, k: int, form: str) -> tuple[object, ...]:
    """The one rule for when two patriarchs train with the same loss (docs/method.md,
    "Tolerance regularisers"): every strict one (eta = 1) is plain cross-entropy whatever the
    regulariser; any other is its eta, regulariser, K and form. ``regularizer="none"`` with
    eta < 1 is not strict: the convex form trains eta * CE, which under weight decay is
    another model than the strict patriarch."""
    if is_strict(eta):
        return ("strict",)
    return (eta, regularizer, k, form)


def patriarch_key(config: Config) -> tuple[object, ...]:
    """What decides a patriarch's loss: runs of one seed and preset with equal keys train
    the same M_0 and may share it (``patriarch=``)."""
    return patriarch_loss_key(config.eta, config.regularizer, config.k, config.regularizer_form)


def is_tolerant(config: Config, generation: int) -> bool:
    """Whether the tolerance regulariser R applies to this generation's loss."""
    teaches = generation < config.generations
    return generation == 0 or (config.regularize_all_teachers and teaches)


def loss_settings(config: Config, generation: int) -> dict[str, Any]:
    """What decides a generation's loss; stored in its checkpoint so it can be checked."""
    settings: dict[str, Any] = {"generation_role": "patriarch" if generation == 0 else "student"}
    if is_tolerant(config, generation) and is_strict(config.eta):
        settings.update(eta=1.0)  # a strict teacher: the regulariser has no weight
    elif is_tolerant(config, generation):
        settings.update(
            eta=config.eta,
            regularizer=config.regularizer,
            k=config.k,
            regularizer_form=config.regularizer_form,
        )
    if generation > 0:
        settings.update(lam=config.lam, temperature=config.temperature)
        if config.student_loss != DEFAULT_STUDENT_LOSS:
            settings.update(student_loss=config.student_loss)
    return settings


def uses_teacher(config: Config, generation: int) -> bool:
    """Whether a term of this generation's loss reads the teacher's logits: a student's
    KD term, weighted lam. With lam = 0 no teacher is frozen and none runs forward."""
    return generation > 0 and config.lam > 0


def make_loss(config: Config, generation: int) -> LossFn:
    """The loss of one generation and its parts: the teacher loss for M_0, the student loss
    after it (``{"loss": total, "loss_ce": ..., "loss_reg"/"loss_kd": ...}``).

    A student that also teaches, under ``regularize_all_teachers``, replaces its CE term
    with the tolerant teacher loss: (1 - lam) * [teacher loss] + lam * tau^2 * KL
    (our definition, docs/method.md "Where the regulariser applies").
    """
    tolerant = functools.partial(
        losses.teacher_loss_terms,
        eta=config.eta,
        regularizer=config.regularizer,
        k=config.k,
        form=config.regularizer_form,
        validate=False,
    )
    if generation == 0:
        return lambda logits, targets, teacher_logits: tolerant(logits, targets)
    lam, tau = config.lam, config.temperature
    student_loss = losses.STUDENT_LOSSES[config.student_loss]
    if not is_tolerant(config, generation) and not uses_teacher(config, generation):
        # (1 - 0) * CE: the teacher's logits are not computed (see uses_teacher).
        return lambda logits, targets, teacher_logits: losses.teacher_loss_terms(
            logits, targets, eta=1.0, validate=False
        )
    if not is_tolerant(config, generation):
        return lambda logits, targets, teacher_logits: student_loss(
            logits, teacher_logits, targets, lam, tau, validate=False
        )

    def tolerant_student(
        logits: torch.Tensor, targets: torch.Tensor, teacher_logits: Any
    ) -> dict[str, torch.Tensor]:
        terms = tolerant(logits, targets)
        if lam == 0.0:
            return terms
        kd = as_terms(student_loss(logits, teacher_logits, targets, 1.0, tau, validate=False))
        total = (1 - lam) * terms["loss"] + lam * kd["loss"]
        parts = {name: value for name, value in kd.items() if name not in ("loss", "loss_ce")}
        return {**terms, "loss": total, **parts}

    return tolerant_student


def generation_schedule(config: Config, generation: int) -> ScheduleConfig:
    """A generation's schedule, its lr scaled as ``schedule.lr_scaling`` says."""
    schedule = schedule_for(config, generation)
    return replace(schedule, lr=effective_lr(schedule, config.data.batch_size))


# Config keys that do not shape a trained patriarch: naming, output, logging, evaluation,
# where the data lives, and the later generations. Everything else must match.
_NOT_PATRIARCH_SHAPING = {
    "name", "out_dir", "progress", "tensorboard", "check_every", "compile", "eval_every",
    "eval_train_max",
    "device", "max_grad_norm", "patriarch", "process", "generations", "generation_schedules",
    "schedule", "eta", "lam", "regularizer", "k", "regularizer_form",
    "regularize_all_teachers", "temperature", "data.root", "data.download",
    "data.eval_batch_size", "data.imagefolder.workers", "data.hierarchy", "student_loss",
    "ema.teach",
}  # fmt: skip
# The settings that choose the numerics: compared as resolved (Numerics), not as written.
_NUMERICS_SETTINGS = {"precision", "amp", "channels_last"}


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def patriarch_identity(config: Config, numerics: Numerics) -> dict[str, Any]:
    """Everything that shapes generation 0 of ``config`` trained in ``numerics``: model,
    data (name, subset, split, augmentation, batch), seed, the resolved precision and
    layout (not the settings that chose them), the generation-0 schedule and loss."""
    skipped = _NOT_PATRIARCH_SHAPING | _NUMERICS_SETTINGS
    values = {
        key: value
        for key, value in _flat(to_dict(config)).items()
        if not {key, key.split(".")[0]} & skipped
    }
    values.update(numerics.record())
    schedule = asdict(generation_schedule(config, 0))
    values.update({f"schedule.{key}": value for key, value in schedule.items()})
    loss = loss_settings(config, 0)
    values.update({key: value for key, value in loss.items() if key != "generation_role"})
    return values


def patriarch_mismatch(
    trained: Config, trained_numerics: Numerics, config: Config, numerics: Numerics
) -> str:
    """Empty when the patriarch that ``trained`` trained in ``trained_numerics`` is the one
    ``config`` would train in ``numerics``; else "it was trained with KEY=..., this run has
    KEY=..." for every key that differs."""
    theirs = patriarch_identity(trained, trained_numerics)
    ours = patriarch_identity(config, numerics)
    differing = sorted(key for key in set(theirs) | set(ours) if theirs.get(key) != ours.get(key))
    if not differing:
        return ""
    was = ", ".join(f"{key}={theirs.get(key)!r}" for key in differing)
    has = ", ".join(f"{key}={ours.get(key)!r}" for key in differing)
    return f"it was trained with {was}, this run has {has}"

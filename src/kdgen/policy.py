"""The D(eta, lambda) policy: the stages of a run, each stage's loss and schedule, and when
two runs share a patriarch (docs/method.md).

A run is a sequence of stages (:func:`plan_stages`): the generations M_0 ... M_G, each
from fresh weights on the whole schedule, or the cycles of snapshot distillation, which
carry the weights on through one cyclic schedule. The first stage (the patriarch M_0, or
cycle 0) learns from ``eta * CE + (1 - eta) * R`` (a strict teacher at eta = 1, whatever
the regulariser R), every later stage from the ground truth and from the frozen final
model of the stage before it, with weight ``lam``. Everything here is a pure function of
the config.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from kdgen import losses
from kdgen.config import (
    Config,
    ScheduleConfig,
    cycle_epochs,
    effective_lr,
    flatten_config,
    max_generation,
    schedule_for,
    to_dict,
)
from kdgen.losses import LossFn, LossTerms, as_terms
from kdgen.precision import Numerics

DEFAULT_STUDENT_LOSS = "kd"


@dataclass(frozen=True)
class StageLoss:
    """A stage's loss: ``terms(student logits, targets, teacher logits)`` gives the loss and
    its named parts (``{"loss": total, "loss_ce": ..., "loss_reg"/"loss_kd": ...}``);
    ``needs_teacher`` says whether a term reads the teacher's logits (if not, no teacher is
    frozen and none runs forward); ``settings`` is what decides it, saved in checkpoints."""

    terms: LossFn
    needs_teacher: bool
    settings: dict[str, Any]

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor | None
    ) -> LossTerms | torch.Tensor:
        return self.terms(logits, targets, teacher_logits)


@dataclass(frozen=True)
class Stage:
    """One model trained on one schedule segment. A ``"generation"`` starts from fresh
    weights and a whole schedule; a ``"cycle"`` after the first ``carries_on`` the weights
    and optimiser state of the cycle before it, on its own segment of the cyclic schedule.
    ``teaches``: its final model is frozen to teach the next stage."""

    index: int
    kind: str
    schedule: ScheduleConfig
    loss: StageLoss
    teaches: bool
    carries_on: bool = False

    @property
    def teacher(self) -> int | None:
        """The stage whose frozen final model teaches this one (None: no teacher)."""
        return self.index - 1 if self.loss.needs_teacher else None


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


def patriarch_key(config: Config) -> tuple[object, ...] | None:
    """What decides a patriarch's loss: runs of one seed and preset with equal keys train
    the same M_0 and may share it (``patriarch=``). None for a snapshot run, which shares
    no patriarch: its cycle 0 hands on an optimiser state that a saved model lacks."""
    if config.snapshot.cycles:
        return None
    return patriarch_loss_key(config.eta, config.regularizer, config.k, config.regularizer_form)


def last_stage(config: Config) -> int:
    """The index of the last stage a run may train: G of ``generations`` (under
    ``generations=auto``, ``auto.max_generations``), or the last snapshot cycle."""
    if config.snapshot.cycles:
        return config.snapshot.cycles - 1
    return max_generation(config)


def stage_kind(config: Config) -> str:
    """What a run's stages are: ``"cycle"`` (snapshot distillation) or ``"generation"``."""
    return "cycle" if config.snapshot.cycles else "generation"


def plan_stages(config: Config) -> list[Stage]:
    """Every stage of ``config``, in training order: its generations, or its cycles."""
    last = last_stage(config)
    cycles = stage_kind(config) == "cycle"
    schedules = cycle_schedules(config) if cycles else []
    losses_ = [make_loss(config, index) for index in range(last + 1)]
    return [
        Stage(
            index=index,
            kind=stage_kind(config),
            schedule=schedules[index] if cycles else generation_schedule(config, index),
            loss=loss,
            teaches=index < last and losses_[index + 1].needs_teacher,
            carries_on=cycles and index > 0,
        )
        for index, loss in enumerate(losses_)
    ]


def cycle_schedules(config: Config) -> list[ScheduleConfig]:
    """The segments of snapshot distillation's cyclic schedule: each cycle a cosine from
    the peak lr to about 0 over its epochs (docs/method.md, "Snapshot distillation");
    warm-up, if any, only in cycle 0, which starts from random weights."""
    schedule = config.schedule
    lr = effective_lr(schedule, config.data.batch_size)
    return [
        replace(
            schedule, epochs=epochs, lr=lr, warmup_epochs=schedule.warmup_epochs if c == 0 else 0
        )
        for c, epochs in enumerate(cycle_epochs(config))
    ]


def student_temperature(config: Config) -> float:
    """tau of the students: ``snapshot.temperature`` for cycles, else ``temperature``."""
    return config.snapshot.temperature if config.snapshot.cycles else config.temperature


def lr_record(stages: list[Stage]) -> dict[str, float]:
    """The effective peak learning rate of each stage (``schedule.lr_scaling``)."""
    return {str(stage.index): stage.schedule.lr for stage in stages}


def is_tolerant(config: Config, generation: int) -> bool:
    """Whether the tolerance regulariser R applies to this generation's loss."""
    teaches = generation < last_stage(config)
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
        settings.update(lam=config.lam, temperature=student_temperature(config))
        if config.student_loss != DEFAULT_STUDENT_LOSS:
            settings.update(student_loss=config.student_loss)
    return settings


def uses_teacher(config: Config, generation: int) -> bool:
    """Whether a term of this generation's loss reads the teacher's logits: a student's
    KD term, weighted lam. With lam = 0 no teacher is frozen and none runs forward."""
    return make_loss(config, generation).needs_teacher


def make_loss(config: Config, generation: int) -> StageLoss:
    """The loss of one generation and its parts: the teacher loss for M_0, the student loss
    after it (``{"loss": total, "loss_ce": ..., "loss_reg"/"loss_kd": ...}``).

    A student that also teaches, under ``regularize_all_teachers``, replaces its CE term
    with the tolerant teacher loss: (1 - lam) * [teacher loss] + lam * tau^2 * KL
    (our definition, docs/method.md "Where the regulariser applies").
    """
    settings = loss_settings(config, generation)
    needs_teacher = generation > 0 and config.lam > 0
    return StageLoss(_loss_terms(config, generation, needs_teacher), needs_teacher, settings)


def _loss_terms(config: Config, generation: int, needs_teacher: bool) -> LossFn:
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
    lam, tau = config.lam, student_temperature(config)
    student_loss = losses.STUDENT_LOSSES[config.student_loss]
    if not is_tolerant(config, generation) and not needs_teacher:
        # (1 - 0) * CE: the teacher's logits are not computed (see StageLoss.needs_teacher).
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
    "eval_train_max", "auto",
    "device", "max_grad_norm", "patriarch", "process", "generations", "generation_schedules",
    "schedule", "eta", "lam", "regularizer", "k", "regularizer_form",
    "regularize_all_teachers", "temperature", "data.root", "data.download",
    "data.eval_batch_size", "data.imagefolder.workers", "data.hierarchy", "student_loss",
    "ema.teach", "imports", "loggers", "sweep_dir", "student_model", "generation_models",
}  # fmt: skip
# The settings that choose the numerics: compared as resolved (Numerics), not as written.
_NUMERICS_SETTINGS = {"precision", "amp", "channels_last"}


def patriarch_identity(config: Config, numerics: Numerics) -> dict[str, Any]:
    """Everything that shapes generation 0 of ``config`` trained in ``numerics``: model,
    data (name, subset, split, augmentation, batch), seed, the resolved precision and
    layout (not the settings that chose them), the generation-0 schedule and loss."""
    skipped = _NOT_PATRIARCH_SHAPING | _NUMERICS_SETTINGS
    values = {
        key: value
        for key, value in flatten_config(to_dict(config)).items()
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

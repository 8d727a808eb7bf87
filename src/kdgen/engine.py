"""Train one generation: one model, one schedule, the step, evaluation.

The engine knows nothing of generations or of the command line. It gets a model, a
loss function of (student logits, targets, teacher logits), an optional frozen teacher,
data loaders and a schedule; it reports through :class:`Hooks`. With a
:class:`~kdgen.distributed.Distributed` context of several ranks it trains the model
inside DDP, sums the epoch's training totals over the ranks and gathers each rank's
shard of the evaluation logits, so every rank sees the metrics of the whole split.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from kdgen.config import ScheduleConfig
from kdgen.data.tensors import DeviceLoader
from kdgen.distributed import SINGLE, Distributed
from kdgen.ema import WeightEma
from kdgen.errors import NumericalError
from kdgen.losses import LossFn, LossTerms, as_terms
from kdgen.metrics import classification_metrics
from kdgen.precision import autocast, grad_scaler
from kdgen.preemption import TrainingStopped
from kdgen.seeding import restore_rng_state, rng_state

logger = logging.getLogger("kdgen")


class Hooks:
    """Where the engine reports to. The default does nothing; a run folder overrides it."""

    def log(self, record: dict[str, Any]) -> None:
        """One evaluation record: generation, epoch, split and metrics."""

    def save_state(self, state: dict[str, Any]) -> None:
        """A resumable state at the end of an epoch."""


@dataclass
class EvalSettings:
    """What an evaluation computes: the hierarchy of Dist^C/Dist^S, K, and how often."""

    coarse_of_fine: torch.Tensor | None = None
    distance: torch.Tensor | None = None
    k: int = 5
    every: int = 1


@dataclass
class GenerationResult:
    model: nn.Module
    final: dict[str, Any] = field(default_factory=dict)
    # The last evaluation's (logits, labels) per split.
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # The optimiser's final state: a following schedule segment may carry it on.
    optimizer_state: dict[str, Any] = field(default_factory=dict)
    # The EMA of the weights (settings.ema_decay > 0), evaluated beside the model: its
    # metrics per split are ``final["ema"]``.
    ema_model: nn.Module | None = None


def freeze(model: nn.Module) -> nn.Module:
    """A frozen teacher: a separate deep copy, in eval mode, with no gradients."""
    import copy

    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def make_optimizer(model: nn.Module, schedule: ScheduleConfig) -> torch.optim.Optimizer:
    """``schedule.optimizer``: SGD with momentum and optional Nesterov, or AdamW with
    ``betas`` (its weight decay decoupled from the gradient, as AdamW's is); either way
    weight decay applies to weights only (not BN/bias)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": schedule.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if schedule.optimizer == "adamw":
        beta1, beta2 = schedule.betas
        return torch.optim.AdamW(groups, lr=schedule.lr, betas=(beta1, beta2))
    return torch.optim.SGD(
        groups, lr=schedule.lr, momentum=schedule.momentum, nesterov=schedule.nesterov
    )


def lr_factor(schedule: ScheduleConfig, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at an optimiser step: linear warm-up, then the schedule."""
    epoch = step / steps_per_epoch
    if epoch < schedule.warmup_epochs:
        return (step + 1) / (schedule.warmup_epochs * steps_per_epoch)
    if schedule.scheduler == "multistep":
        return schedule.gamma ** sum(epoch >= m for m in schedule.milestones)
    if schedule.scheduler == "cosine":
        progress = (epoch - schedule.warmup_epochs) / (schedule.epochs - schedule.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def carry_on(optimizer: torch.optim.Optimizer, state: dict[str, Any], lr: float) -> None:
    """Continue an earlier segment's optimiser ``state`` (SGD's momentum buffers) with the
    learning rate restarted at ``lr``, the peak of the new segment."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["lr"] = lr
        group.pop("initial_lr", None)  # the new segment's scheduler starts from lr


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, step, steps_per_epoch)
    )


@torch.inference_mode()
def predict(
    model: nn.Module, loader: DeviceLoader, precision: str = "fp32", dist: Distributed = SINGLE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, on the device) and labels of a whole split, in eval mode, computed
    in ``precision`` ("fp32", or "bf16" autocast).

    With several ranks each one predicts its shard of the split and the shards are
    gathered, in the single-process order, on every rank.
    """
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    with autocast(loader.device, precision):
        for images, targets in loader:
            outputs.append(model(images).float())
            labels.append(targets)
    model.train(was_training)
    if not outputs:  # a rank whose shard of a tiny split is empty
        outputs = [torch.empty(0, 0, device=loader.device)]
        labels = [torch.empty(0, dtype=torch.long, device=loader.device)]
    logits, targets = torch.cat(outputs), torch.cat(labels)
    return dist.gather_shards(logits, loader.batch_size), dist.gather_shards(
        targets, loader.batch_size
    )


def evaluate(
    model: nn.Module,
    loader: DeviceLoader,
    settings: EvalSettings,
    precision: str = "fp32",
    dist: Distributed = SINGLE,
) -> tuple[dict[str, float | None], torch.Tensor, torch.Tensor]:
    """Metrics, logits and labels of one split (the whole split, on every rank)."""
    logits, labels = predict(model, loader, precision, dist)
    metrics = classification_metrics(
        logits, labels, settings.coarse_of_fine, settings.k, settings.distance
    )
    return metrics, logits, labels


def _teacher_logits(teacher: nn.Module | None, images: torch.Tensor) -> torch.Tensor | None:
    if teacher is None:
        return None
    with torch.inference_mode():
        logits = teacher(images)
    # Inference tensors cannot take part in autograd; a float32 copy outside the mode can.
    return logits.to(torch.float32, copy=True)


@dataclass
class EpochProgress:
    """Where an epoch stands: optimiser steps done and the running sums (on the device) of
    the loss, each of its parts, and the correct predictions.

    A state saved mid-epoch holds these, so a resume skips the batches already trained on
    (drawing them, so the epoch's generator advances exactly as before) and continues the
    sums: the epoch's metrics are those of an uninterrupted epoch. With several ranks the
    sums are each rank's own (they are added up at the epoch's end), so the state keeps
    every rank's under ``"ranks"``.
    """

    step: int = 0
    loss_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    correct: torch.Tensor | None = None
    seen: int = 0

    def start(self, device: torch.device) -> None:
        """Move saved sums to ``device``, or start them at zero."""
        self.loss_sums = {name: value.to(device) for name, value in self.loss_sums.items()}
        self.correct = (
            torch.zeros((), device=device, dtype=torch.long)
            if self.correct is None
            else self.correct.to(device)
        )

    def add(self, terms: LossTerms, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch (no host sync)."""
        assert self.correct is not None
        count = targets.shape[0]
        for name, value in terms.items():
            total = value.detach().float() * count
            self.loss_sums[name] = self.loss_sums[name] + total if name in self.loss_sums else total
        self.correct += (logits.detach().argmax(dim=1) == targets).sum()
        self.seen += count

    def to_state(self, dist: Distributed = SINGLE) -> dict[str, Any]:
        """A weights-only-loadable record of this progress (sums copied to the CPU): this
        rank's, and with several ranks every rank's under ``"ranks"`` (a collective: every
        rank calls it)."""
        assert self.correct is not None
        state: dict[str, Any] = {
            "step": self.step,
            "loss_sums": {name: value.detach().cpu() for name, value in self.loss_sums.items()},
            "correct": self.correct.detach().cpu(),
            "seen": self.seen,
        }
        if dist.active:
            state["ranks"] = dist.all_gather_object(state)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, dist: Distributed = SINGLE) -> EpochProgress:
        """This rank's progress in a saved state: its own sums when the state was saved by
        as many ranks; else rank 0 continues the sums of all the saved ranks and the others
        start theirs at zero, so the epoch's totals are still whole."""
        if not state:
            return cls()
        saved = [_loss_sums(s) for s in state.get("ranks") or [state]]
        if len(saved) == dist.world_size:
            mine = saved[dist.rank]
        elif dist.is_main():
            mine = {
                "loss_sums": {
                    name: sum(s["loss_sums"][name].double() for s in saved).float()
                    for name in saved[0]["loss_sums"]
                },
                "correct": sum(s["correct"] for s in saved),
                "seen": sum(s["seen"] for s in saved),
            }
        else:
            return cls(state["step"])
        return cls(state["step"], dict(mine["loss_sums"]), mine["correct"], mine["seen"])

    def totals(self, dist: Distributed, device: torch.device) -> dict[str, float]:
        """The epoch's mean loss, mean parts and top-1, summed over the ranks (one sync)."""
        assert self.correct is not None
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        names = sorted(self.loss_sums)
        seen = torch.tensor(float(self.seen), dtype=dtype, device=device)
        values = [*(self.loss_sums[name].to(dtype) for name in names), self.correct.to(dtype), seen]
        *sums, correct, count = dist.all_reduce_sum(torch.stack(values)).tolist()
        count = max(count, 1)
        means = {name: total / count for name, total in zip(names, sums, strict=True)}
        return {**means, "top1": correct / count}


def _loss_sums(state: dict[str, Any]) -> dict[str, Any]:
    """A saved progress with its ``loss_sums`` (states saved before the loss parts were
    logged hold the total alone, as ``loss_sum``)."""
    return {**state, "loss_sums": state.get("loss_sums") or {"loss": state["loss_sum"]}}


def _never() -> bool:
    return False


MIN_LOSS_SCALE = 1.0
"""Under fp16 loss scaling, a scale below this means the gradients overflowed fp16 on step
after step even unscaled: nothing is being learnt, and the run stops as diverged."""


@dataclass
class NumericsGuard:
    """Detects divergence cheaply: device flags accumulate each step (a non-finite loss; a
    gradient norm above ``max_grad_norm``, computed only when a bound is set) and the host
    reads them every ``check_every`` steps and before every save.

    Under fp16 loss scaling (an enabled ``scaler``) gradients that overflow are expected:
    the scaler skips that step and lowers its scale, so the bound is checked only on the
    steps it takes (finite norms). A non-finite *loss* is still divergence: the loss is
    computed in float32 from the logits, so it comes from the forward pass, which no loss
    scale helps (and BatchNorm's running statistics may already hold it). A scale fallen
    below :data:`MIN_LOSS_SCALE` stops the run too.
    """

    max_grad_norm: float | None = None
    check_every: int = 50
    generation: int = 0
    epoch: int = 0
    dist: Distributed = SINGLE
    flags: torch.Tensor | None = None  # [bad loss, bad gradient norm]
    scaler: torch.amp.GradScaler | None = None

    def start(self, device: torch.device) -> None:
        if self.flags is None or self.flags.device != device:
            self.flags = torch.zeros(2, dtype=torch.bool, device=device)

    @property
    def scaling(self) -> bool:
        return self.scaler is not None and self.scaler.is_enabled()

    def after_loss(self, loss: torch.Tensor) -> None:
        """Flag a non-finite (micro-)batch loss (no host sync)."""
        assert self.flags is not None
        self.flags[0] |= ~torch.isfinite(loss.detach())

    def after_backward(self, model: nn.Module) -> None:
        """Flag a gradient norm above the bound (no host sync); the gradients must be
        unscaled already."""
        assert self.flags is not None
        if self.max_grad_norm is None:
            return
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
        if self.scaling:  # a non-finite norm is a step the scaler skips
            self.flags[1] |= torch.isfinite(norm) & (norm > self.max_grad_norm)
        else:
            self.flags[1] |= ~(norm <= self.max_grad_norm)  # NaN norms count as bad

    def check(self, step: int, force: bool = False) -> None:
        """Every ``check_every`` steps (or when ``force``): raise NumericalError if a flag
        is set. With several ranks the flags are summed first, so all ranks agree."""
        if self.flags is None or not (force or step % self.check_every == 0):
            return
        flags = self.dist.all_reduce_sum(self.flags.to(torch.float32)).tolist()
        scale = self.scaler.get_scale() if self.scaler is not None and self.scaling else None
        if flags[0]:
            what = "a non-finite loss"
        elif flags[1]:
            what = f"a gradient norm above {self.max_grad_norm}"
        elif scale is not None and scale < MIN_LOSS_SCALE:
            what = f"fp16 gradients overflowed step after step (loss scale {scale:g})"
        else:
            return
        raise NumericalError(
            f"training diverged at generation {self.generation}, epoch {self.epoch}, "
            f"step {step}: {what} (checked every {self.check_every} steps); the last good "
            "checkpoint is kept; lower schedule.lr, or raise max_grad_norm if it is too tight"
        )


@dataclass
class EpochContext:
    """What a training epoch works with: the module to train (``model``, possibly inside
    DDP or compiled), the frozen ``teacher`` or None, the loader, loss, optimiser and
    schedule, the forward ``precision``, the ranks, the stop predicate and the guard; the
    loss ``scaler`` (a pass-through but for fp16), the micro-batches of each batch
    (``accumulate_steps``) and the EMA of the weights (or None)."""

    model: nn.Module
    teacher: nn.Module | None
    loader: DeviceLoader
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: str = "fp32"
    dist: Distributed = SINGLE
    stop_requested: Callable[[], bool] = _never
    guard: NumericsGuard = field(default_factory=NumericsGuard)
    scaler: torch.amp.GradScaler = field(
        default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False)
    )
    accumulate_steps: int = 1
    ema: WeightEma | None = None


def _micro_batches(
    images: torch.Tensor, targets: torch.Tensor, steps: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, float, bool]]:
    """The batch cut into ``steps`` micro-batches (fewer if it holds fewer images): each
    with its share of the batch's images and whether it is the last."""
    if steps == 1:
        yield images, targets, 1.0, True
        return
    count = targets.shape[0]
    parts = list(zip(images.tensor_split(steps), targets.tensor_split(steps), strict=True))
    parts = [(i, t) for i, t in parts if t.shape[0]]
    for index, (micro_images, micro_targets) in enumerate(parts):
        yield micro_images, micro_targets, micro_targets.shape[0] / count, index == len(parts) - 1


def _gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync`` on a micro-step whose gradients need no all-reduce yet (the last
    micro-step all-reduces the sum); nothing outside DDP."""
    no_sync = getattr(model, "no_sync", None)
    return contextlib.nullcontext() if sync or no_sync is None else no_sync()


def _accumulate(
    context: EpochContext, images: torch.Tensor, targets: torch.Tensor, progress: EpochProgress
) -> None:
    """Forward and backward passes of one batch, micro-batch by micro-batch: each one's
    mean loss weighted by its share, so the gradients add up to those of the batch's mean
    loss (BatchNorm layers see each micro-batch's statistics, not the batch's)."""
    device = context.loader.device
    for micro_images, micro_targets, share, last in _micro_batches(
        images, targets, context.accumulate_steps
    ):
        with _gradient_sync(context.model, last):
            with autocast(device, context.precision):
                logits = context.model(micro_images).float()
                teacher_logits = _teacher_logits(context.teacher, micro_images)
            terms = as_terms(context.loss_fn(logits, micro_targets, teacher_logits))
            loss = terms["loss"] if share == 1.0 else terms["loss"] * share
            context.scaler.scale(loss).backward()
        context.guard.after_loss(terms["loss"])
        progress.add(terms, logits, micro_targets)


def _step_schedule(context: EpochContext) -> None:
    """Advance the lr schedule by one batch. A step that the fp16 scaler skipped advances it
    too (the lr is a function of the batch index), which is all that torch's warning about
    an lr step before the first optimiser step would report."""
    if not context.scaler.is_enabled():
        context.scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before")
        context.scheduler.step()


def _train_epoch(context: EpochContext, progress: EpochProgress) -> dict[str, float] | None:
    """One pass over the training split, from ``progress.step`` on. Sums stay on the
    device: one host sync per epoch (with several ranks, after summing the totals over
    them). Returns None, with ``progress`` updated, when ``stop_requested()`` turns true
    before the epoch's last step. The forward passes run in ``precision``; the loss is
    computed in float32 from float32 logits.

    One optimiser step per batch of the loader (the global batch): with
    ``accumulate_steps`` > 1 its gradients are summed over that many micro-batches first,
    so the data stream, the steps and the lr per step are those of the batch."""
    loader, guard, optimizer, scaler = (
        context.loader,
        context.guard,
        context.optimizer,
        context.scaler,
    )
    context.model.train()
    device = loader.device
    progress.start(device)
    guard.start(device)
    steps = len(loader)
    for step, (images, targets) in enumerate(loader):
        if step < progress.step:
            continue  # trained on before the interruption; drawn to advance the generator
        optimizer.zero_grad(set_to_none=True)
        _accumulate(context, images, targets, progress)
        scaler.unscale_(optimizer)
        guard.after_backward(context.model)
        scaler.step(optimizer)  # skipped by an fp16 scaler if a gradient overflowed
        scaler.update()
        _step_schedule(context)
        if context.ema is not None:
            context.ema.update()
        progress.step = step + 1
        guard.check(progress.step)
        if progress.step < steps and context.stop_requested():
            guard.check(progress.step, force=True)  # never save a bad state
            return None
    guard.check(progress.step, force=True)
    return progress.totals(context.dist, device)


def _evaluate_all(
    model: nn.Module,
    eval_loaders: Mapping[str, DeviceLoader],
    evaluation: EvalSettings,
    precision: str,
    log: Callable[[str, dict[str, Any]], None],
    dist: Distributed = SINGLE,
) -> tuple[dict[str, dict[str, float | None]], dict[str, torch.Tensor]]:
    metrics_by_split, outputs = {}, {}
    for split, loader in eval_loaders.items():
        metrics, logits, labels = evaluate(model, loader, evaluation, precision, dist)
        log(split, metrics)
        metrics_by_split[split], outputs[split] = metrics, (logits, labels)
    return metrics_by_split, outputs


@dataclass(frozen=True)
class TrainSettings:
    """How :func:`train_generation` runs, the same for every generation of a run.

    ``progress`` shows a tqdm bar; without it, rank 0 logs one line an epoch (the
    ``kdgen`` logger, at INFO: a sweep's ``train.log`` shows it). ``dist`` holds the
    ranks (see :mod:`kdgen.distributed`); ``sync_batchnorm`` makes BatchNorm use
    global-batch statistics under DDP.
    ``stop_requested`` is a cheap predicate polled after each optimiser step (preemption).
    A gradient norm above ``max_grad_norm`` (None: no bound) or a non-finite loss stops
    training; the host reads the device's flags every ``check_every`` steps.
    ``compile_model`` trains a ``torch.compile``d module. ``ema_decay`` > 0 keeps an
    exponential moving average of the weights (:class:`kdgen.ema.WeightEma`), evaluated
    beside them.
    """

    progress: bool = False
    dist: Distributed = SINGLE
    sync_batchnorm: bool = True
    stop_requested: Callable[[], bool] = _never
    max_grad_norm: float | None = None
    check_every: int = 50
    compile_model: bool = False
    ema_decay: float = 0.0


def train_generation(
    model: nn.Module,
    train_loader: DeviceLoader,
    eval_loaders: Mapping[str, DeviceLoader],
    schedule: ScheduleConfig,
    loss_fn: LossFn,
    *,
    teacher: nn.Module | None = None,
    generation: int = 0,
    evaluation: EvalSettings | None = None,
    precision: str = "fp32",
    hooks: Hooks | None = None,
    resume_state: dict[str, Any] | None = None,
    settings: TrainSettings | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> GenerationResult:
    """Train ``model`` for ``schedule.epochs`` epochs and evaluate it on ``eval_loaders``.

    Forward passes (the student's, the teacher's, evaluation) run in ``precision``: "fp32",
    or "bf16" or "fp16" autocast (see :mod:`kdgen.precision`; fp16 with a loss scaler);
    weights, optimiser state and the loss stay float32. A ``teacher`` of None runs no
    teacher forward: the loss gets None. Each batch of ``train_loader`` is one optimiser
    step, accumulated over ``schedule.accumulate_steps`` micro-batches.

    Evaluations run every ``evaluation.every`` epochs and after the last one; the result
    holds the last epoch's metrics and logits per split (nothing is selected on them).
    ``resume_state`` continues from a saved state: the end of an epoch, or a step inside
    one (its ``"step"`` and ``"partial"`` sums). ``optimizer_state`` (a cycle of snapshot
    distillation) starts the optimiser from an earlier segment's final state, its learning
    rate restarted. ``settings`` say how to run (see :class:`TrainSettings`). With several
    ranks in ``settings.dist`` the loaders must be sharded (``shard=dist.shard``);
    ``model`` is trained inside DDP (its BatchNorm layers made global-batch, in place, if
    ``sync_batchnorm``) and rank 0's buffers are copied to all ranks after each epoch, so
    every rank ends with the same weights. Saved states hold ``model``'s own state_dict
    (no ``module.``), the loss scaler's state and the EMA's weights. With
    ``settings.ema_decay`` > 0 every evaluation also evaluates the EMA (logged as the splits
    ``val_ema`` and ``test_ema``; its last metrics are ``result.final["ema"]``, the averaged
    model ``result.ema_model``).

    When ``settings.stop_requested()`` turns true the engine saves a resumable state
    through ``hooks`` and raises :class:`~kdgen.preemption.TrainingStopped`. A non-finite
    loss, or a gradient norm above ``max_grad_norm``, raises
    :class:`~kdgen.errors.NumericalError` (read on the host every ``check_every`` steps and
    before every save, so no bad state is saved).
    """
    if teacher is not None and teacher is model:
        raise ValueError("the teacher must be a frozen copy, not the student itself")
    hooks = hooks or Hooks()
    evaluation = evaluation or EvalSettings()
    settings = settings or TrainSettings()
    dist, stop = settings.dist, settings.stop_requested
    optimizer = make_optimizer(model, schedule)
    if optimizer_state is not None:
        carry_on(optimizer, optimizer_state, schedule.lr)
    scheduler = make_scheduler(optimizer, schedule, len(train_loader))
    scaler = grad_scaler(train_loader.device, precision)
    ema = WeightEma(model, settings.ema_decay) if settings.ema_decay > 0 else None
    start_epoch, train_metrics, partial = 0, {}, EpochProgress()
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        _restore_step_state(resume_state, scaler, ema)
        restore_rng_state(resume_state)
        start_epoch, train_metrics = resume_state["epoch"], resume_state["train_metrics"]
        partial = EpochProgress.from_state(resume_state.get("partial"), dist)
    epoch = start_epoch
    net = dist.wrap(model, settings.sync_batchnorm)
    if settings.compile_model:  # compile time shows as the first epoch's extra seconds
        net = torch.compile(net)

    def log(split: str, metrics: dict[str, Any]) -> None:
        hooks.log({"generation": generation, "epoch": epoch, "split": split, **metrics})

    def save(extra: dict[str, Any]) -> None:
        hooks.save_state(
            {
                "generation": generation,
                "epoch": epoch,
                "step": 0,
                "train_metrics": train_metrics,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                **_step_state(scaler, ema),
                **rng_state(),
                **extra,
            }
        )

    bar = tqdm(
        total=schedule.epochs,
        initial=start_epoch,
        desc=f"gen {generation}",
        disable=not settings.progress,
        dynamic_ncols=True,
    )
    result = GenerationResult(model=model)
    guard = NumericsGuard(
        settings.max_grad_norm, settings.check_every, generation, dist=dist, scaler=scaler
    )
    context = EpochContext(
        net, teacher, train_loader, loss_fn, optimizer, scheduler, precision, dist, stop, guard
    )
    context.scaler, context.accumulate_steps, context.ema = scaler, schedule.accumulate_steps, ema
    evaluate_all = functools.partial(
        _evaluate_all,
        eval_loaders=eval_loaders,
        evaluation=evaluation,
        precision=precision,
        dist=dist,
    )
    while epoch < schedule.epochs:
        train_loader.set_epoch(epoch)
        guard.epoch = epoch + 1
        started = time.perf_counter()
        metrics = _train_epoch(context, partial)
        if metrics is None:  # stopped inside the epoch: save where it stands, then stop
            save({"step": partial.step, "partial": partial.to_state(dist)})
            bar.close()
            raise TrainingStopped(generation, epoch + 1, partial.step)
        train_metrics, partial = metrics, EpochProgress()
        dist.sync_buffers(model)
        epoch += 1
        seconds = time.perf_counter() - started  # _train_epoch ends with its one host sync
        log("train", {"lr": optimizer.param_groups[0]["lr"], "seconds": seconds, **train_metrics})
        postfix = {"loss": f"{train_metrics['loss']:.3f}", "acc": f"{train_metrics['top1']:.3f}"}
        if epoch % evaluation.every == 0 or epoch == schedule.epochs:
            result.final, result.outputs = evaluate_all(model, log=log)
            postfix.update({f"{s}_acc": f"{m['top1']:.3f}" for s, m in result.final.items()})
            if ema is not None:
                result.final["ema"] = _evaluate_ema(ema, evaluate_all, log)
        bar.update(1)
        bar.set_postfix(postfix)
        if not settings.progress and dist.is_main():  # no bar: one line an epoch (a log)
            summary = ", ".join(f"{name} {value}" for name, value in postfix.items())
            logger.info(
                f"gen {generation} epoch {epoch}/{schedule.epochs}: {summary} ({seconds:.1f}s)"
            )
        save({})
        if epoch < schedule.epochs and stop():
            bar.close()
            raise TrainingStopped(generation, epoch, len(train_loader))
    bar.close()
    if start_epoch == schedule.epochs:  # resumed after the last epoch's save: evaluate again
        model.eval()
        result.final, result.outputs = evaluate_all(model, log=_no_log)
        if ema is not None:
            result.final["ema"] = _evaluate_ema(ema, evaluate_all, _no_log)
    result.final["train"] = train_metrics
    result.optimizer_state = optimizer.state_dict()
    result.ema_model = None if ema is None else ema.module
    return result


def _no_log(split: str, metrics: dict[str, Any]) -> None:
    """Log nothing (a re-evaluation of what is logged already)."""


def _evaluate_ema(
    ema: WeightEma,
    evaluate_all: Callable[..., tuple[dict[str, Any], dict[str, torch.Tensor]]],
    log: Callable[[str, dict[str, Any]], None],
) -> dict[str, Any]:
    """The EMA's metrics per split, logged as ``<split>_ema``."""
    metrics, _ = evaluate_all(ema.module, log=lambda split, values: log(f"{split}_ema", values))
    return metrics


def _step_state(scaler: torch.amp.GradScaler, ema: WeightEma | None) -> dict[str, Any]:
    """What a resumable state holds besides the model, optimiser and scheduler: the fp16
    loss scaler's state and the EMA's weights (when they are in use)."""
    state: dict[str, Any] = {}
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def _restore_step_state(
    state: dict[str, Any], scaler: torch.amp.GradScaler, ema: WeightEma | None
) -> None:
    if scaler.is_enabled() and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    if ema is not None and "ema" in state:
        ema.load_state_dict(state["ema"])

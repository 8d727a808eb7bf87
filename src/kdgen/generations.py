"""Training a run's stages (docs/method.md): the patriarch M_0, then students M_1 ... M_G,
or the cycles of snapshot distillation, in one loop (:func:`_train_stages`).

A generation starts from fresh weights; M_g (g >= 1) learns from the ground truth and
from M_{g-1}, which is a frozen deep copy: eval mode, no gradients, run under inference
mode. A snapshot cycle after the first carries on the weights and optimiser state of the
cycle before it and learns from a frozen copy of that cycle's last snapshot. Finished
stages are never retrained on resume; the unfinished one continues from its last saved
state. Under ``generations=auto`` the chooser (:mod:`kdgen.chooser`) says when to stop.

Under torchrun (see :mod:`kdgen.distributed`) every rank runs this same code on its shard
of the data; rank 0 alone writes the run folder, and barriers follow its writes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdgen import distributed, preemption
from kdgen.build import (
    ModelFactory,
    PreparedData,
    build_model,
    evaluation_settings,
    prepare_data,
    resolve_device,
    run_numerics,
    train_settings,
    with_user_objects,
)
from kdgen.chooser import choose, stops_before
from kdgen.config import Config, model_args_of, model_of, to_yaml
from kdgen.data import DataSource, TorchData
from kdgen.distributed import Distributed
from kdgen.engine import (
    EvalSettings,
    GenerationResult,
    Hooks,
    evaluate,
    freeze,
    train_generation,
)
from kdgen.errors import CheckpointError
from kdgen.metrics import ensemble_summaries
from kdgen.patriarchs import Patriarch, load_patriarch
from kdgen.policy import Stage, lr_record, plan_stages
from kdgen.precision import Numerics
from kdgen.preemption import TrainingStopped
from kdgen.preflight import preflight
from kdgen.provenance import begin_run
from kdgen.runs import (
    RunFolder,
    choose_run_folder,
    generation_entry,
    load_checkpoint,
)

log = logging.getLogger("kdgen")


@dataclass
class RunResult:
    path: Path
    summary: dict[str, Any]


class RunHooks(Hooks):
    """Engine hooks that write to the run folder (nothing, if the folder is not writable)."""

    def __init__(
        self, folder: RunFolder, digest: str, save_every: int = 1, config_yaml: str = ""
    ) -> None:
        self.folder, self.digest, self.save_every = folder, digest, save_every
        self.config_yaml = config_yaml

    def log(self, record: dict[str, Any]) -> None:
        self.folder.log(record)

    def save_state(self, state: dict[str, Any]) -> None:
        mid_epoch = state.get("step", 0) > 0
        if mid_epoch or state["epoch"] % self.save_every == 0:
            payload = {"config_hash": self.digest, "config": self.config_yaml, **state}
            self.folder.save(self.folder.last_checkpoint, payload)
        self.folder.write_state(
            "running",
            generation=state["generation"],
            epoch=state["epoch"],
            step=state.get("step", 0),
        )


def _choose_folder(
    config: Config, resume: bool, force_new: bool, dist: Distributed
) -> tuple[RunFolder, Config]:
    """Rank 0 chooses (or refuses) the run folder, creating nothing yet; every rank then
    uses the same path, and only rank 0 may write there. Returns the folder and the config
    with ``out_dir`` set to it (a copy: the caller's config is not changed)."""
    path = dist.run_on_main(lambda: choose_run_folder(config, resume, force_new).path)
    return RunFolder(path, writable=dist.is_main()), replace(config, out_dir=str(path))


def _model_checkpoint(
    config: Config, dataset: DataSource, stage: Stage, model: nn.Module, digest: str
) -> dict[str, Any]:
    return {
        "kind": "model",
        "config_hash": digest,
        "generation": stage.index,
        "stage": stage.kind,
        "model_name": model_of(config, stage.index),
        "model_args": model_args_of(config, stage.index),
        "model": model.state_dict(),
        "num_classes": dataset.num_classes,
        "in_channels": dataset.in_channels,
        "loss": stage.loss.settings,
    }


def _load_generation(
    folder: RunFolder, generation: int, digest: str, model: nn.Module, ema: bool = False
) -> None:
    """Load a finished generation's final weights (with ``ema``: their EMA) into ``model``."""
    path = folder.generation_checkpoint(generation, ema)
    payload = load_checkpoint(path)
    if payload.get("config_hash") != digest:
        raise CheckpointError(f"{path} belongs to another config")
    model.load_state_dict(payload["model"])


@dataclass
class _Run:
    """What every stage of one run is trained with."""

    config: Config
    folder: RunFolder
    data: PreparedData
    digest: str
    evaluation: EvalSettings
    device: torch.device
    numerics: Numerics
    dist: Distributed
    hooks: RunHooks
    patriarch: Patriarch | None = None  # M_0, when loaded before the run folder was opened

    def build(self, index: int) -> nn.Module:
        """A fresh model of stage ``index`` (its init seeded by the stage)."""
        return build_model(
            self.config, self.data.dataset, index, self.device, self.numerics.channels_last
        )


def train_generations(
    config: Config,
    *,
    model: ModelFactory | None = None,
    data: TorchData | None = None,
    resume: bool = False,
    force_new: bool = False,
    dist: Distributed | None = None,
) -> RunResult:
    """Train the stages of ``config`` (its generations M_0 ... M_G, or its snapshot cycles),
    writing everything to its run folder.

    ``model``, a factory ``model(num_classes) -> nn.Module``, and ``data``, a
    :class:`~kdgen.data.TorchData`, replace the config's ``model`` and data set; the run
    folder records them by description only (:func:`kdgen.build.with_user_objects`), so a
    resume must be given the same ones again. ``dist`` (by default the context of a
    torchrun launch, see :mod:`kdgen.distributed`) makes this rank train its shard of
    every global batch; only rank 0 writes.
    """
    config = with_user_objects(config, model, data)
    dist = dist or distributed.current()
    device = resolve_device(distributed.device_for(dist, config.device))
    dist.local_batch(config.data.batch_size)  # a ConfigError before any file is written
    folder, config = _choose_folder(config, resume, force_new, dist)
    recorded = dist.run_on_main(lambda: folder.read_state() if resume else {})
    numerics = dist.run_on_main(lambda: run_numerics(config, device, recorded))
    checked = dist.main_first(lambda: preflight(config, device, numerics))  # before any write
    dataset = checked.dataset
    provenance = dist.run_on_main(lambda: begin_run(config, device, recorded))
    digest = provenance.digest
    data = prepare_data(config, device, dataset, dist, numerics.channels_last)
    evaluation = evaluation_settings(config, dataset)
    stages = plan_stages(config)
    dist.run_on_main(lambda: folder.open(config, resume))  # created and locked by rank 0
    try:
        summary = folder.begin(
            config,
            dataset,
            evaluation,
            numerics,
            resume,
            digest,
            provenance.record,
            stage=stages[0].kind,
            imports=checked.imports,
            world_size=dist.world_size,
            global_batch_size=config.data.batch_size,
            lr_effective=lr_record(stages),
        )
        dist.barrier()  # every rank has read the folder's old state before rank 0 changes it
        hooks = RunHooks(folder, digest, config_yaml=to_yaml(config))
        run = _Run(
            config,
            folder,
            data,
            digest,
            evaluation,
            device,
            numerics,
            dist,
            hooks,
            checked.patriarch,
        )
        last = _train_stages(run, stages, summary)
        if dist.is_main():
            _summarise(run, summary, last)
        folder.finish(summary, last)
    except TrainingStopped as stopped:
        stopped.run_dir = str(folder.path)
        folder.write_state("interrupted", reason=str(stopped))
        raise
    except BaseException as error:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        folder.write_state(status, reason=f"{type(error).__name__}: {error}")
        raise
    finally:
        folder.close()  # the trackers closed, the folder's lock released
    dist.barrier()  # the run folder is complete for every rank (and, in a sweep, the next run)
    return RunResult(folder.path, dist.broadcast_object(summary))


def _train_stages(run: _Run, stages: list[Stage], summary: dict[str, Any]) -> int:
    """Train (or load, if done) each stage in turn, until the chooser says stop
    (``generations=auto``). A stage hands the next its frozen copy when the next one's loss
    needs a teacher, and a cycle its weights and optimiser state. A stop signal on any rank
    stops every rank at the same step (:meth:`Distributed.agreed`). Returns the index of
    the last stage trained."""
    stop_requested = run.dist.agreed(preemption.stop_requested)
    done = {entry["generation"] for entry in summary["generations"]}
    handover = _Handover(-1, 0)
    for stage in stages:
        if stops_before(run.config, summary["generations"], stage.index):
            break  # generations=auto: the last ones failed to improve on validation
        if stage.index in done and run.folder.generation_checkpoint(stage.index).exists():
            teacher = _load_teacher(run, stage) if stage.teaches else None
            handover = _Handover(stage.index, stage.schedule.epochs, teacher)
            continue
        if stop_requested():
            raise TrainingStopped(stage.index, 0, 0)  # between stages: nothing to save
        result, epochs = _train_stage(run, stage, handover, stop_requested)
        model, ema_model = result.model, result.ema_model
        if ema_model is not None:  # before gen{i}.pt, which marks the stage done
            run.folder.save(
                run.folder.generation_checkpoint(stage.index, ema=True),
                _model_checkpoint(run.config, run.data.dataset, stage, ema_model, run.digest),
            )
        model_name = model_of(run.config, stage.index)
        entry = generation_entry(
            stage.index, result.final, epochs, stage.kind, stage.teacher, model_name
        )
        checkpoint = _model_checkpoint(run.config, run.data.dataset, stage, model, run.digest)
        run.folder.save_stage(summary, entry, checkpoint, result.outputs)
        run.dist.check_identical(model, f"M_{stage.index}")
        teaching = ema_model if run.config.ema.teach and ema_model is not None else model
        teacher = freeze(teaching) if stage.teaches else None
        handover = _Handover(
            stage.index, epochs, teacher, model.state_dict(), result.optimizer_state
        )
        run.dist.barrier()  # rank 0's gen{i}.pt and logits are on disk for every rank
    return handover.index


@dataclass
class _Handover:
    """What stage ``index`` (trained for ``epochs``) passes to the next: its frozen copy
    when the next one learns from it, and its final weights and optimiser state for a cycle
    that carries them on (None after a resume: then they are read back from the run's
    last saved state, the end of that stage)."""

    index: int
    epochs: int
    teacher: nn.Module | None = None
    weights: dict[str, torch.Tensor] | None = None
    optimizer_state: dict[str, Any] | None = None

    def carried(self, run: _Run) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The (weights, optimiser state) a following cycle starts from."""
        if self.weights is not None and self.optimizer_state is not None:
            return self.weights, self.optimizer_state
        state = run.folder.stage_end_state(self.index, self.epochs, run.digest, run.config)
        return state["model"], state["optimizer"]


def _summarise(run: _Run, summary: dict[str, Any], last: int) -> None:
    """Add the ensembles of stages 0 ... ``last`` (from their saved logits) and the choice
    on validation to ``summary``."""
    evaluation = run.evaluation
    saved = {index: run.folder.load_logits(index) for index in range(last + 1)}
    summary["ensembles"] = ensemble_summaries(
        saved,
        evaluation.coarse_of_fine,
        evaluation.k,
        evaluation.distance,
        models={index: model_of(run.config, index) for index in saved},
    )
    chosen = choose(run.config, summary["generations"], summary["ensembles"])
    if chosen is not None:
        summary["chosen"] = chosen


def _load_teacher(run: _Run, stage: Stage) -> nn.Module:
    """The saved final model of a finished stage, frozen to teach the next one."""
    model = run.build(stage.index)
    _load_generation(run.folder, stage.index, run.digest, model, run.config.ema.teach)
    return freeze(model)


def _train_stage(
    run: _Run, stage: Stage, handover: _Handover, stop_requested: Callable[[], bool]
) -> tuple[GenerationResult, int]:
    """Train one stage (or load a shared patriarch): the engine's result and the epochs.
    The model is built fresh (its init seeded by the stage); a cycle then loads the weights
    it carries on, unless it resumes from a state of its own."""
    config, data = run.config, run.data
    model = run.build(stage.index)
    if stage.index == 0 and config.patriarch:
        patriarch = run.patriarch or load_patriarch(config, data.dataset, run.device, run.numerics)
        model = patriarch.model
        final, outputs = _evaluate_splits(model, data, run.evaluation, run.numerics, run.dist)
        final["train"], epochs = patriarch.train, patriarch.epochs
        ema_model = None
        if config.ema.decay > 0 and patriarch.has_ema:  # weights from elsewhere have none
            loaded = load_patriarch(config, data.dataset, run.device, run.numerics, ema=True)
            ema_model = loaded.model
            final["ema"] = _evaluate_splits(
                ema_model, data, run.evaluation, run.numerics, run.dist
            )[0]
        return GenerationResult(model, final, outputs, ema_model=ema_model), epochs
    resume_state = run.folder.resume_stage(stage.index, run.digest, config)
    optimizer_state = None
    if stage.carries_on and resume_state is None:
        weights, optimizer_state = handover.carried(run)
        model.load_state_dict(weights)
    data.train_loader.set_generation(stage.index)
    result = train_generation(
        model,
        data.train_loader,
        data.eval_loaders,
        stage.schedule,
        stage.loss,
        teacher=handover.teacher,
        generation=stage.index,
        evaluation=run.evaluation,
        precision=run.numerics.precision,
        hooks=run.hooks,
        resume_state=resume_state,
        settings=train_settings(config, run.dist, stop_requested),
        optimizer_state=optimizer_state,
    )
    return result, stage.schedule.epochs


def _evaluate_splits(
    model: nn.Module,
    data: PreparedData,
    evaluation: EvalSettings,
    numerics: Numerics,
    dist: Distributed,
) -> tuple[dict[str, Any], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Metrics and (logits, labels) of every evaluation split."""
    evaluated = {
        name: evaluate(model, loader, evaluation, numerics.precision, dist)
        for name, loader in data.eval_loaders.items()
    }
    final = {name: value[0] for name, value in evaluated.items()}
    outputs = {name: (value[1], value[2]) for name, value in evaluated.items()}
    return final, outputs

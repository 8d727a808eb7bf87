"""Training in generations: the patriarch M_0, then students M_1 ... M_G (docs/method.md).

Every generation has the same architecture and starts from fresh weights. M_g (g >= 1)
learns from the ground truth and from M_{g-1}, which is a frozen deep copy: eval mode,
no gradients, run under inference mode. Finished generations are never retrained on
resume; the unfinished one continues from its last saved epoch.

Under torchrun (see :mod:`kdgen.distributed`) every rank runs this same code on its shard
of the data; rank 0 alone writes the run folder, and barriers follow its writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
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
    load_data,
    prepare_data,
    resolve_device,
    run_numerics,
    train_settings,
    with_user_objects,
)
from kdgen.config import Config, config_hash, to_yaml
from kdgen.data import DataSource, TorchData
from kdgen.distributed import SINGLE, Distributed
from kdgen.engine import EvalSettings, Hooks, evaluate, freeze, train_generation
from kdgen.errors import CheckpointError, ConfigError
from kdgen.metrics import ensemble_summaries
from kdgen.policy import (
    generation_schedule,
    loss_settings,
    make_loss,
    patriarch_identity,
    uses_teacher,
)
from kdgen.precision import Numerics
from kdgen.preemption import TrainingStopped
from kdgen.runs import (
    RunFolder,
    check_identity,
    classes_record,
    generation_entry,
    load_checkpoint,
    lr_record,
    open_run_folder,
    summary_header,
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


def _open_folder(config: Config, resume: bool, force_new: bool, dist: Distributed) -> RunFolder:
    """Rank 0 opens (or refuses) the run folder; every rank then uses the same path, and
    only rank 0 may write there."""
    path = dist.run_on_main(lambda: open_run_folder(config, resume, force_new).path)
    config.out_dir = str(path)
    return RunFolder(path, writable=dist.is_main())


def _patriarch_paths(config: Config) -> tuple[Path, Path]:
    """(run folder, gen0 checkpoint) of ``patriarch=PATH`` (a run folder or its gen0.pt)."""
    path = Path(config.patriarch or "")
    if path.is_dir():
        return path, path / "checkpoints" / "gen0.pt"
    return path.parent.parent, path


def _check_patriarch(config: Config, run_dir: Path, payload: dict[str, Any]) -> None:
    """Refuse a patriarch that is not the one this run would train (exit 2, one line)."""
    folder = RunFolder(run_dir)
    if not folder.config_path.exists():
        raise CheckpointError(
            f"patriarch {run_dir} cannot be checked: it has no config.yaml beside its checkpoints"
        )
    trained = folder.read_config()
    if payload.get("config_hash") != config_hash(trained):
        raise CheckpointError(
            f"patriarch {run_dir}: its gen0 checkpoint does not belong to its config.yaml"
        )
    theirs, ours = patriarch_identity(trained), patriarch_identity(config)
    differing = sorted(key for key in set(theirs) | set(ours) if theirs.get(key) != ours.get(key))
    if differing:
        was = ", ".join(f"{key}={theirs.get(key)!r}" for key in differing)
        has = ", ".join(f"{key}={ours.get(key)!r}" for key in differing)
        raise CheckpointError(
            f"patriarch {run_dir} does not match this run: it was trained with {was}, "
            f"this run has {has}"
        )


def _load_patriarch(
    config: Config, dataset: DataSource, device: torch.device, channels_last: bool
) -> nn.Module:
    """M_0 from another run (``patriarch=PATH``), refused unless that run's generation 0
    was trained exactly as this run would train it (:func:`kdgen.policy.patriarch_identity`)."""
    run_dir, path = _patriarch_paths(config)
    payload = load_checkpoint(path)
    _check_patriarch(config, run_dir, payload)
    expected = {"num_classes": dataset.num_classes, "in_channels": dataset.in_channels}
    check_identity(payload, expected, "patriarch", path)
    model = build_model(config, dataset, 0, device, channels_last)
    model.load_state_dict(payload["model"])
    return model


def _patriarch_training(config: Config) -> tuple[dict[str, Any] | None, int]:
    """The training metrics and epochs of a shared patriarch, from its own run's summary."""
    run_dir, _ = _patriarch_paths(config)
    summary = RunFolder(run_dir).read_summary() or {"generations": []}
    for entry in summary["generations"]:
        if entry["generation"] == 0:
            return entry.get("train"), entry.get("epochs", 0)
    return None, 0


def _model_checkpoint(
    config: Config, dataset: DataSource, generation: int, model: nn.Module, digest: str
) -> dict[str, Any]:
    return {
        "kind": "model",
        "config_hash": digest,
        "generation": generation,
        "model_name": config.model,
        "model_args": dict(config.model_args),
        "model": model.state_dict(),
        "num_classes": dataset.num_classes,
        "in_channels": dataset.in_channels,
        "loss": loss_settings(config, generation),
    }


def _load_generation(folder: RunFolder, generation: int, digest: str, model: nn.Module) -> None:
    payload = load_checkpoint(folder.generation_checkpoint(generation))
    if payload.get("config_hash") != digest:
        raise CheckpointError(
            f"{folder.generation_checkpoint(generation)} belongs to another config"
        )
    model.load_state_dict(payload["model"])


def train_generations(
    config: Config,
    *,
    model: ModelFactory | None = None,
    data: TorchData | None = None,
    resume: bool = False,
    force_new: bool = False,
    dist: Distributed | None = None,
) -> RunResult:
    """Train M_0 ... M_G as ``config`` says, writing everything to its run folder.

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
    folder = _open_folder(config, resume, force_new, dist)
    digest = config_hash(config)
    numerics = dist.run_on_main(
        lambda: run_numerics(config, device, folder.read_state() if resume else {})
    )
    dataset = dist.main_first(lambda: load_data(config))
    if config.k > dataset.num_classes:
        raise ConfigError(
            f"k={config.k} exceeds the {dataset.num_classes} classes of {config.data.name}"
        )
    data = prepare_data(config, device, dataset, dist, numerics.channels_last)
    evaluation = evaluation_settings(config, dataset)
    summary = folder.read_summary() if resume else None
    if not summary or summary.get("config_hash") != digest:
        summary = summary_header(config, dataset, digest, numerics)
    if not resume:
        folder.write_text(folder.config_path, to_yaml(config))
    if not resume or not (folder.path / "classes.json").exists():  # a kill may fall between
        folder.write_json(folder.path / "classes.json", classes_record(evaluation, dataset))
    if resume:
        folder.remove_stale_temp_files()
    if config.tensorboard:
        folder.enable_tensorboard()
    folder.write_state(
        "running",
        started=time.time(),
        world_size=dist.world_size,
        global_batch_size=config.data.batch_size,
        lr_effective=lr_record(config),
        **numerics.record(),
    )
    dist.barrier()  # every rank has read the folder's old state before rank 0 changes it
    hooks = RunHooks(folder, digest, config_yaml=to_yaml(config))
    try:
        _run_generations(
            config, folder, data, summary, digest, evaluation, hooks, device, numerics, dist
        )
    except TrainingStopped as stopped:
        stopped.run_dir = str(folder.path)
        folder.write_state("interrupted", reason=str(stopped))
        raise
    except BaseException as error:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        folder.write_state(status, reason=f"{type(error).__name__}: {error}")
        raise
    finally:
        folder.close()
    folder.write_metrics_csv()
    folder.write_state("finished", generation=config.generations)
    dist.barrier()  # the run folder is complete for every rank (and, in a sweep, the next run)
    return RunResult(folder.path, dist.broadcast_object(summary))


def _run_generations(
    config: Config,
    folder: RunFolder,
    data: PreparedData,
    summary: dict[str, Any],
    digest: str,
    evaluation: EvalSettings,
    hooks: RunHooks,
    device: torch.device,
    numerics: Numerics,
    dist: Distributed = SINGLE,
) -> None:
    """Train (or load, if done) each generation; M_g is frozen as a teacher only when
    M_{g+1}'s loss uses one (:func:`uses_teacher`). A stop signal on any rank stops every
    rank at the same step (:meth:`Distributed.agreed`)."""
    stop_requested = dist.agreed(preemption.stop_requested)
    done = {entry["generation"] for entry in summary["generations"]}
    channels_last = numerics.channels_last
    teacher: nn.Module | None = None
    for generation in range(config.generations + 1):
        if generation not in done and stop_requested():
            raise TrainingStopped(generation, 0, 0)  # between generations: nothing to save
        teaches = generation < config.generations and uses_teacher(config, generation + 1)
        if generation in done and folder.generation_checkpoint(generation).exists():
            teacher = None
            if teaches:
                model = build_model(config, data.dataset, generation, device, channels_last)
                _load_generation(folder, generation, digest, model)
                teacher = freeze(model)
            continue
        model = build_model(config, data.dataset, generation, device, channels_last)
        if generation == 0 and config.patriarch:
            model = _load_patriarch(config, data.dataset, device, numerics.channels_last)
            final, outputs = _evaluate_splits(model, data, evaluation, numerics.precision, dist)
            final["train"], epochs = _patriarch_training(config)
        else:
            resume_state = folder.resume_state(generation, digest, config)
            # A resume replays what was logged after its checkpoint: drop those records.
            folder.truncate_metrics(generation, resume_state["epoch"] if resume_state else 0)
            schedule = generation_schedule(config, generation)
            data.train_loader.set_generation(generation)
            result = train_generation(
                model,
                data.train_loader,
                data.eval_loaders,
                schedule,
                make_loss(config, generation),
                teacher=teacher,
                generation=generation,
                evaluation=evaluation,
                precision=numerics.precision,
                hooks=hooks,
                resume_state=resume_state,
                settings=train_settings(config, dist, stop_requested),
            )
            final, outputs, epochs = result.final, result.outputs, schedule.epochs
        folder.save_logits(generation, outputs)
        _save_generation(config, folder, data, summary, digest, generation, model, final, epochs)
        dist.check_identical(model, f"M_{generation}")
        teacher = freeze(model) if teaches else None
        dist.barrier()  # rank 0's gen{g}.pt and logits are on disk for every rank
    if dist.is_main():
        saved = {g: folder.load_logits(g) for g in range(config.generations + 1)}
        summary["ensembles"] = ensemble_summaries(
            saved, evaluation.coarse_of_fine, evaluation.k, evaluation.distance
        )
        folder.write_summary(summary)


def _evaluate_splits(
    model: nn.Module,
    data: PreparedData,
    evaluation: EvalSettings,
    precision: str,
    dist: Distributed,
) -> tuple[dict[str, Any], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Metrics and (logits, labels) of every evaluation split."""
    evaluated = {
        name: evaluate(model, loader, evaluation, precision, dist)
        for name, loader in data.eval_loaders.items()
    }
    final = {name: value[0] for name, value in evaluated.items()}
    outputs = {name: (value[1], value[2]) for name, value in evaluated.items()}
    return final, outputs


def _save_generation(
    config: Config,
    folder: RunFolder,
    data: PreparedData,
    summary: dict[str, Any],
    digest: str,
    generation: int,
    model: nn.Module,
    final: dict[str, Any],
    epochs: int,
) -> None:
    """Checkpoint a finished generation and add it to the summary (rank 0 writes)."""
    folder.save(
        folder.generation_checkpoint(generation),
        _model_checkpoint(config, data.dataset, generation, model, digest),
    )
    summary["generations"] = [e for e in summary["generations"] if e["generation"] != generation]
    summary["generations"].append(generation_entry(generation, final, epochs))
    folder.write_summary(summary)
    folder.write_metrics_csv()

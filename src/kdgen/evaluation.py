"""Recompute a finished (or partial) run's metrics from its saved checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdgen.build import (
    ModelFactory,
    evaluation_settings,
    load_data,
    load_model,
    prepare_data,
    resolve_device,
    run_numerics,
    with_user_objects,
)
from kdgen.config import model_of
from kdgen.data import TorchData
from kdgen.engine import evaluate
from kdgen.errors import RunDirError
from kdgen.policy import stage_kind
from kdgen.provenance import run_digest
from kdgen.runs import RunFolder, atomic_write_json, summary_header


def load_generation_model(
    run_dir: str | Path,
    generation: int,
    device: torch.device | str = "cpu",
    *,
    model: ModelFactory | None = None,
    data: TorchData | None = None,
) -> torch.nn.Module:
    """The final model of one generation of a run, in eval mode. A run made from Python
    objects needs the same ``model`` factory and ``data`` again (see
    :func:`kdgen.train_generations`)."""
    folder = RunFolder(run_dir)
    config = with_user_objects(folder.read_config(), model, data)
    dataset = load_data(config)
    return load_model(folder, config, dataset, generation, torch.device(device))


def evaluate_run(run_dir: str | Path, device: str = "auto", split: str = "test") -> dict[str, Any]:
    """Evaluate every saved generation (or snapshot cycle) on ``split``; writes and
    returns ``eval.json``."""
    folder = RunFolder(run_dir)
    config = folder.read_config()
    torch_device = resolve_device(device)
    recorded = folder.read_state()
    numerics = run_numerics(config, torch_device, recorded)
    dataset = load_data(config)
    data = prepare_data(config, torch_device, dataset, channels_last=numerics.channels_last)
    if split not in data.eval_loaders:
        raise RunDirError(
            f"split '{split}' is not evaluated in this run; use one of "
            f"{', '.join(data.eval_loaders)}"
        )
    settings = evaluation_settings(config, dataset)
    summary = summary_header(config, dataset, run_digest(config, recorded), numerics)
    kind = stage_kind(config)
    for generation in folder.require_generations():
        model = load_model(folder, config, dataset, generation, torch_device)
        metrics = evaluate(model, data.eval_loaders[split], settings, numerics.precision)[0]
        entry = {"generation": generation, "stage": kind, "model": model_of(config, generation)}
        summary["generations"].append({**entry, split: metrics})
    atomic_write_json(folder.path / "eval.json", summary)
    return summary

"""Every check of a run that can be made before its run folder is (:func:`preflight`).

``kdgen train`` runs it before it creates or locks the folder, and ``kdgen train
--dry-run`` runs it alone: a mistake it catches leaves no folder behind, so the corrected
command is not refused by the folder of the failed one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kdgen.build import check_models, evaluation_settings, load_data, prepare_data
from kdgen.config import Config
from kdgen.data import DataSource
from kdgen.errors import ConfigError
from kdgen.patriarchs import Patriarch, load_patriarch
from kdgen.plugins import module_records
from kdgen.precision import Numerics
from kdgen.runs import RunFolder
from kdgen.trackers import require, selected_loggers


@dataclass
class Preflight:
    """What :func:`preflight` found: the loaded data source (the run uses it), the
    parameters of M_0's model, the batches of a training epoch, the records of the user's
    modules (``imports``) and the loaded patriarch (None: the run trains or has its own
    generation 0)."""

    dataset: DataSource
    parameters: int
    steps_per_epoch: int
    imports: list[dict[str, Any]]
    patriarch: Patriarch | None = None


def preflight(config: Config, device: torch.device, numerics: Numerics) -> Preflight:
    """Check, in this order: the user's modules (``imports``) and the selected loggers'
    packages; the data (present, readable, large enough for ``data.val_size``,
    ``data.train_subset`` and the batch); ``k`` against its classes; the class hierarchy;
    each generation's model and ``model_args`` (built once for the data's classes and run
    on a batch of its input size: :func:`kdgen.build.check_models`); and the patriarch,
    loaded for this run's ``device`` and ``numerics`` (:func:`kdgen.patriarchs.load_patriarch`)
    unless the run's folder holds its own generation 0. Raises the one-line error of the
    first that fails."""
    imports = module_records(config.imports)
    require(selected_loggers(config))
    dataset = load_data(config)
    if config.k > dataset.num_classes:
        raise ConfigError(
            f"k={config.k} exceeds the {dataset.num_classes} classes of {config.data.name}"
        )
    evaluation_settings(config, dataset)
    data = prepare_data(config, torch.device("cpu"), dataset, channels_last=False)
    parameters = check_models(config, dataset)
    patriarch = None
    if config.patriarch and not _has_own_patriarch(config):
        patriarch = load_patriarch(config, dataset, device, numerics)
    return Preflight(dataset, parameters, len(data.train_loader), imports, patriarch)


def _has_own_patriarch(config: Config) -> bool:
    """Whether the run's folder holds its generation 0 already (a resume needs no other
    run's patriarch then)."""
    out = config.out_dir
    return out is not None and RunFolder(out).generation_checkpoint(0).exists()

"""kdgen: train deep networks in generations with tolerant teachers.

The Python API mirrors the command line::

    import kdgen
    config = kdgen.build_config("smoke", ["process=D(0.6,0.6)"])
    result = kdgen.train_generations(config)
    print(result.summary["generations"][-1]["test"]["top1"])
"""

from kdgen.config import Config, build_config, config_from_dict, list_presets
from kdgen.data import (
    ImageDataset,
    SourceRequest,
    TorchData,
    list_datasets,
    load_dataset,
    register_dataset,
)
from kdgen.engine import TrainSettings, freeze, train_generation
from kdgen.errors import CheckpointError, ConfigError, DataError, KdgenError, RunDirError
from kdgen.evaluation import evaluate_run, load_generation_model
from kdgen.generations import RunResult, train_generations
from kdgen.models import create_model, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataError",
    "ImageDataset",
    "KdgenError",
    "RunDirError",
    "RunResult",
    "SourceRequest",
    "TorchData",
    "TrainSettings",
    "build_config",
    "config_from_dict",
    "create_model",
    "evaluate_run",
    "freeze",
    "list_datasets",
    "list_models",
    "list_presets",
    "load_dataset",
    "load_generation_model",
    "register_dataset",
    "register_model",
    "train_generation",
    "train_generations",
]

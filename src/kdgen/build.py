"""Everything a run is built from: the device, the data and its loaders, the class
hierarchy, the precision and layout, and the models of each generation.

Training (:mod:`kdgen.generations`), re-evaluation (:mod:`kdgen.evaluation`), transfer,
the report and the benchmarks all build their pieces here, the same way. A caller's own
model factory and data (:func:`with_user_objects`) are built here too, by the names a
run's config records in their place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from kdgen import preemption
from kdgen.config import Config, is_user_object, precision_setting
from kdgen.data import Augment, DataSource, Loader, LoaderSettings, TorchData, load_source
from kdgen.data.hierarchy import Hierarchy
from kdgen.distributed import SINGLE, Distributed
from kdgen.engine import EvalSettings, TrainSettings
from kdgen.errors import CheckpointError, ConfigError
from kdgen.models import create_model
from kdgen.precision import Numerics, choose_numerics, resolve_channels_last
from kdgen.runs import RunFolder, check_identity, load_checkpoint
from kdgen.seeding import derive_seed

ModelFactory = Callable[[int], nn.Module]
"""A caller's model: ``factory(num_classes) -> nn.Module``."""

# The Python objects this process was handed (:func:`with_user_objects`), by the names a
# run's config records in their place.
_USER_FACTORIES: dict[str, ModelFactory] = {}
_USER_DATA: dict[str, TorchData] = {}


@dataclass
class PreparedData:
    dataset: DataSource
    train_loader: Loader
    eval_loaders: dict[str, Loader]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device='{name}' but CUDA is not available here; use device=cpu")
    return device


def with_user_objects(
    config: Config, model: ModelFactory | None = None, data: TorchData | None = None
) -> Config:
    """``config`` with a caller's model factory and data in place of its ``model`` and
    ``data.name``, or ``config`` itself when neither is given.

    The copy names them by description, ``<user factory: module.qualname>`` and
    ``<user TorchData: ...>`` (:func:`kdgen.config.is_user_object`): that is all a run
    folder can record of them, and it is part of the config hash, so such a run never
    passes for one of a named model or data set. ``data.val_size`` becomes the TorchData's.
    The objects stay buildable under those names for the rest of this process.
    """
    if model is not None:
        if config.model_args:
            raise ConfigError(
                f"model_args ({', '.join(sorted(config.model_args))}) go to a named model, "
                "not to a model factory: build them into the factory"
            )
        name = f"<user factory: {factory_name(model)}>"
        _USER_FACTORIES[name] = model
        config = replace(config, model=name)
    if data is not None:
        if not isinstance(data, TorchData):
            raise ConfigError(f"data= takes a kdgen.TorchData, not {type(data).__name__}")
        name = data.describe()
        _USER_DATA[name] = data
        config = replace(config, data=replace(config.data, name=name, val_size=data.val_size))
    return config


def factory_name(factory: Callable[..., Any]) -> str:
    """``module.qualname`` of a function or class (of a callable object's class); for a
    ``functools.partial``, that of its function with the bound arguments' reprs."""
    if isinstance(factory, functools.partial):
        bound = [repr(value) for value in factory.args]
        bound += [f"{key}={value!r}" for key, value in factory.keywords.items()]
        return f"{factory_name(factory.func)}({', '.join(bound)})"
    owner = factory if hasattr(factory, "__qualname__") else type(factory)
    return f"{owner.__module__}.{owner.__qualname__}"


def require_user_objects(config: Config) -> None:
    """ConfigError unless every Python object that ``config`` names (a run made with
    :func:`with_user_objects`) was handed to this process."""
    named = (("model", config.model, _USER_FACTORIES), ("data", config.data.name, _USER_DATA))
    missing = [
        f"{key}={value!r}"
        for key, value, known in named
        if is_user_object(value) and value not in known
    ]
    if missing:
        raise ConfigError(
            f"{'; '.join(missing)}: a Python object that kdgen does not record; pass the same "
            "one again from Python (model=... / data=... of kdgen.train_generations or "
            "kdgen.load_generation_model)"
        )


def load_data(config: Config) -> DataSource:
    """The configured data source: in-memory tensors, an image folder read by workers, or
    a caller's TorchData."""
    require_user_objects(config)
    if is_user_object(config.data.name):
        return _USER_DATA[config.data.name]
    return load_source(config.data, derive_seed("val-split", config.seed))


def build_hierarchy(config: Config, source: DataSource) -> Hierarchy | None:
    """The class hierarchy for Dist^C and Dist^S: a user's file, else the data set's own."""
    return source.class_hierarchy(config.data.hierarchy)


def evaluation_settings(config: Config, source: DataSource) -> EvalSettings:
    hierarchy = build_hierarchy(config, source)
    if hierarchy is None:
        return EvalSettings(k=config.k, every=config.eval_every)
    return EvalSettings(
        coarse_of_fine=hierarchy.coarse_of_fine(),
        distance=hierarchy.distance_matrix(),
        k=config.k,
        every=config.eval_every,
    )


def prepare_data(
    config: Config,
    device: torch.device,
    dataset: DataSource | None = None,
    dist: Distributed = SINGLE,
    channels_last: bool | None = None,
) -> PreparedData:
    """Loaders for one run. The training subset and the validation split depend on the
    seed alone, so every process run with one seed sees the same data; the training
    loader's stream (order, crops, flips) depends on (seed, generation, epoch), and the
    loop over generations sets its generation before training each one. Batches come in
    channels_last layout if ``channels_last`` (by default: as ``config`` says).

    ``data.batch_size`` is the global batch: with several ranks each loader yields this
    rank's slice of it (``shard=dist.shard``), and the evaluation batch is shared alike.
    """
    dataset = dataset or load_data(config)
    data = config.data
    if channels_last is None:
        channels_last = resolve_channels_last(config.channels_last, device)
    settings = LoaderSettings(
        batch_size=dist.local_batch(data.batch_size),
        eval_batch_size=-(-data.eval_batch_size // dist.world_size),
        device=device,
        seed=config.seed,
        global_batch_size=data.batch_size,
        train_subset=data.train_subset,
        subset_seed=derive_seed("train-subset", config.seed),
        val_size=data.val_size,
        val_seed=derive_seed("val-split", config.seed),
        augment=Augment(data.crop_padding, data.flip),
        channels_last=channels_last,
        shard=dist.shard,
        train_eval_max=config.eval_train_max,
        train_eval_seed=derive_seed("train-eval", config.seed),
    )
    train_loader, eval_loaders = dataset.run_loaders(settings)
    return PreparedData(dataset, train_loader, eval_loaders)


def build_model(
    config: Config,
    dataset: DataSource,
    generation: int,
    device: torch.device,
    channels_last: bool | None = None,
) -> nn.Module:
    """A freshly initialised model of one generation; its init depends on (seed,
    generation). Its weights are in channels_last layout if ``channels_last`` (by default:
    as ``config`` says)."""
    torch.manual_seed(derive_seed("init", config.seed, generation))
    if is_user_object(config.model):
        model = _USER_FACTORIES[config.model](dataset.num_classes)
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"{config.model} returned {type(model).__name__}, not a torch.nn.Module"
            )
    else:
        model = create_model(
            config.model, dataset.num_classes, dataset.in_channels, **config.model_args
        )
    model = model.to(device)
    if channels_last is None:
        channels_last = resolve_channels_last(config.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def run_numerics(config: Config, device: torch.device, recorded: dict[str, Any]) -> Numerics:
    """The precision and layout of a run: those its ``run.json`` recorded (``recorded``), so
    that a resume computes as the run began, else chosen for ``device`` by the config.

    A run from before the record trained as kdgen did then: bf16 autocast on CUDA only
    (fp32 with amp=false), channels_last as configured or on CUDA only.
    """
    found = Numerics.from_record(recorded)
    if found is not None:
        return found
    if recorded:
        legacy = "bf16" if device.type == "cuda" and precision_setting(config) != "fp32" else "fp32"
        layout = device.type == "cuda" if config.channels_last is None else config.channels_last
        return Numerics(legacy, layout)
    return choose_numerics(precision_setting(config), config.channels_last, device)


def train_settings(
    config: Config,
    dist: Distributed = SINGLE,
    stop_requested: Callable[[], bool] | None = None,
) -> TrainSettings:
    """How the engine runs every generation of ``config`` on this rank; it stops when
    ``stop_requested()`` (by default: a stop signal, see :mod:`kdgen.preemption`)."""
    return TrainSettings(
        progress=config.progress and dist.is_main(),
        dist=dist,
        sync_batchnorm=config.sync_batchnorm,
        stop_requested=stop_requested or preemption.stop_requested,
        max_grad_norm=config.max_grad_norm,
        check_every=config.check_every,
        compile_model=config.compile,
        ema_decay=config.ema.decay,
    )


def load_model(
    folder: RunFolder, config: Config, source: DataSource, generation: int, device: torch.device
) -> nn.Module:
    """The final model of one generation of the run in ``folder`` (whose config and data
    source are ``config`` and ``source``), checked against them, in eval mode."""
    path = folder.generation_checkpoint(generation)
    payload = load_checkpoint(path)
    expected = {
        "model_name": config.model,
        "num_classes": source.num_classes,
        "in_channels": source.in_channels,
    }
    check_identity(payload, expected, "checkpoint", path)
    model = build_model(config, source, generation, device)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise CheckpointError(f"{path} does not fit the model {config.model}: {first}") from None
    return model.eval()

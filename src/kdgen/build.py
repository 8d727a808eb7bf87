"""Everything a run is built from: the device, the data and its loaders, the class
hierarchy, the precision and layout, and the models of each generation.

Training (:mod:`kdgen.generations`), re-evaluation (:mod:`kdgen.evaluation`), transfer,
the report and the benchmarks all build their pieces here, the same way. A caller's own
model factory and data (:func:`with_user_objects`) are built here too, by the names a
run's config records in their place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from kdgen import preemption
from kdgen.config import (
    Config,
    is_user_object,
    max_generation,
    model_args_of,
    model_of,
    precision_setting,
)
from kdgen.data import Augment, DataSource, Loader, LoaderSettings, TorchData, load_source
from kdgen.data.hierarchy import Hierarchy
from kdgen.distributed import SINGLE, Distributed
from kdgen.engine import EvalSettings, TrainSettings
from kdgen.errors import CheckpointError, ConfigError, KdgenError
from kdgen.models import create_model
from kdgen.plugins import import_modules
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
    """The configured data source: in-memory tensors, an image folder read by workers, a
    caller's TorchData, or a user's, registered by a module of ``imports`` (imported first)."""
    import_modules(config.imports)
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
    """A freshly initialised model of one generation (its model: :func:`model_of`); its init
    depends on (seed, generation). Its weights are in channels_last layout if
    ``channels_last`` (by default: as ``config`` says). The modules of ``imports`` are
    imported first: they may register the model."""
    import_modules(config.imports)
    torch.manual_seed(derive_seed("init", config.seed, generation))
    model = _create(model_of(config, generation), dataset, model_args_of(config, generation))
    model = model.to(device)
    if channels_last is None:
        channels_last = resolve_channels_last(config.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _create(name: str, dataset: DataSource, args: dict[str, Any]) -> nn.Module:
    """The model ``name`` (a caller's factory, or a registered model with ``args``)."""
    if not is_user_object(name):
        return create_model(name, dataset.num_classes, dataset.in_channels, **args)
    model = _USER_FACTORIES[name](dataset.num_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{name} returned {type(model).__name__}, not a torch.nn.Module")
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
    name = model_of(config, generation)
    expected = {
        "model_name": name,
        "num_classes": source.num_classes,
        "in_channels": source.in_channels,
    }
    check_identity(payload, expected, "checkpoint", path)
    model = build_model(config, source, generation, device)
    load_weights(model, payload["model"], str(path), name)
    return model.eval()


def load_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], what: str, model_name: str
) -> None:
    """Load ``state`` into ``model`` strictly; a CheckpointError names the keys it lacks,
    those it has besides, and the tensors whose shapes differ."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [
        f"{key} {tuple(state[key].shape)} where the model has {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = [
        f"{label} {_first_few(keys)}"
        for label, keys in (("lacks", missing), ("has besides", unexpected), ("has", reshaped))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{what} does not fit the model {model_name}: {'; '.join(problems)}")
    model.load_state_dict(state)


def _first_few(items: list[str], count: int = 3) -> str:
    more = f" and {len(items) - count} more" if len(items) > count else ""
    return ", ".join(items[:count]) + more


def image_hw(source: DataSource) -> tuple[int, int]:
    """The (height, width) of a source's images (an image folder gives one square size)."""
    size = source.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def input_shape(source: DataSource) -> tuple[int, ...]:
    """The shape of one input of ``source``: a TorchData's first training item's, else
    (channels, height, width) of its images."""
    shape = getattr(source, "input_shape", None)
    if shape is not None:
        return tuple(shape)
    return (source.in_channels, *image_hw(source))


def check_models(config: Config, source: DataSource) -> int:
    """:func:`check_model` for each generation's model (students of another model too),
    each distinct one once, so that a wrong model is refused before anything is trained.
    Returns the number of parameters of M_0's."""
    import_modules(config.imports)
    checked: dict[str, int] = {}
    for generation in range(max_generation(config) + 1):
        name = model_of(config, generation)
        if name not in checked:
            checked[name] = check_model(config, source, generation)
    return checked[model_of(config, 0)]


def check_model(config: Config, source: DataSource, generation: int = 0) -> int:
    """Build generation ``generation``'s model for ``source``'s classes and channels and
    run a batch of its input size through it: on the meta device (no memory, no compute),
    or on the CPU for a model that the meta device cannot run. A wrong name or
    ``model_args``, or a model that cannot take these inputs or gives other than one logit
    per class, is a ConfigError. Returns the number of parameters."""
    name = model_of(config, generation)
    shape = (2, *input_shape(source))
    sizes = "x".join(str(size) for size in shape[1:])
    inputs = "inputs" if getattr(source, "input_shape", None) is not None else "images"
    try:
        model, logits = _run_model(config, source, generation, shape, torch.device("meta"))
    except KdgenError:
        raise
    except Exception:  # an operation that the meta device lacks: run the batch for real
        try:
            model, logits = _run_model(config, source, generation, shape, torch.device("cpu"))
        except KdgenError:
            raise
        except Exception as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ConfigError(
                f"model {name} cannot take the {sizes} {inputs} of {config.data.name}: {first}"
            ) from None
    if tuple(logits.shape) != (shape[0], source.num_classes):
        raise ConfigError(
            f"model {name} gives outputs of shape {tuple(logits.shape)} for a batch of "
            f"{shape[0]}; a kdgen model must give (batch, {source.num_classes}) logits"
        )
    return sum(parameter.numel() for parameter in model.parameters())


def _run_model(
    config: Config,
    source: DataSource,
    generation: int,
    shape: tuple[int, ...],
    device: torch.device,
) -> tuple[nn.Module, torch.Tensor]:
    """Generation ``generation``'s model, built on ``device``, and its logits for a batch
    of zeros of ``shape``; the global RNG (which initialisation draws from) is left as it was."""
    name, args = model_of(config, generation), model_args_of(config, generation)
    with torch.random.fork_rng(devices=[]), device, torch.no_grad():
        model = _create(name, source, args)
        return model, model.eval()(torch.zeros(shape))

"""The typed run configuration: OmegaConf structured configs, presets and validation.

A config is built from a preset (or YAML file) plus ``key=value`` overrides; OmegaConf
checks keys and types, :func:`validate` checks ranges and cross-field rules. Every problem
becomes a :class:`ConfigError` whose message names the key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdgen.errors import ConfigError, KdgenWarning, one_line

SCHEDULERS = ("multistep", "cosine", "constant")
LR_SCALINGS = ("none", "linear")
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class SyntheticConfig:
    """Size and seed of the built-in synthetic data set (see ``kdgen.data.synthetic``)."""

    train_per_class: int = 100
    test_per_class: int = 20
    seed: int = 0


@dataclass
class ImageFolderConfig:
    """Crop size and DataLoader workers of ``imagefolder`` data (``kdgen.data.imagefolder``)."""

    image_size: int = 224
    # null: min(4, the cores this process may use); see kdgen.data.imagefolder.default_workers.
    workers: int | None = None


@dataclass
class DataConfig:
    """The data of a run. Options of one source live in its own section, ``data.<name>``."""

    name: str = "synthetic"
    root: str | None = None
    download: bool = False
    val_size: int = 1000
    train_subset: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 500
    crop_padding: int = 4
    flip: bool = True
    # A JSON class hierarchy (class -> parent, or class -> coarse label) for Dist^C/S.
    hierarchy: str | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    imagefolder: ImageFolderConfig = field(default_factory=ImageFolderConfig)


@dataclass
class ScheduleConfig:
    """Optimiser and learning-rate schedule of one generation."""

    epochs: int = 200
    # sgd (momentum, nesterov) or adamw (betas); lr and weight_decay serve both.
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 5e-4
    scheduler: str = "multistep"
    milestones: list[int] = field(default_factory=lambda: [100, 150])
    gamma: float = 0.1
    warmup_epochs: int = 0
    # "linear": the lr is lr * data.batch_size / base_batch_size (the global batch).
    lr_scaling: str = "none"
    base_batch_size: int = 128
    # Gradient accumulation: each global batch (data.batch_size) is cut into this many
    # micro-batches, whose gradients add up before the one optimiser step of that batch.
    accumulate_steps: int = 1


@dataclass
class EmaConfig:
    """An exponential moving average of the weights, evaluated beside them (kdgen.ema)."""

    # ema = decay * ema + (1 - decay) * weights after every optimiser step; 0: no EMA.
    decay: float = 0.0
    # The next generation learns from the EMA instead of the raw weights.
    teach: bool = False


CHOICE_METRICS = ("val_top1", "val_nll")


@dataclass
class AutoConfig:
    """Choosing on validation (docs/method.md, "Choosing on validation"): the metric every
    run's choice follows, and when ``generations=auto`` stops."""

    # val_top1 (higher is better) or val_nll (lower is better).
    metric: str = "val_top1"
    # A later model is better only when it improves the best value by more than this.
    min_delta: float = 0.0
    # generations=auto stops after this many generations in a row fail to improve.
    patience: int = 1
    # generations=auto trains at most M_0 ... M_max_generations.
    max_generations: int = 5


@dataclass
class SnapshotConfig:
    """Snapshot distillation (docs/method.md, "Snapshot distillation"): ``cycles`` = C >= 2
    splits one training of ``schedule.epochs`` into C cycles of a restarting cosine lr; the
    last snapshot of each cycle teaches the next. 0: off."""

    cycles: int = 0
    # tau of the cycle students: the teacher's signal is softened (see docs/method.md).
    temperature: float = 2.0
    # Epochs of cycle 0 (null: all cycles equal); the others share the rest equally.
    first_cycle_epochs: int | None = None


@dataclass
class Config:
    """A whole training-in-generations run. ``generations`` = G trains M_0 ... M_G."""

    name: str = "run"
    model: str = "resnet20"
    # Keyword arguments of the model's factory, e.g. {dropout: 0.3} for a WRN or DenseNet;
    # they go to every generation whose model is ``model`` (another model: its defaults).
    model_args: dict[str, Any] = field(default_factory=dict)
    # The students' model, e.g. a smaller network taught by the patriarch (None: ``model``).
    student_model: str | None = None
    # One student generation's model, e.g. {1: resnet20, 2: resnet8}; it wins over
    # ``student_model``. Generation 0, the patriarch, is always ``model``.
    generation_models: dict[int, str] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # Per-generation changes to ``schedule``, e.g. {0: {epochs: 300}}.
    generation_schedules: dict[int, Any] = field(default_factory=dict)
    # G, or "auto": train generations while they improve on validation (see ``auto``).
    generations: int | str = 4
    auto: AutoConfig = field(default_factory=AutoConfig)
    process: str | None = None
    eta: float = 1.0
    lam: float = 0.0
    regularizer: str = "tsd"
    k: int = 5
    regularizer_form: str = "convex"
    regularize_all_teachers: bool = False
    temperature: float = 1.0
    # The students' loss, by name (kdgen.losses.STUDENT_LOSSES): kd is the paper's Eq. 2.
    student_loss: str = "kd"
    # M_0 not trained but loaded: a kdgen run folder (or its gen0.pt), a weights file (a
    # state_dict .pt or .safetensors of ``model``), or tv:<name> / timm:<name> pretrained.
    patriarch: str | None = None
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    seed: int = 0
    device: str = "auto"
    # auto: bf16 autocast where the device computes bf16 natively, fp16 with loss scaling on
    # CUDA cards with tensor cores but no bf16 (V100, T4), else fp32; or fp32, bf16, fp16.
    precision: str = "auto"
    # null (auto): the layout rule of kdgen.precision.auto_channels_last; or true, false.
    channels_last: bool | None = None
    # Deprecated, kept so that older configs load: amp=false is precision=fp32.
    amp: bool | None = None
    # Under torchrun: BatchNorm statistics of the global batch, not of each rank's slice.
    sync_batchnorm: bool = True
    eval_every: int = 1
    # A clean evaluation of the training images (no augmentation), the "train_eval" split:
    # a fixed seeded subset of at most this many of them (0: none). Shows whether a model
    # fits its training set.
    eval_train_max: int = 2000
    # Numerical faults: a gradient norm above this bound stops training (None: no bound);
    # non-finite losses always do. The device flag is read on the host every N steps.
    max_grad_norm: float | None = None
    check_every: int = 50
    # torch.compile the training model; its compile time is the first epoch's extra seconds.
    compile: bool = False
    ema: EmaConfig = field(default_factory=EmaConfig)
    out_dir: str | None = None
    # Python modules imported before the model and data are built: the user's own code,
    # which registers models and data sets (kdgen.register_model, kdgen.register_dataset).
    imports: list[str] = field(default_factory=list)
    # Where metrics go besides metrics.jsonl: tensorboard, mlflow, wandb (kdgen.trackers).
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    # The older switch of the tensorboard logger: false leaves it out of ``loggers``.
    tensorboard: bool = True
    # The sweep folder a run belongs to (kdgen sweep sets it): its trackers group the runs.
    sweep_dir: str | None = None
    progress: bool = True


MODULE_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# patriarch=<prefix><name>: the library's pretrained <name>, so model must be the same.
PRETRAINED_PREFIXES = ("tv:", "timm:")

PROCESS_PATTERN = re.compile(r"^\s*D\(\s*([^,\s]+)\s*,\s*([^)\s]+)\s*\)\s*$")


def _number(value: float) -> str:
    text = f"{value:g}"
    return text if any(c in text for c in ".en") else f"{text}.0"


def format_process(eta: float, lam: float) -> str:
    """The paper's name D(eta, lambda) of a process, e.g. ``D(1.0,0.0)`` or ``D(0.6,0.6)``."""
    return f"D({_number(eta)},{_number(lam)})"


def process_slug(label: str) -> str:
    """A folder name for a process label: ``D(0.6,0.6)`` -> ``D0.6-0.6``,
    ``D(0.6,0.6):lsr`` -> ``D0.6-0.6-lsr``."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", label.replace("D(", "D")).strip("-")


def parse_process(text: str) -> tuple[float, float]:
    """Parse ``D(eta,lam)`` into its two numbers."""
    match = PROCESS_PATTERN.match(text)
    if not match:
        raise ConfigError(f"process='{text}' must look like D(eta,lam), e.g. D(0.6,0.6)")
    try:
        return float(match.group(1)), float(match.group(2))
    except ValueError:
        raise ConfigError(f"process='{text}': eta and lam must be numbers") from None


def list_presets() -> list[str]:
    folder = resources.files("kdgen") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_description(name: str) -> str:
    """The first sentence of a preset's leading comment (which may span several lines)."""
    lines = []
    for line in _preset_text(name).splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    comment = " ".join(lines)
    end = re.search(r"\.(\s|$)", comment)
    return comment[: end.start() + 1] if end else comment


def _preset_text(name: str) -> str:
    path = resources.files("kdgen") / "presets" / f"{name}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, list_presets(), n=3, cutoff=0.4)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset '{name}'{hint} (list them with: kdgen presets)")
    return path.read_text()


def _load_source(source: str) -> DictConfig:
    """A preset name or a YAML file path, as an (unvalidated) DictConfig."""
    is_file = source.endswith((".yaml", ".yml")) or Path(source).is_file()
    if is_file:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file '{source}' does not exist")
        text = path.read_text()
    else:
        text = _preset_text(source)
    return _parse_yaml(text, source)


def _parse_yaml(text: str, source: str) -> DictConfig:
    try:
        loaded = OmegaConf.create(text)
    except Exception as error:  # yaml errors come in several types
        raise ConfigError(f"cannot parse config '{source}': {one_line(error)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config '{source}' must be a mapping of keys to values")
    _move_legacy_keys(loaded)
    return loaded


# Keys that moved; configs and overrides that use the old names keep working.
LEGACY_KEYS = {
    "data.image_size": "data.imagefolder.image_size",
    "data.workers": "data.imagefolder.workers",
}


def _move_legacy_keys(loaded: DictConfig) -> None:
    """Move values under old key names (e.g. a run folder's older config.yaml) to the new."""
    for old, new in LEGACY_KEYS.items():
        parent, _, leaf = old.rpartition(".")
        section = OmegaConf.select(loaded, parent, default=None)
        if isinstance(section, DictConfig) and leaf in section:
            OmegaConf.update(loaded, new, section.pop(leaf), force_add=True)


def _new_key(item: str) -> str:
    """An override ``key=value`` with an old key name renamed (see ``LEGACY_KEYS``)."""
    key, _, value = item.partition("=")
    return f"{LEGACY_KEYS.get(key.strip(), key)}={value}"


def config_from_yaml(text: str, source: str = "<yaml>") -> Config:
    """A validated Config from YAML text (a run's ``config.yaml``, or the copy a checkpoint
    holds); ``source`` names it in error messages."""
    config: Config = _merge_to_object(OmegaConf.structured(Config), _parse_yaml(text, source))
    return validate(config)


def _omegaconf_message(error: OmegaConfBaseException, schema: DictConfig) -> str:
    key = getattr(error, "full_key", None)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "not in struct" in first or ("Key '" in first and "not" in first):
        hint = _did_you_mean(str(key), _known_keys(OmegaConf.to_container(schema)))
        return f"unknown config key '{key}'{hint} (every key: kdgen config PRESET)"
    return f"config key '{key}': {first}" if key else first


def _known_keys(values: Any, prefix: str = "") -> list[str]:
    """The dotted keys of a schema's defaults, sections and their keys."""
    keys = []
    for key, value in values.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, Mapping) and value:
            keys += _known_keys(value, f"{prefix}{key}.")
    return keys


def _did_you_mean(key: str, known: list[str]) -> str:
    """'; did you mean: ...?' with up to three known keys close to ``key``: in its own
    section, then anywhere by its last part (``lr`` -> ``schedule.lr``), then as a whole
    (``schedul.lr`` -> ``schedule.lr``); empty when none is close."""
    parent, _, leaf = key.rpartition(".")
    known = [name for name in known if not key.startswith(f"{name}.")]  # not its sections
    leaves: dict[str, list[str]] = {}
    for name in known:
        leaves.setdefault(name.rpartition(".")[2], []).append(name)
    siblings = [name for name in known if name.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(key, siblings, n=3, cutoff=0.75)
    for match in difflib.get_close_matches(leaf, list(leaves), n=3, cutoff=0.8):
        close += leaves[match]
    close += difflib.get_close_matches(key, known, n=3, cutoff=0.8)
    close = list(dict.fromkeys(close))[:3]
    return f"; did you mean: {', '.join(close)}?" if close else ""


def _failing_key(schema: Any, sources: tuple[Any, ...], prefix: str = "") -> str | None:
    """The dotted key whose merge into ``schema`` fails, for errors that do not name one."""
    for source in sources:
        if not isinstance(source, (Mapping, DictConfig)):
            continue
        for key, value in source.items():
            try:
                OmegaConf.merge(schema, {key: value})
            except Exception:
                child = schema.get(key) if isinstance(schema, DictConfig) else None
                deeper = None
                if isinstance(child, DictConfig):
                    deeper = _failing_key(child, (value,), f"{prefix}{key}.")
                return deeper or f"{prefix}{key}"
    return None


def _merge_to_object(schema: DictConfig, *sources: Any, where: str = "") -> Any:
    """Merge ``sources`` into ``schema`` and build the object; any failure is a ConfigError
    naming the key (OmegaConf raises its own errors but also ValueError, TypeError, ...)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(schema, *sources))
    except Exception as error:
        if isinstance(error, OmegaConfBaseException) and getattr(error, "full_key", None):
            message = _omegaconf_message(error, schema)
        else:
            key = _failing_key(schema, sources)
            detail = one_line(error) or type(error).__name__
            message = f"config key '{key}': {detail}" if key else f"invalid config: {detail}"
        raise ConfigError(f"{where}{message}") from None


def build_config(source: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Resolve a preset or YAML file plus ``key=value`` overrides into a validated Config.

    An ``eta`` or ``lam`` override (without a ``process`` override) wins over the source's
    ``process``; otherwise ``process``, where given, decides eta and lam.
    """
    loaded = _load_source(source) if source is not None else OmegaConf.create({})
    parsed = []
    overrides = [_new_key(item) if "=" in item else item for item in overrides]
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        try:
            parsed.append(OmegaConf.from_dotlist([item]))
        except Exception as error:  # yaml and OmegaConf errors come in several types
            raise ConfigError(f"cannot parse override '{item}': {one_line(error)}") from None
    keys = {item.split("=", 1)[0].strip() for item in overrides}
    _refuse_process_conflict(OmegaConf.merge(*parsed) if parsed else {}, "")
    _refuse_process_conflict(loaded, f" in {source}")
    process = OmegaConf.select(loaded, "process", default=None, throw_on_resolution_failure=False)
    if keys & {"eta", "lam"} and "process" not in keys and isinstance(process, str):
        loaded.eta, loaded.lam = parse_process(process)
        loaded.process = None
    config: Config = _merge_to_object(OmegaConf.structured(Config), loaded, *parsed)
    return validate(config)


def _refuse_process_conflict(values: Any, where: str) -> None:
    """Refuse ``process=D(a,b)`` given beside an ``eta`` or ``lam`` that says otherwise
    (in one source, or in one set of overrides): one of them would be ignored."""
    if not isinstance(values, (Mapping, DictConfig)) or "process" not in values:
        return
    process = values.get("process")
    if not isinstance(process, str):
        return  # None, or a wrong type that the schema refuses by name
    given = dict(zip(("eta", "lam"), parse_process(process), strict=True))
    for key, implied in given.items():
        value = values.get(key)
        try:
            # format_process keeps 6 significant digits: a saved config.yaml agrees to those
            differs = value is not None and not math.isclose(float(value), implied, rel_tol=1e-5)
        except (TypeError, ValueError):
            continue  # not a number: the schema refuses it by name
        if differs:
            raise ConfigError(
                f"process={process} sets {key}={implied:g}, but {key}={value} is given too"
                f"{where}; give process or eta and lam, not both"
            )


def config_from_dict(values: dict[str, Any]) -> Config:
    """A validated Config from a plain (possibly nested) dictionary."""
    try:
        created = OmegaConf.create(values)
    except Exception as error:
        raise ConfigError(f"invalid config: {one_line(error)}") from None
    _refuse_process_conflict(created, "")
    config: Config = _merge_to_object(OmegaConf.structured(Config), created)
    return validate(config)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _validate_schedule(schedule: ScheduleConfig, where: str) -> None:
    _check(schedule.epochs >= 1, f"{where}.epochs={schedule.epochs} must be >= 1")
    _check(schedule.lr > 0, f"{where}.lr={schedule.lr} must be > 0")
    _check(0 <= schedule.momentum < 1, f"{where}.momentum={schedule.momentum} must lie in [0, 1)")
    _check(schedule.weight_decay >= 0, f"{where}.weight_decay must be >= 0")
    _check(
        schedule.scheduler in SCHEDULERS,
        f"{where}.scheduler='{schedule.scheduler}' must be one of {', '.join(SCHEDULERS)}",
    )
    _check(0 < schedule.gamma <= 1, f"{where}.gamma={schedule.gamma} must lie in (0, 1]")
    _check(
        0 <= schedule.warmup_epochs < schedule.epochs,
        f"{where}.warmup_epochs={schedule.warmup_epochs} must lie in [0, epochs)",
    )
    _check(
        all(m > 0 for m in schedule.milestones)
        and schedule.milestones == sorted(schedule.milestones),
        f"{where}.milestones={schedule.milestones} must be increasing positive epochs",
    )
    _check(
        not schedule.nesterov or schedule.momentum > 0,
        f"{where}.nesterov=true needs momentum > 0",
    )
    _warn_unreached_milestones(schedule, where)
    _check(
        schedule.lr_scaling in LR_SCALINGS,
        f"{where}.lr_scaling='{schedule.lr_scaling}' must be one of {', '.join(LR_SCALINGS)}",
    )
    _check(
        schedule.base_batch_size >= 1,
        f"{where}.base_batch_size={schedule.base_batch_size} must be >= 1",
    )
    _check(
        schedule.optimizer in OPTIMIZERS,
        f"{where}.optimizer='{schedule.optimizer}' must be one of {', '.join(OPTIMIZERS)}",
    )
    _check(
        len(schedule.betas) == 2 and all(0 <= beta < 1 for beta in schedule.betas),
        f"{where}.betas={schedule.betas} must be two numbers in [0, 1)",
    )
    _check(
        schedule.accumulate_steps >= 1,
        f"{where}.accumulate_steps={schedule.accumulate_steps} must be >= 1",
    )


def _warn_unreached_milestones(schedule: ScheduleConfig, where: str) -> None:
    """Warn about multistep milestones that training never reaches (epochs count from 0
    to epochs - 1, so a milestone at or past ``epochs`` never lowers the lr)."""
    late = [m for m in schedule.milestones if m >= schedule.epochs]
    if schedule.scheduler == "multistep" and late:
        warnings.warn(
            f"{where}.milestones={schedule.milestones}: {', '.join(map(str, late))} "
            f"{'lies' if len(late) == 1 else 'lie'} at or past {where}.epochs={schedule.epochs}, "
            "so the lr never decays there; "
            "lower them or raise the epochs",
            KdgenWarning,
            stacklevel=2,
        )


def effective_lr(schedule: ScheduleConfig, global_batch: int) -> float:
    """The peak learning rate used: ``lr``, scaled by ``global_batch / base_batch_size``
    under ``lr_scaling=linear`` (Goyal et al.'s rule for large global batches)."""
    if schedule.lr_scaling == "linear":
        return schedule.lr * global_batch / schedule.base_batch_size
    return schedule.lr


def schedule_for(config: Config, generation: int) -> ScheduleConfig:
    """The schedule of one generation: ``schedule`` with its per-generation changes."""
    changes = config.generation_schedules.get(generation)
    if changes is None:
        return config.schedule
    if not isinstance(changes, (Mapping, DictConfig)):
        raise ConfigError(
            f"generation_schedules.{generation}={changes!r} must be a mapping of schedule "
            f"keys to values, e.g. {{epochs: 300}}"
        )
    if not changes:
        return config.schedule
    return _merge_to_object(
        OmegaConf.structured(config.schedule), changes, where=f"generation_schedules.{generation}: "
    )


def cycle_epochs(config: Config) -> list[int]:
    """The epochs of each snapshot cycle: ``snapshot.first_cycle_epochs`` for cycle 0 when
    set, the rest of ``schedule.epochs`` split as evenly as it goes (earlier cycles take the
    remainder); empty when snapshot distillation is off."""
    snapshot, epochs = config.snapshot, config.schedule.epochs
    first = snapshot.first_cycle_epochs
    shared = snapshot.cycles if first is None else snapshot.cycles - 1
    if shared <= 0:
        return [] if first is None else [first]
    base, extra = divmod(epochs if first is None else epochs - first, shared)
    lengths = [base + (cycle < extra) for cycle in range(shared)]
    return lengths if first is None else [first, *lengths]


def max_generation(config: Config) -> int:
    """The last generation a run may train: G, or ``auto.max_generations`` under auto."""
    if config.generations == "auto":
        return config.auto.max_generations
    return int(config.generations)


def _validate_generations(config: Config) -> None:
    """``generations``: G >= 0, or ``auto`` with the ``auto.*`` keys that it needs."""
    if isinstance(config.generations, str) and config.generations.strip().isdigit():
        config.generations = int(config.generations)  # a quoted number in a YAML file
    auto = config.auto
    _check(
        auto.metric in CHOICE_METRICS,
        f"auto.metric='{auto.metric}' must be one of {', '.join(CHOICE_METRICS)}",
    )
    _check(auto.min_delta >= 0, f"auto.min_delta={auto.min_delta} must be >= 0")
    if config.generations != "auto":
        _check(
            isinstance(config.generations, int) and config.generations >= 0,
            f"generations={config.generations!r} must be an integer >= 0, or auto",
        )
        stop_keys = {"auto.patience": auto.patience, "auto.max_generations": auto.max_generations}
        _check(
            (auto.patience, auto.max_generations)
            == (AutoConfig.patience, AutoConfig.max_generations),
            f"{', '.join(f'{k}={v}' for k, v in stop_keys.items())} apply to generations=auto "
            f"only; this run has generations={config.generations}",
        )
        return
    _check(auto.patience >= 1, f"auto.patience={auto.patience} must be >= 1")
    _check(auto.max_generations >= 1, f"auto.max_generations={auto.max_generations} must be >= 1")
    _check(
        config.data.val_size > 0,
        "generations=auto chooses on a validation split, and data.val_size=0 holds none out; "
        "set data.val_size > 0",
    )


def _validate_snapshot(config: Config) -> None:
    """Snapshot distillation's keys and the combinations that make no sense with it."""
    snapshot = config.snapshot
    if snapshot.cycles == 0:
        _check(
            snapshot == SnapshotConfig(),
            "snapshot.temperature and snapshot.first_cycle_epochs need snapshot.cycles >= 2",
        )
        return
    _check(
        snapshot.cycles >= 2,
        f"snapshot.cycles={snapshot.cycles}: one cycle has no teacher; use 0 (off) or >= 2",
    )
    _check(snapshot.temperature > 0, f"snapshot.temperature={snapshot.temperature} must be > 0")
    _check(
        config.generations == 0,
        f"snapshot.cycles={snapshot.cycles} with generations={config.generations}: a snapshot "
        "run's stages are its cycles; set generations=0",
    )
    why = {"temperature": " (cycle students use snapshot.temperature)"}
    for key, value, unset in (
        ("patriarch", config.patriarch, None),
        ("generation_schedules", config.generation_schedules, {}),
        ("student_model", config.student_model, None),
        ("generation_models", config.generation_models, {}),
        ("temperature", config.temperature, 1.0),
    ):
        _check(
            value == unset,
            f"{key}={value!r} does not apply to snapshot.cycles={snapshot.cycles}"
            f"{why.get(key, '')}; drop {key}",
        )
    _check(
        config.schedule.scheduler == "cosine",
        f"snapshot.cycles restarts a cosine lr every cycle: schedule.scheduler="
        f"'{config.schedule.scheduler}' must be cosine",
    )
    first = snapshot.first_cycle_epochs
    _check(
        first is None or 1 <= first < config.schedule.epochs,
        f"snapshot.first_cycle_epochs={first} must lie in [1, schedule.epochs)",
    )
    lengths = cycle_epochs(config)
    _check(
        min(lengths) >= 1,
        f"schedule.epochs={config.schedule.epochs} is too short for snapshot.cycles="
        f"{snapshot.cycles}"
        + ("" if first is None else f" after snapshot.first_cycle_epochs={first}")
        + ": a cycle must be at least one epoch",
    )
    _check(
        config.schedule.warmup_epochs < lengths[0],
        f"schedule.warmup_epochs={config.schedule.warmup_epochs} must be shorter than cycle 0 "
        f"({lengths[0]} epochs)",
    )


USER_OBJECT = "<user "


def is_user_object(name: str | None) -> bool:
    """Whether a config's ``model`` or ``data.name`` stands for a Python object a caller
    handed :func:`kdgen.train_generations` (a model factory, a TorchData): kdgen records
    only its description, e.g. ``<user factory: mymodule.mlp>``."""
    return bool(name) and str(name).startswith(USER_OBJECT)


NOT_RECORDED = {
    "model": "a Python model factory: kdgen records its name alone, not its code",
    "data": "Python datasets: kdgen records their types, sizes and a digest of their labels "
    "alone, not their inputs or transforms",
}


def not_recorded(config: Config) -> dict[str, str]:
    """The keys of ``config`` that stand for a caller's Python object
    (:func:`is_user_object`), each with what kdgen does not record of it."""
    named = {"model": config.model, "data": config.data.name}
    return {key: NOT_RECORDED[key] for key, value in named.items() if is_user_object(value)}


def _validate_loss_names(config: Config) -> None:
    """Names that the losses' registries decide (:mod:`kdgen.losses` is the one list)."""
    from kdgen import losses  # imported here: reading a config needs no torch

    _check(
        config.regularizer in losses.REGULARIZERS,
        f"regularizer='{config.regularizer}' must be one of {', '.join(losses.REGULARIZERS)}",
    )
    _check(
        config.regularizer_form in losses.FORMS,
        f"regularizer_form='{config.regularizer_form}' must be one of {', '.join(losses.FORMS)}",
    )
    _check(
        config.student_loss in losses.STUDENT_LOSSES,
        f"student_loss='{config.student_loss}' must be one of {', '.join(losses.STUDENT_LOSSES)}",
    )


def _validate_user_keys(config: Config) -> None:
    """``imports``, ``loggers`` and a pretrained ``patriarch``: names only, nothing imported."""
    from kdgen.trackers import TRACKERS  # the one list of loggers

    for name in config.imports:
        _check(
            MODULE_PATTERN.match(name) is not None,
            f"imports: '{name}' is not a Python module name (write it as in an import line, "
            "e.g. my_models or mypackage.models)",
        )
    for name in config.loggers:
        _check(
            name in TRACKERS,
            f"loggers: '{name}' must be one of {', '.join(TRACKERS)}",
        )
    _check(
        len(set(config.loggers)) == len(config.loggers),
        f"loggers={config.loggers} names a logger twice",
    )
    pretrained = config.patriarch or ""
    _check(
        not pretrained.startswith(PRETRAINED_PREFIXES) or pretrained == config.model,
        f"patriarch={pretrained} is that library's pretrained model, and model is the "
        f"patriarch's: set model={pretrained} (now model={config.model}; the students' is "
        "student_model)",
    )
    _validate_generation_models(config)


def _validate_generation_models(config: Config) -> None:
    """``student_model`` and ``generation_models``: names of student generations' models
    (whether a model of that name exists is known once ``imports`` ran: see kdgen.build)."""
    _check(config.student_model != "", "student_model must name a model (or be null)")
    count = max_generation(config)
    students = f"students 1..{count}" if count else "no students"
    for generation, name in config.generation_models.items():
        _check(
            isinstance(generation, int) and 1 <= generation <= count,
            f"generation_models key {generation!r} is no student generation of this run "
            f"(generations={count}: {students}); generation 0, the patriarch, is model",
        )
        _check(bool(name), f"generation_models.{generation} must name a model")


def model_of(config: Config, generation: int) -> str:
    """The model of one generation: ``generation_models``, else ``student_model`` for a
    student, else ``model``."""
    if generation in config.generation_models:
        return config.generation_models[generation]
    if generation > 0 and config.student_model:
        return config.student_model
    return config.model


def model_args_of(config: Config, generation: int) -> dict[str, Any]:
    """``model_args`` for a generation whose model is ``model``; none for another model."""
    return dict(config.model_args) if model_of(config, generation) == config.model else {}


def _in_unit_interval(value: float) -> bool:
    return 0.0 <= value <= 1.0  # False for NaN too


def validate(config: Config) -> Config:
    """Check ranges and cross-field rules; expand ``process`` into eta and lam.

    Types are checked (and converted, e.g. "0.5" to 0.5) first, in place, so a Config
    built by hand with wrong types gives a ConfigError too.
    """
    typed = _merge_to_object(OmegaConf.structured(Config), config)
    for item in fields(Config):
        setattr(config, item.name, getattr(typed, item.name))
    if config.process is not None:
        config.eta, config.lam = parse_process(config.process)
    _check(_in_unit_interval(config.eta), f"eta={config.eta} must lie in (0, 1]")
    _check(
        config.eta > 0,
        "eta=0 trains the patriarch on the regulariser alone, without the labels "
        "(eta * CE + (1 - eta) * R); use eta in (0, 1]",
    )
    _check(_in_unit_interval(config.lam), f"lam={config.lam} must lie in [0, 1]")
    config.process = format_process(config.eta, config.lam)
    _validate_loss_names(config)
    _check(config.k >= 2, f"k={config.k} must be >= 2")
    _check(config.temperature > 0, f"temperature={config.temperature} must be > 0")
    _validate_generations(config)
    _validate_user_keys(config)
    _check(
        config.precision in PRECISIONS,
        f"precision='{config.precision}' must be one of {', '.join(PRECISIONS)}",
    )
    _check(
        config.amp is not False or config.precision in ("auto", "fp32"),
        f"amp=false (the older name of precision=fp32) contradicts precision={config.precision}; "
        "drop amp and set precision",
    )
    _check(
        0 <= config.ema.decay < 1, f"ema.decay={config.ema.decay} must lie in [0, 1) (0: no EMA)"
    )
    _check(config.ema.decay > 0 or not config.ema.teach, "ema.teach=true needs ema.decay > 0")
    _check(config.eval_every >= 1, f"eval_every={config.eval_every} must be >= 1")
    _check(config.eval_train_max >= 0, f"eval_train_max={config.eval_train_max} must be >= 0")
    _check(config.check_every >= 1, f"check_every={config.check_every} must be >= 1")
    _check(
        config.max_grad_norm is None or config.max_grad_norm > 0,
        f"max_grad_norm={config.max_grad_norm} must be > 0 (or null: no bound)",
    )
    _check(
        config.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?|mps", config.device) is not None,
        f"device='{config.device}' must be auto, cpu, cuda, cuda:N or mps",
    )
    data = config.data
    _check(data.batch_size >= 1, f"data.batch_size={data.batch_size} must be >= 1")
    _check(data.eval_batch_size >= 1, f"data.eval_batch_size={data.eval_batch_size} must be >= 1")
    _check(data.val_size >= 0, f"data.val_size={data.val_size} must be >= 0")
    _check(data.crop_padding >= 0, f"data.crop_padding={data.crop_padding} must be >= 0")
    folder = data.imagefolder
    _check(folder.image_size >= 1, f"data.imagefolder.image_size={folder.image_size} must be >= 1")
    _check(
        folder.workers is None or folder.workers >= 0,
        f"data.imagefolder.workers={folder.workers} must be >= 0 (or null: min(4, cores))",
    )
    _check(
        data.train_subset is None or data.train_subset >= 1,
        f"data.train_subset={data.train_subset} must be >= 1",
    )
    _validate_schedule(config.schedule, "schedule")
    for generation in config.generation_schedules:
        _check(
            isinstance(generation, int) and 0 <= generation <= max_generation(config),
            f"generation_schedules key {generation!r} must be a generation in "
            f"[0, {max_generation(config)}]",
        )
        _validate_schedule(schedule_for(config, generation), f"generation_schedules.{generation}")
    _validate_snapshot(config)
    for generation in range(max_generation(config) + 1):
        steps = schedule_for(config, generation).accumulate_steps
        _check(
            steps <= data.batch_size,
            f"schedule.accumulate_steps={steps} (generation {generation}) exceeds "
            f"data.batch_size={data.batch_size}: every micro-batch needs an image",
        )
    return config


def precision_setting(config: Config) -> str:
    """``precision``, with the deprecated ``amp=false`` read as ``fp32``."""
    return "fp32" if config.amp is False else config.precision


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]


# Keys that do not change what is trained: they may differ between a run and its resume.
NON_SEMANTIC_KEYS = (
    "out_dir", "progress", "tensorboard", "name", "check_every", "compile", "eval_train_max",
    "imports", "loggers", "sweep_dir",
)  # fmt: skip
# Keys added after runs were made: left out of the hash at their defaults, so the hashes
# (and the resumability) of older run folders do not change.
LATER_KEY_DEFAULTS: dict[str, Any] = {
    "sync_batchnorm": True,
    "max_grad_norm": None,
    "precision": "auto",
    "amp": None,
    "model_args": {},
    "student_loss": "kd",
    "student_model": None,
    "generation_models": {},
    "snapshot": {"cycles": 0, "temperature": 2.0, "first_cycle_epochs": None},
    "auto": {"metric": "val_top1", "min_delta": 0.0, "patience": 1, "max_generations": 5},
    "ema": {"decay": 0.0, "teach": False},
}
LATER_SCHEDULE_KEY_DEFAULTS: dict[str, Any] = {
    "lr_scaling": "none",
    "base_batch_size": 128,
    "optimizer": "sgd",
    "betas": [0.9, 0.999],
    "accumulate_steps": 1,
}


def config_hash(config: Config, patriarch: Mapping[str, str] | None = None) -> str:
    """A hash of everything that decides the trained weights.

    A loaded patriarch (``patriarch=PATH``) enters by what it is, ``patriarch``: its run's
    config hash and its gen0 checkpoint's sha256 (kdgen.provenance.PatriarchSource), so a
    run's hash does not depend on where its patriarch lies.
    """
    if config.patriarch and patriarch is None:
        raise ValueError("the config hash of a run with patriarch= needs the patriarch's identity")
    values = _hashed_values(config)
    if config.patriarch:
        values["patriarch"] = dict(patriarch or {})
    return _digest(values)


def legacy_config_hash(config: Config) -> str:
    """The hash kdgen gave a run with ``patriarch=PATH`` before it hashed the patriarch by
    what it is: the path itself, as written. Run folders from then carry it."""
    return _digest(_hashed_values(config))


def _hashed_values(config: Config) -> dict[str, Any]:
    values = to_dict(config)
    for key in NON_SEMANTIC_KEYS:
        values.pop(key, None)
    _drop_defaults(values, LATER_KEY_DEFAULTS)
    _drop_defaults(values["schedule"], LATER_SCHEDULE_KEY_DEFAULTS)
    values["data"].update(values["data"].pop("imagefolder"))  # hashed under their old names
    if values["data"]["workers"] is None:  # the null default is hashed as the old default, 4
        values["data"]["workers"] = 4
    return values


def _digest(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _drop_defaults(values: dict[str, Any], defaults: dict[str, Any]) -> None:
    for key, default in defaults.items():
        if key in values and values[key] == default:
            del values[key]


def flatten_config(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dictionary (:func:`to_dict`) as ``{dotted key: value}``;
    ``generation_schedules`` stays one value (its keys are generations, not config keys)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "generation_schedules":
            out.update(flatten_config(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_diff(old: Config, new: Config) -> list[str]:
    """Lines 'key: old -> new' for every semantic key that differs."""
    a, b = flatten_config(to_dict(old)), flatten_config(to_dict(new))
    return [
        f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if key.split(".")[0] not in NON_SEMANTIC_KEYS and a.get(key) != b.get(key)
    ]


__all__ = [
    "AutoConfig",
    "Config",
    "DataConfig",
    "EmaConfig",
    "ImageFolderConfig",
    "ScheduleConfig",
    "SnapshotConfig",
    "SyntheticConfig",
    "build_config",
    "config_diff",
    "config_from_dict",
    "config_from_yaml",
    "config_hash",
    "cycle_epochs",
    "effective_lr",
    "flatten_config",
    "format_process",
    "is_user_object",
    "legacy_config_hash",
    "list_presets",
    "max_generation",
    "not_recorded",
    "parse_process",
    "process_slug",
    "schedule_for",
    "to_dict",
    "to_yaml",
    "validate",
]

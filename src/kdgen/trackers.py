"""Experiment trackers: where a run's metrics go besides ``metrics.jsonl`` (``loggers``).

:data:`TRACKERS` maps a logger's name to a :class:`TrackerKind`. Each kind opens one
tracked run per kdgen run, takes the resolved config as parameters and every record of
``metrics.jsonl`` as the metrics ``gen{g}/{split}/{name}`` at step = epoch, and is closed
with the run's final state (:class:`kdgen.runs.RunFolder` fans out to them).

- ``tensorboard`` (the default): event files in ``RUN/tb/``; left out when TensorBoard is
  not installed.
- ``mlflow``: MLflow's client. The store is ``MLFLOW_TRACKING_URI`` where set, else a SQLite
  file: ``SWEEP/mlflow.db`` for the runs of a sweep (one experiment named after the sweep
  folder), else ``RUN/mlflow.db`` (experiment ``MLFLOW_EXPERIMENT_NAME``, else ``kdgen``).
- ``wandb``: Weights & Biases' client, its files in ``RUN/wandb/``; offline unless an API
  key is set (``WANDB_API_KEY`` or ``wandb login``) or ``WANDB_MODE`` says otherwise; the
  project is ``WANDB_PROJECT``, else ``kdgen``; a sweep's runs form a group named after it.

What a tracker records (:attr:`Tracker.record`) is kept in ``run.json``, so that a resumed
run continues the same tracked run. mlflow and wandb are imported only when selected.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

from kdgen.errors import ConfigError, describe

if TYPE_CHECKING:
    from kdgen.config import Config

FINAL_STATES = ("finished", "failed", "interrupted")


@dataclass(frozen=True)
class TrackedRun:
    """What a tracker opens: the run folder, the run's name, the sweep folder it belongs to
    (None outside a sweep), and what this tracker recorded when the run last started."""

    path: Path
    name: str
    sweep_dir: Path | None = None
    previous: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> str | None:
        return self.sweep_dir.name if self.sweep_dir is not None else None


class Tracker(Protocol):
    """One tracked run. ``record`` is what a resume needs to continue it."""

    record: dict[str, Any]

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, record: dict[str, Any]) -> None: ...

    def close(self, status: str) -> None: ...


def metric_values(record: dict[str, Any]) -> dict[str, float]:
    """A ``metrics.jsonl`` record's numbers, named ``gen{g}/{split}/{name}``."""
    prefix = f"gen{record['generation']}/{record['split']}"
    return {
        f"{prefix}/{key}": float(value)
        for key, value in record.items()
        if key not in ("generation", "epoch", "split")
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    }


class TensorBoardTracker:
    """Scalars in ``RUN/tb/``; the config as a text summary."""

    def __init__(self, run: TrackedRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(run.path / "tb"))
        self.record: dict[str, Any] = {"dir": str(run.path / "tb")}

    def log_params(self, params: dict[str, Any]) -> None:
        lines = [f"    {key}: {value}" for key, value in params.items()]  # a markdown code block
        self._writer.add_text("config", "\n".join(lines))

    def log_metrics(self, record: dict[str, Any]) -> None:
        for key, value in metric_values(record).items():
            self._writer.add_scalar(key, value, record["epoch"])

    def close(self, status: str) -> None:
        self._writer.close()


MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
MLFLOW_BATCH = 100  # MLflow takes at most 100 params in one log_batch request


def mlflow_uri(group_folder: Path) -> str:
    """``MLFLOW_TRACKING_URI`` where set, else the SQLite store in ``group_folder``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{group_folder.resolve()}/mlflow.db"


def mlflow_experiment_id(client: Any, name: str) -> str:
    """The id of the experiment ``name``, made if there is none (a concurrent run may make
    it first: then it is read back)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _mlflow_client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


class MLflowTracker:
    """One MLflow run; the run of a resumed kdgen run is continued, not made anew."""

    def __init__(self, run: TrackedRun) -> None:
        uri = mlflow_uri(run.sweep_dir or run.path)
        self._client = _mlflow_client(uri)
        previous = run.previous if run.previous.get("uri") == uri else {}
        self.resumed = bool(previous.get("run_id"))
        if self.resumed:
            run_id, experiment = previous["run_id"], previous["experiment"]
            self._client.update_run(run_id, status="RUNNING")
        else:
            experiment = run.group or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "kdgen"
            tags = {"kdgen.run_dir": str(run.path.resolve())}
            if run.group:
                tags["kdgen.sweep"] = run.group
            created = self._client.create_run(
                mlflow_experiment_id(self._client, experiment), run_name=run.name, tags=tags
            )
            run_id = created.info.run_id
        self._run_id = run_id
        self.record: dict[str, Any] = {"uri": uri, "experiment": experiment, "run_id": run_id}

    def log_params(self, params: dict[str, Any]) -> None:
        """The config, once: MLflow refuses to change a logged parameter, and a resume may
        change keys that do not shape the run (e.g. ``progress``)."""
        if self.resumed:
            return
        from mlflow.entities import Param

        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), MLFLOW_BATCH):
            self._client.log_batch(self._run_id, params=items[start : start + MLFLOW_BATCH])

    def log_metrics(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, value, now, record["epoch"]) for key, value in metric_values(record).items()
        ]
        self._client.log_batch(self._run_id, metrics=metrics)

    def close(self, status: str) -> None:
        self._client.set_terminated(self._run_id, status=MLFLOW_STATUS[status])


def prepare_mlflow_sweep(sweep_dir: Path) -> None:
    """Make the sweep's store and experiment before its runs start, so that concurrent
    runs do not race to make them."""
    client = _mlflow_client(mlflow_uri(sweep_dir))
    mlflow_experiment_id(client, sweep_dir.name)


def wandb_key_is_set() -> bool:
    """Whether W&B has an API key: ``WANDB_API_KEY``, or the netrc entry ``wandb login``
    writes for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


WANDB_EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 130}


class WandbTracker:
    """One W&B run, offline when no API key is set; a resumed kdgen run continues it."""

    def __init__(self, run: TrackedRun) -> None:
        import wandb

        offline = "WANDB_MODE" not in os.environ and not wandb_key_is_set()
        run_id = run.previous.get("id") or uuid.uuid4().hex[:12]
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "kdgen",
            group=run.group,
            name=run.name,
            dir=str(run.path),
            id=run_id,
            resume="allow",
            mode="offline" if offline else None,
        )
        self._generations: set[int] = set()
        self.record: dict[str, Any] = {
            "id": run_id,
            "project": self._run.project,
            "group": run.group,
            "mode": "offline" if offline else os.environ.get("WANDB_MODE", "online"),
            "dir": str(Path(self._run.dir).parent),  # run.dir is its files/ folder
        }

    def log_params(self, params: dict[str, Any]) -> None:
        self._run.config.update(params, allow_val_change=True)

    def log_metrics(self, record: dict[str, Any]) -> None:
        generation = record["generation"]
        if generation not in self._generations:
            self._run.define_metric(f"gen{generation}/*", step_metric=f"gen{generation}/epoch")
            self._generations.add(generation)
        self._run.log({f"gen{generation}/epoch": record["epoch"], **metric_values(record)})

    def close(self, status: str) -> None:
        self._run.finish(exit_code=WANDB_EXIT_CODES[status])


@dataclass(frozen=True)
class TrackerKind:
    """A logger: how to open it, the package it needs and how to install that.
    ``required=False``: left out, not refused, where the package is missing (TensorBoard,
    which is on by default). ``groups``: it groups the runs of a sweep; ``prepare_sweep``
    readies what they share before they start."""

    open: Callable[[TrackedRun], Tracker]
    package: str
    install: str
    required: bool = True
    groups: bool = True
    prepare_sweep: Callable[[Path], None] | None = None

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None


TRACKERS: dict[str, TrackerKind] = {
    "tensorboard": TrackerKind(
        TensorBoardTracker,
        "tensorboard",
        "pip install 'kdgen[tensorboard]'",
        required=False,
        groups=False,
    ),
    "mlflow": TrackerKind(
        MLflowTracker, "mlflow", "pip install 'kdgen[mlflow]'", prepare_sweep=prepare_mlflow_sweep
    ),
    "wandb": TrackerKind(WandbTracker, "wandb", "pip install 'kdgen[wandb]'"),
}


def selected_loggers(config: Config) -> list[str]:
    """``loggers``, less tensorboard where the older switch ``tensorboard=false`` says so."""
    return [name for name in config.loggers if name != "tensorboard" or config.tensorboard]


def require(names: list[str]) -> None:
    """Refuse, with one line naming the pip command, a selected logger that is missing."""
    for name in names:
        kind = TRACKERS[name]
        if kind.required and not kind.installed():
            raise ConfigError(f"loggers: {name} needs the {kind.package} package: {kind.install}")


def groups_runs(names: list[str]) -> bool:
    """Whether any of these loggers groups the runs of a sweep."""
    return any(TRACKERS[name].groups for name in names)


def prepare_sweep(names: list[str], sweep_dir: Path) -> None:
    """Ready what the sweep's runs will share in each selected tracker."""
    require(names)
    for name in names:
        prepare = TRACKERS[name].prepare_sweep
        if prepare is not None:
            prepare(sweep_dir)


def open_trackers(
    names: list[str],
    run_dir: Path,
    name: str,
    sweep_dir: Path | None,
    previous: dict[str, dict[str, Any]],
) -> dict[str, Tracker]:
    """Open every selected tracker that is installed for the run in ``run_dir``, called
    ``name``; ``previous`` holds what each recorded when the run last started. A tracker
    that cannot start is a ConfigError with its error's first line (those opened before
    it are closed as failed)."""
    require(names)
    opened: dict[str, Tracker] = {}
    for logger in names:
        kind = TRACKERS[logger]
        if not kind.installed():
            continue
        try:
            opened[logger] = kind.open(
                TrackedRun(run_dir, name, sweep_dir, previous.get(logger, {}))
            )
        except Exception as error:  # each client raises its own errors
            for tracker in opened.values():
                tracker.close("failed")
            raise ConfigError(f"loggers: {logger} cannot start a run ({describe(error)})") from None
    return opened

"""``kdgen sweep``: a grid of processes x seeds from one preset, paired by seed.

Each run gets its own folder, ``SWEEP/<process>/seed<s>``. Within a seed, the runs whose
patriarchs would be identical (same eta, regulariser, k and form) share one: the first
trains it and the others load it with ``patriarch=<its folder>``. Every process of a
seed also sees the same training subset and validation split, since those depend on the
seed alone. Re-running a sweep skips finished runs and resumes unfinished ones.

``SWEEP/sweep.json`` holds the plan (preset, overrides, processes, seeds and every run's
command), so that ``kdgen sweep --resume SWEEP`` needs nothing else. How the runs are
executed (here, one at a time; or in parallel, or on Slurm) is :mod:`kdgen.executors`.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kdgen.config import build_config, config_hash, parse_process, process_slug
from kdgen.errors import ERROR_PREFIX, ConfigError, RunDirError
from kdgen.losses import REGULARIZERS
from kdgen.plugins import import_modules
from kdgen.policy import patriarch_key
from kdgen.runs import RunFolder, atomic_write_json
from kdgen.trackers import groups_runs, prepare_sweep, require, selected_loggers

SPEC_PATTERN = re.compile(r"^(?P<process>D\([^)]*\))(?::(?P<regularizer>\w+))?$")


@dataclass(frozen=True)
class SweepRun:
    label: str
    seed: int
    path: str
    overrides: tuple[str, ...]
    shares_patriarch_of: str | None

    def command(self, preset: str) -> str:
        words = ["kdgen", "train", preset, *self.overrides, "--out", self.path]
        return " ".join(shlex.quote(w) for w in words)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SweepRun:
        return cls(
            label=record["label"],
            seed=int(record["seed"]),
            path=record["path"],
            overrides=tuple(record["overrides"]),
            shares_patriarch_of=record.get("shares_patriarch_of"),
        )


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``D(0.6,0.6)`` or ``D(0.6,0.6):lsr`` -> (process, regulariser or None)."""
    match = SPEC_PATTERN.match(spec.replace(" ", ""))
    if not match:
        raise ConfigError(f"process spec '{spec}' must look like D(eta,lam) or D(eta,lam):lsr")
    process, regularizer = match.group("process"), match.group("regularizer")
    parse_process(process)
    if regularizer is not None and regularizer not in REGULARIZERS:
        raise ConfigError(
            f"process spec '{spec}': regularizer must be one of {', '.join(REGULARIZERS)}"
        )
    return process, regularizer


def plan_sweep(
    preset: str, specs: list[str], seeds: list[int], out: Path, overrides: tuple[str, ...] = ()
) -> list[SweepRun]:
    """The runs of a sweep, in an order where every shared patriarch is trained first.

    The modules of the config's ``imports`` are imported here first, and the packages of
    its ``loggers`` looked for, so that a sweep that cannot run stops before anything is
    written. Where ``loggers`` names a tracker that groups runs, every run gets
    ``sweep_dir=<out>``. A patriarch that the config gives (``patriarch=``) is loaded by
    every run itself.
    """
    if not specs or not seeds:
        raise ConfigError("a sweep needs at least one process and one seed")
    base = build_config(preset, list(overrides))
    import_modules(base.imports)
    require(selected_loggers(base))
    if groups_runs(selected_loggers(base)):
        overrides = (*overrides, f"sweep_dir={out}")
    runs = []
    for seed in seeds:
        owners: dict[tuple[object, ...], str] = {}
        specs_of: dict[str, str] = {}  # config hash -> the spec that gave it
        for spec in specs:
            process, regularizer = parse_spec(spec)
            label = process if regularizer is None else f"{process}:{regularizer}"
            extra = [f"process={process}", f"seed={seed}"]
            if regularizer is not None:
                extra.append(f"regularizer={regularizer}")
            path = str(out / process_slug(label) / f"seed{seed}")
            config = build_config(preset, [*overrides, *extra])  # validates every run up front
            twin = specs_of.setdefault(config_hash(config), spec)
            if twin != spec:
                raise ConfigError(
                    f"--processes lists one run twice: '{twin}' and '{spec}' are the same "
                    f"process ({config.process}); list it once"
                )
            key = patriarch_key(config)
            owner = path if key is None or config.patriarch else owners.setdefault(key, path)
            shared = owner if owner != path else None
            if shared is not None:
                extra.append(f"patriarch={shared}")
            runs.append(SweepRun(label, seed, path, (*overrides, *extra), shared))
    return runs


PLAN_FILE = "sweep.json"


def write_plan(
    out: Path, preset: str, runs: list[SweepRun], settings: dict[str, Any] | None = None
) -> None:
    """``sweep.json``: the preset, every run with its command, and how it was executed
    (``settings``: executor, jobs, ...). A different plan in the same folder is refused."""
    saved = read_plan(out) if (out / PLAN_FILE).exists() else None
    if saved is not None and _plan_records(saved[1]) != _plan_records(runs):
        raise RunDirError(
            f"{out} holds another sweep (its runs or overrides differ); "
            f"resume it with: kdgen sweep --resume {out}, or choose another --out"
        )
    atomic_write_json(
        out / PLAN_FILE,
        {
            "preset": preset,
            "resume": f"kdgen sweep --resume {shlex.quote(str(out))}",
            "settings": settings or {},
            "runs": [{**asdict(r), "command": r.command(preset)} for r in runs],
        },
    )


def _plan_records(runs: list[SweepRun]) -> list[tuple[str, tuple[str, ...]]]:
    return [(str(Path(r.path).resolve()), tuple(r.overrides)) for r in runs]


def read_plan(out: Path) -> tuple[str, list[SweepRun], dict[str, Any]]:
    """The preset, runs and execution settings saved in ``out/sweep.json``."""
    path = out / PLAN_FILE
    if not path.is_file():
        raise RunDirError(f"{out} holds no sweep (no {PLAN_FILE})")
    try:
        record = json.loads(path.read_text())
        runs = [SweepRun.from_record(r) for r in record["runs"]]
        return str(record["preset"]), runs, dict(record.get("settings") or {})
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunDirError(f"{path} is unreadable ({type(error).__name__})") from None


def is_sweep_folder(path: Path) -> bool:
    return (path / PLAN_FILE).is_file()


def run_status(path: str | Path) -> str | None:
    """The ``run.json`` status of a run folder (None: never started)."""
    folder = RunFolder(path)
    return folder.read_state().get("status") if folder.state_path.exists() else None


def patriarch_ready(path: str | Path) -> bool:
    """Whether the run in ``path`` has finished its patriarch: ``gen0.pt`` is on disk and
    its summary holds generation 0 (whose training metrics the runs that share it copy)."""
    folder = RunFolder(path)
    if not folder.generation_checkpoint(0).exists():
        return False
    try:
        summary = folder.read_summary() or {}
    except RunDirError:
        return False
    return any(entry.get("generation") == 0 for entry in summary.get("generations", []))


def last_test_top1(path: str | Path) -> float | None:
    """The test top-1 of the last generation in a run's summary (None: none yet)."""
    try:
        summary = RunFolder(path).read_summary() or {}
    except RunDirError:
        return None
    generations = sorted(summary.get("generations", []), key=lambda e: e["generation"])
    if not generations or not generations[-1].get("test"):
        return None
    return generations[-1]["test"].get("top1")


def prepare_trackers(preset: str, runs: list[SweepRun]) -> None:
    """Ready what the runs share in their trackers (MLflow's store and experiment) before
    any starts, so that runs started together do not race to make it."""
    config = build_config(preset, list(runs[0].overrides)) if runs else None
    if config is not None and config.sweep_dir is not None:
        prepare_sweep(selected_loggers(config), Path(config.sweep_dir))


def format_commands(preset: str, runs: list[SweepRun]) -> str:
    """One ``kdgen train`` command per line; a run that shares a patriarch comes after
    the run that trains it, and says so in a comment."""
    lines = []
    for run in runs:
        note = f"  # after {run.shares_patriarch_of}" if run.shares_patriarch_of else ""
        lines.append(run.command(preset) + note)
    return "\n".join(lines)


STATUS_COLUMNS = ("process", "seed", "state", "generation", "epoch", "test top-1")


def sweep_status(out: Path) -> list[dict[str, Any]]:
    """One row per run of the sweep in ``out`` (see :func:`run_row`)."""
    _, runs, _ = read_plan(out)
    return [run_row(run.path, run.label, run.seed) for run in runs]


def folder_status(path: Path) -> dict[str, Any]:
    """The :func:`run_row` of one run folder, labelled by its config's process."""
    config = RunFolder(path).read_config()
    label = (
        config.process if config.regularizer == "tsd" else f"{config.process}:{config.regularizer}"
    )
    return run_row(path, label, config.seed)


def run_row(path: str | Path, label: str, seed: int) -> dict[str, Any]:
    """A run's state (waiting, running, interrupted, finished, failed), the generation and
    epoch it reached, its last test top-1 and, when it failed, its error: the last line of
    its ``train.log`` (a sweep's runs), else the reason in its ``run.json``."""
    folder = RunFolder(path)
    state = folder.read_state() if folder.state_path.exists() else {}
    status = state.get("status") or "waiting"
    last_line = folder.last_log_line()
    if status == "waiting" and last_line and last_line.startswith(ERROR_PREFIX):
        status = "failed"  # refused before it wrote anything
    if status == "running" and not _may_be_alive(folder):
        status = "interrupted"  # killed without a chance to say so
    tests = [r for r in folder.read_metrics() if r.get("split") == "test"]
    return {
        "process": label,
        "seed": seed,
        "state": status,
        "generation": _stage_cell(state),
        "epoch": state.get("epoch"),
        "test top-1": tests[-1].get("top1") if tests else None,
        "error": (last_line or state.get("reason")) if status == "failed" else None,
    }


def _stage_cell(state: dict[str, Any]) -> int | str | None:
    """The stage a run reached: its generation, or ``cycle C`` for a snapshot run."""
    index = state.get("generation")
    return f"cycle {index}" if index is not None and state.get("stage") == "cycle" else index


def _may_be_alive(folder: RunFolder) -> bool:
    """False only when the local process that trains the run is known to be gone."""
    import os
    import socket

    try:
        resources = folder.read_resources()
    except RunDirError:
        return True
    pid = resources.get("pid")
    if resources.get("executor") != "local" or resources.get("host") != socket.gethostname():
        return True
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A killed process whose parent died too may linger unreaped (Linux: state Z)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def format_status(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`run_row` rows, then the error of each failed run."""
    cells = [
        [
            "-" if row[c] is None else f"{row[c]:.4f}" if c == "test top-1" else str(row[c])
            for c in STATUS_COLUMNS
        ]
        for row in rows
    ]
    table = [list(STATUS_COLUMNS), *cells]
    widths = [max(len(line[i]) for line in table) for i in range(len(STATUS_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]
    errors = [
        f"{row['process']} seed {row['seed']}: {row['error']}" for row in rows if row.get("error")
    ]
    return "\n".join([*lines, *errors])

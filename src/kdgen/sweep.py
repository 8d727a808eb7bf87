"""``kdgen sweep``: a grid of processes x seeds from one preset, paired by seed.

Each run gets its own folder, ``SWEEP/<process>/seed<s>``. Within a seed, the runs whose
patriarchs would be identical (same eta, regulariser, k and form) share one: the first
trains it and the others load it with ``patriarch=<its folder>``. Every process of a
seed also sees the same training subset and validation split, since those depend on the
seed alone. Re-running a sweep skips finished runs and resumes unfinished ones.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from kdgen.config import REGULARIZERS, Config, build_config, parse_process
from kdgen.errors import ConfigError
from kdgen.generations import RunResult, train_generations
from kdgen.runs import RunFolder, atomic_write_json

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


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", label.replace("D(", "D")).strip("-")


def _patriarch_key(config: Config) -> tuple[object, ...]:
    if config.eta == 1.0:
        return ("strict",)
    return (config.eta, config.regularizer, config.k, config.regularizer_form)


def plan_sweep(
    preset: str, specs: list[str], seeds: list[int], out: Path, overrides: tuple[str, ...] = ()
) -> list[SweepRun]:
    """The runs of a sweep, in an order where every shared patriarch is trained first."""
    if not specs or not seeds:
        raise ConfigError("a sweep needs at least one process and one seed")
    runs = []
    for seed in seeds:
        owners: dict[tuple[object, ...], str] = {}
        for spec in specs:
            process, regularizer = parse_spec(spec)
            label = process if regularizer is None else f"{process}:{regularizer}"
            extra = [f"process={process}", f"seed={seed}"]
            if regularizer is not None:
                extra.append(f"regularizer={regularizer}")
            path = str(out / _slug(label) / f"seed{seed}")
            config = build_config(preset, [*overrides, *extra])  # validates every run up front
            key = _patriarch_key(config)
            owner = owners.setdefault(key, path)
            shared = owner if owner != path else None
            if shared is not None:
                extra.append(f"patriarch={shared}")
            runs.append(SweepRun(label, seed, path, (*overrides, *extra), shared))
    return runs


def write_plan(out: Path, preset: str, runs: list[SweepRun]) -> None:
    atomic_write_json(
        out / "sweep.json",
        {"preset": preset, "runs": [{**asdict(r), "command": r.command(preset)} for r in runs]},
    )


def run_sweep(preset: str, runs: list[SweepRun], out: Path) -> list[RunResult]:
    """Run the plan one run after another; finished runs are skipped, partial ones resumed."""
    write_plan(out, preset, runs)
    results = []
    for index, run in enumerate(runs, 1):
        folder = RunFolder(run.path)
        state = folder.read_state().get("status") if folder.state_path.exists() else None
        print(f"[{index}/{len(runs)}] {run.label} seed {run.seed}: {state or 'new'}", flush=True)
        config = build_config(preset, [*run.overrides, f"out_dir={run.path}"])
        if state == "finished":
            results.append(RunResult(folder.path, folder.read_summary() or {}))
            continue
        results.append(train_generations(config, resume=folder.config_path.exists()))
    return results


def format_commands(preset: str, runs: list[SweepRun]) -> str:
    """One ``kdgen train`` command per line; a run that shares a patriarch comes after
    the run that trains it, and says so in a comment."""
    lines = []
    for run in runs:
        note = f"  # after {run.shares_patriarch_of}" if run.shares_patriarch_of else ""
        lines.append(run.command(preset) + note)
    return "\n".join(lines)

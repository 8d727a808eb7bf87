"""Finding run folders, reading their summaries and grouping them by process.

Only ``summary.json`` is needed: a folder of committed summaries is enough for every table
and figure. Whether generation 0 was loaded from another run is read from the summary's
patriarch record (kdgen.provenance); summaries written before that record are judged by
their metrics and ``config.yaml``. Logits are read only by the per-class view.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from kdgen.errors import KdgenError, RunDirError
from kdgen.policy import is_strict
from kdgen.runs import RunFolder

BASELINE = "D(1.0,0.0)"


def process_label(summary: dict[str, Any]) -> str:
    """``process``, plus ``:regularizer`` for a tolerant patriarch not using TSD, plus
    `` snapshot×C`` for a snapshot-distillation run of C cycles or `` auto`` for a run of
    ``generations=auto``: such runs stop or train differently, so they never merge with a
    fixed grid's runs of the same process."""
    label = str(summary["process"])
    regularizer = summary.get("regularizer", "tsd")
    if not is_strict(summary.get("eta", 1.0)) and regularizer != "tsd":
        label = f"{label}:{regularizer}"
    if summary.get("snapshot"):
        label = f"{label} snapshot×{summary['snapshot']['cycles']}"
    if summary.get("auto"):
        label = f"{label} auto"
    return label


@dataclass(frozen=True)
class Run:
    """One run folder and its summary."""

    folder: RunFolder
    summary: dict[str, Any]

    @property
    def label(self) -> str:
        return process_label(self.summary)

    @property
    def is_snapshot(self) -> bool:
        """Whether the run's stages are snapshot cycles, not generations."""
        return bool(self.summary.get("snapshot"))

    @property
    def seed(self) -> int:
        return int(self.summary.get("seed", 0))

    def generation(self, g: int) -> dict[str, Any] | None:
        return next((e for e in self.summary["generations"] if e["generation"] == g), None)

    def ensemble(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.summary.get("ensembles") or [] if e["name"] == name), None)

    def model_of(self, g: int) -> str | None:
        """Generation g's model (older summaries name only the run's ``model``)."""
        entry = self.generation(g) or {}
        return entry.get("model") or self.summary.get("model")

    @property
    def mixed_models(self) -> bool:
        """Whether its generations are not all one model (a student of another model)."""
        return len({self.model_of(e["generation"]) for e in self.summary["generations"]}) > 1

    @property
    def records_patriarch(self) -> bool:
        """Whether the summary records where generation 0 came from (``"patriarch"``: its
        record, or null when trained here); older summaries do not."""
        return "patriarch" in self.summary and not isinstance(self.summary["patriarch"], str)

    @property
    def patriarch_source(self) -> str | None:
        """Where generation 0 was loaded from (``patriarch=``), None when trained here."""
        if self.records_patriarch:
            record = self.summary["patriarch"]
            return None if record is None else str(record.get("source"))
        found = self.summary.get("patriarch")
        if found is None and self.folder.config_path.is_file():
            try:
                found = OmegaConf.load(self.folder.config_path).get("patriarch")
            except (OSError, ValueError):  # an unreadable config: judge by the metrics alone
                found = None
        return str(found) if found else None


def find_runs(dirs: Sequence[Path]) -> list[Run]:
    """Every run folder (one holding ``summary.json``) at or below the given folders."""
    paths: dict[Path, Path] = {}  # resolved (a folder reached twice counts once) -> as given
    for directory in dirs:
        for path in sorted(Path(directory).rglob("summary.json")):
            paths.setdefault(path.parent.resolve(), path.parent)
    runs = []
    for path in paths.values():
        folder = RunFolder(path, writable=False)
        summary = folder.read_summary()
        if summary and summary.get("generations"):
            runs.append(Run(folder, summary))
    if not runs:
        where = ", ".join(str(d) for d in dirs) or "(no folders given)"
        raise RunDirError(f"no run folder with a summary.json (with results) under {where}")
    return runs


def _process_order(label: str, baseline: str) -> tuple[int, float, float, str]:
    match = re.match(r"D\(([\d.]+),([\d.]+)\)", label)
    eta, lam = (float(match.group(1)), float(match.group(2))) if match else (0.0, 0.0)
    return (label != baseline, -eta, lam, label)


def group_runs(runs: Iterable[Run], baseline: str = BASELINE) -> dict[str, list[Run]]:
    """Runs by process label (baseline first, then strict, then tolerant), sorted by seed."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return {
        label: sorted(groups[label], key=lambda r: (r.seed, str(r.folder.path)))
        for label in sorted(groups, key=lambda label: _process_order(label, baseline))
    }


def generations_of(runs: Sequence[Run]) -> list[int]:
    """Every generation number found in the runs, ascending."""
    return sorted({e["generation"] for run in runs for e in run.summary["generations"]})


def is_snapshot(runs: Sequence[Run]) -> bool:
    """Whether the runs (of one process) train snapshot cycles, not generations."""
    return bool(runs) and runs[0].is_snapshot


def stage_key(runs: Sequence[Run], generation: int) -> str:
    """How a stage is named in a table: ``2`` for a generation, ``c2`` for a cycle."""
    return f"c{generation}" if is_snapshot(runs) else str(generation)


def ensemble_names(runs: Sequence[Run]) -> dict[str, list[int]]:
    """Every ensemble name of the runs, with its members (as the first run lists them)."""
    names: dict[str, list[int]] = {}
    for run in runs:
        for ensemble in run.summary.get("ensembles") or []:
            names.setdefault(ensemble["name"], ensemble.get("members", []))
    return names


# --- shared patriarchs ------------------------------------------------------------------------


def _same_patriarch(a: Run, b: Run) -> bool:
    """Both runs' generation 0 gave identical test metrics: one model, evaluated twice."""
    first, second = a.generation(0), b.generation(0)
    return bool(first and second and first.get("test") and first.get("test") == second.get("test"))


def shared_patriarchs(groups: dict[str, list[Run]]) -> dict[tuple[str, int], str]:
    """``(process, seed) -> owner`` for every run whose generation 0 was not trained by it.

    A summary with the patriarch record says so: ``owner`` is the label of the run whose
    config hash the record names (of the run that trained it, along a chain of loads),
    else of the run its source path points into, else that path. For an older summary,
    without the record, it is inferred (:func:`_inferred_owner`).
    """
    shared: dict[tuple[str, int], str] = {}
    labels = list(groups)
    by_seed = {(label, run.seed): run for label, runs in groups.items() for run in runs}
    everyone = list(by_seed.values())
    for position, label in enumerate(labels):
        for run in groups[label]:
            if run.records_patriarch:
                owner = _recorded_owner(run, everyone)
            else:
                earlier = [by_seed.get((other, run.seed)) for other in labels[:position]]
                owner = _inferred_owner(run, earlier, everyone)
            if owner is not None:
                shared[(label, run.seed)] = owner
    return shared


def _recorded_owner(run: Run, runs: list[Run]) -> str | None:
    """The label of the run that trained ``run``'s recorded patriarch (None: ``run`` did)."""
    record, seen = run.summary.get("patriarch"), {id(run)}
    while isinstance(record, dict):
        owner = next(
            (o for o in runs if o.summary.get("config_hash") == record["config_hash"]), None
        )
        if owner is None or id(owner) in seen:
            return _source_label(str(record.get("source")), runs)
        seen.add(id(owner))
        if not isinstance(owner.summary.get("patriarch"), dict):
            return owner.label
        record = owner.summary["patriarch"]
    return None


def _inferred_owner(run: Run, earlier: list[Run | None], runs: list[Run]) -> str | None:
    """For a summary without the patriarch record: the earliest process (``earlier``, in
    report order, the baseline first) whose run of the same seed has exactly the test
    metrics of generation 0 (one model, evaluated twice), else the run or path that its
    ``config.yaml`` names as ``patriarch``; None when neither says it was shared."""
    match = next((o for o in earlier if o is not None and _same_patriarch(run, o)), None)
    if match is not None:
        return match.label
    source = run.patriarch_source
    return None if source is None else _source_label(source, runs)


def _source_label(source: str, runs: Iterable[Run]) -> str:
    """The label of the run a ``patriarch=`` path points into, else the path itself."""
    path = Path(source)
    for candidate in (path, path.parent.parent):
        resolved = candidate.resolve() if candidate.exists() else None
        for run in runs:
            if resolved is not None and run.folder.path.resolve() == resolved:
                return run.label
    return source


# --- class names ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassInfo:
    names: list[str]
    coarse_of_fine: list[int] | None


def class_info(run: Run) -> ClassInfo:
    """Class names and coarse labels: ``classes.json``, else the data set itself, else
    placeholder names."""
    path = run.folder.path / "classes.json"
    if path.is_file():
        value = json.loads(path.read_text())
        return ClassInfo(list(value["class_names"]), value.get("coarse_of_fine"))
    try:
        from kdgen.build import load_data

        dataset = load_data(run.folder.read_config())
        return ClassInfo(list(dataset.class_names), dataset.coarse_of_fine)
    except (KdgenError, OSError, ValueError):
        count = int(run.summary.get("num_classes", 0))
        return ClassInfo([f"class {i}" for i in range(count)], None)

"""Paired differences with their 95% t-intervals: each process against the baseline
process, each generation against the one before it, and the noise floor (the generations
of a process without teachers against each other).

Pairs are formed by seed: a seed counts only where both sides ran it (n says how many
did). A difference is called real only where its interval excludes 0; with n = 1 there is
no interval and no claim. A generation 0 loaded from another process (a shared patriarch)
is the same model, not evidence, and is shown as shared. Every table says how many of its
intervals would exclude 0 by chance if nothing differed.

Stages pair by index when both sides train the same kind of stage (generations, or snapshot
cycles). A snapshot run against a baseline of generations pairs every cycle with the
baseline's generation 0, the one training that costs what the whole snapshot run costs (and
a run of generations against a snapshot baseline pairs with its last cycle).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from kdgen.policy import is_strict
from kdgen.report.collect import (
    BASELINE,
    Run,
    ensemble_names,
    generations_of,
    is_snapshot,
    stage_key,
)
from kdgen.report.stats import CONFIDENCE, Interval, pair_by_seed, t_interval
from kdgen.report.tables import Column, Table

DIFFERENCE_COLUMNS = (
    Column("Δ test top-1 (pp)", "top1", 100.0, 2, None),
    Column("Δ Dist^C", "dist_c", 1.0, 3, None),
)
EXCLUDES_ZERO = "excludes 0"


def paired_differences(
    runs: Sequence[Run],
    baseline: Sequence[Run],
    generation: int,
    column: Column,
    skip_seeds: Sequence[int] = (),
    base_generation: int | None = None,
) -> list[float]:
    """Per seed, run minus the baseline run of that seed (seeds in both): the runs at stage
    ``generation``, the baseline at ``base_generation`` (by default the same)."""
    base = generation if base_generation is None else base_generation
    values = {id(run): column.read(run.generation(generation)) for run in runs}
    values.update({id(run): column.read(run.generation(base)) for run in baseline})
    return pair_by_seed(runs, baseline, lambda run: values[id(run)], skip_seeds)


def paired_stage(runs: Sequence[Run], baseline: Sequence[Run], generation: int) -> int:
    """The baseline's stage that stage ``generation`` of ``runs`` is paired with: the same
    index for the same kind of stage; else the baseline's one training (generation 0) for a
    snapshot run, the baseline's last cycle for a run of generations."""
    if is_snapshot(runs) == is_snapshot(baseline):
        return generation
    return max(generations_of(baseline)) if is_snapshot(baseline) else 0


def difference_note(baseline: str) -> str:
    level = f"{CONFIDENCE:.0%}"
    return (
        f"Paired by seed: each process minus {baseline} on the same seed, counting only "
        f"seeds both ran (n = number of pairs). Each metric: the mean difference, its {level} "
        f"t-interval (Student t, n − 1 degrees of freedom) and whether that interval excludes "
        "0. A difference is called real only where its interval excludes 0 (mean in bold); "
        "with n = 1 there is no interval and nothing is claimed. The intervals are not "
        "corrected for the many rows: where there is no true effect, about 1 row in "
        f"{1 / (1 - CONFIDENCE):.0f} still excludes 0 by chance."
    )


def chance_note(table: Table) -> str:
    """How many of the table's intervals exclude 0, and how many would by chance alone."""
    columns = [i for i, header in enumerate(table.headers) if header == EXCLUDES_ZERO]
    verdicts = [row[i] for row in table.rows for i in columns if row[i] in ("yes", "no")]
    chance = 1 - CONFIDENCE
    return (
        f"This table holds {len(verdicts)} intervals (n ≥ 2), of which "
        f"{verdicts.count('yes')} exclude 0. If nothing differed, about {chance:.2f} × "
        f"{len(verdicts)} = {chance * len(verdicts):.1f} of them would exclude 0 by chance."
    )


def _with_chance_note(table: Table) -> Table:
    table.notes.append(chance_note(table))
    return table


def _sign(value: float, scale: float, digits: int) -> str:
    return f"{value * scale:+.{digits}f}"


def difference_cells(interval: Interval | None, column: Column) -> list[str]:
    """Mean, interval and "excludes 0" cells of one metric's paired differences."""
    if interval is None:
        return ["-", "-", "-"]
    mean = _sign(interval.mean, column.scale, column.digits)
    if interval.low is None or interval.high is None:
        return [mean, "none (n = 1)", "-"]
    low = _sign(interval.low, column.scale, column.digits)
    high = _sign(interval.high, column.scale, column.digits)
    real = bool(interval.excludes_zero)
    return [f"**{mean}**" if real else mean, f"[{low}, {high}]", "yes" if real else "no"]


def _headers(key: str) -> list[str]:
    level = f"{CONFIDENCE:.0%} CI"
    per_metric = [[c.header, level, EXCLUDES_ZERO] for c in DIFFERENCE_COLUMNS]
    return ["process", key, "n", *(h for group in per_metric for h in group)]


def _row(label: str, key: str, diffs: list[list[float]]) -> list[str]:
    intervals = [t_interval(d) for d in diffs]
    cells = [
        cell
        for interval, column in zip(intervals, DIFFERENCE_COLUMNS, strict=True)
        for cell in difference_cells(interval, column)
    ]
    return [label, key, str(len(diffs[0])), *cells]


def differences_table(
    groups: dict[str, list[Run]],
    shared: dict[tuple[str, int], str] | None = None,
    baseline: str = BASELINE,
) -> Table | None:
    """Per process and generation, the paired differences from ``baseline``; None when the
    baseline or any other process is missing. Seeds whose generation 0 is shared are left
    out of generation 0; a generation 0 shared on every seed says whose it is instead."""
    base = groups.get(baseline)
    if not base or len(groups) < 2:
        return None
    shared = shared or {}
    rows = []
    for label, runs in groups.items():
        if label == baseline:
            continue
        for g in generations_of(runs):
            skip = [run.seed for run in runs if g == 0 and (label, run.seed) in shared]
            paired = paired_stage(runs, base, g)
            key = stage_key(runs, g)
            if paired != g or is_snapshot(runs) != is_snapshot(base):
                key = f"{key} vs {stage_key(base, paired)}"
            if skip and len(skip) == len(runs):
                owners = sorted({shared[(label, seed)] for seed in skip})
                text = f"shared with {', '.join(owners)}"
                rows.append([label, key, "-", *([text, "-", "-"] * len(DIFFERENCE_COLUMNS))])
                continue
            diffs = [
                paired_differences(runs, base, g, c, skip, base_generation=paired)
                for c in DIFFERENCE_COLUMNS
            ]
            rows.append(_row(label, key, diffs))
    notes = [difference_note(baseline)]
    if any(is_snapshot(runs) != is_snapshot(base) for runs in groups.values()):
        notes.append(
            "gen cN vs 0: snapshot cycle N minus the baseline's generation 0, the one training "
            "that costs what the whole snapshot run costs (N vs cM: against its last cycle)."
        )
    return _with_chance_note(Table(_headers("gen"), rows, left=1, notes=notes))


def ensemble_differences_table(
    groups: dict[str, list[Run]], baseline: str = BASELINE
) -> Table | None:
    """Per process and ensemble name, paired differences from the baseline's ensemble of
    the same name; None when the baseline has no ensembles. Snapshot ensembles are compared
    only with snapshot ensembles, and generations' with generations'."""
    base = groups.get(baseline)
    names = ensemble_names(base or [])
    if not names or len(groups) < 2:
        return None
    rows = []
    for label, runs in groups.items():
        if label == baseline or is_snapshot(runs) != is_snapshot(base or []):
            continue
        for name, members in ensemble_names(runs).items():
            if name not in names:
                continue
            diffs = [
                pair_by_seed(runs, base or [], lambda run, c=c, n=name: c.read(run.ensemble(n)))
                for c in DIFFERENCE_COLUMNS
            ]
            rows.append(_row(label, f"{name} [{','.join(map(str, members))}]", diffs))
    if not rows:
        return None
    return _with_chance_note(Table(_headers("ensemble"), rows, left=2))


# --- within a process: generation against generation, same seed ------------------------------


def generation_differences(
    runs: Sequence[Run], later: int, earlier: int, column: Column
) -> list[float]:
    """Per run (one seed), generation ``later`` minus generation ``earlier`` of that run;
    runs missing either value are left out."""
    out = []
    for run in runs:
        value, reference = column.read(run.generation(later)), column.read(run.generation(earlier))
        if value is not None and reference is not None:
            out.append(value - reference)
    return out


def _generation_row(label: str, runs: Sequence[Run], later: int, earlier: int) -> list[str]:
    diffs = [generation_differences(runs, later, earlier, c) for c in DIFFERENCE_COLUMNS]
    return _row(label, f"{later} − {earlier}", diffs)


def has_independent_generations(runs: Sequence[Run]) -> bool:
    """Whether every generation of these runs is an independent run of one training: a
    strict patriarch, no teacher term (lam = 0) and the same number of epochs throughout,
    so its generations differ only by their own initialisation and stream."""
    epochs = {e.get("epochs") for run in runs for e in run.summary["generations"]}
    return (
        len(epochs) == 1
        and all(is_strict(float(run.summary.get("eta", 1.0))) for run in runs)
        and all(float(run.summary.get("lam", 0.0)) == 0.0 for run in runs)
    )


def generation_steps_table(groups: dict[str, list[Run]]) -> Table | None:
    """Per process, each generation minus the one before it on the same seed; None when
    no process has two generations."""
    rows = []
    for label, runs in groups.items():
        generations = generations_of(runs)
        for earlier, later in pairwise(generations):
            rows.append(_generation_row(label, runs, later, earlier))
    if not rows:
        return None
    note = (
        "Per seed, generation g of a process minus generation g − 1 of the same run (its "
        "teacher, where it has one); mean, 95% t-interval (n − 1 degrees of freedom), n. "
        "A step is called real only where its interval excludes 0; read it against the "
        "noise floor."
    )
    return _with_chance_note(Table(_headers("step"), rows, left=2, notes=[note]))


def noise_floor_table(groups: dict[str, list[Run]]) -> Table | None:
    """For every process whose generations are independent runs (D(1.0,0.0)), each
    generation minus the one before and minus generation 0, paired by seed: differences
    between trainings that differ only by chance. None when there is no such process."""
    rows = []
    for label, runs in groups.items():
        generations = generations_of(runs)
        if len(generations) < 2 or not has_independent_generations(runs):
            continue
        for earlier, later in pairwise(generations):
            rows.append(_generation_row(label, runs, later, earlier))
            if earlier != generations[0]:
                rows.append(_generation_row(label, runs, later, generations[0]))
    if not rows:
        return None
    chance = 1 - CONFIDENCE
    note = (
        "Per seed, one generation minus another of the same run. Each generation of this "
        "process is an independent training (a strict patriarch, no teacher term, the same "
        "schedule): its own initialisation and stream on the seed's data, nothing else. "
        "By design the differences here are chance, so these intervals are the noise floor "
        f"for every other table. With m intervals at {CONFIDENCE:.0%}, about {chance:.2f} × m are "
        "expected to exclude 0 when nothing differs: across the many intervals of a "
        "report some exclude 0 by chance, here and elsewhere."
    )
    return _with_chance_note(Table(_headers("pair"), rows, left=2, notes=[note]))

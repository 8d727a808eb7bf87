"""``kdgen report``: every run folder under some folders -> report.md, report.html and two
figures, from the runs' ``summary.json`` files (plus logits, when present, for the
per-class view)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from kdgen.files import make_folder
from kdgen.report.collect import BASELINE, Run, find_runs, group_runs, shared_patriarchs
from kdgen.report.differences import (
    differences_table,
    ensemble_differences_table,
    generation_steps_table,
    noise_floor_table,
)
from kdgen.report.figures import BAND, plot_accuracy, plot_secondary
from kdgen.report.html_page import page
from kdgen.report.secondary import per_class_table
from kdgen.report.tables import (
    Section,
    chosen_table,
    ensembles_table,
    fit_table,
    generations_summary_table,
    training_loss_table,
)
from kdgen.report.tolerance import plot_tolerance, tolerance_table
from kdgen.runs import atomic_write_text

FIGURES = (
    ("accuracy.png", f"Test top-1 accuracy over generations ({BAND})"),
    ("secondary.png", f"Dist^C, Dist^S and mean top-1 probability over generations ({BAND})"),
)
TOLERANCE_FIGURE = (
    "tolerance.png",
    "The patriarch against eta (mean over seeds; bars: 95% t-interval of the mean)",
)


def _header_lines(
    dirs: Sequence[Path], out: Path, runs: list[Run], groups: dict, baseline: str
) -> list[str]:
    def values(key: str) -> str:
        return ", ".join(sorted({str(r.summary.get(key, "?")) for r in runs}))

    seeds = sorted({r.seed for r in runs})
    command = ["kdgen", "report", *(shlex.quote(str(d)) for d in dirs)]
    command += ["--out", shlex.quote(str(out))]
    if baseline != BASELINE:
        command += ["--baseline", shlex.quote(baseline)]
    return [
        f"{len(runs)} runs: {len(groups)} processes, seeds {', '.join(map(str, seeds))}.",
        f"Data: {values('data')}; model: {values('model')}; K = {values('k')}.",
        *_not_recorded_lines(runs),
        f"Baseline of the paired differences: {baseline}.",
        f"Regenerate: `{' '.join(command)}`",
    ]


def _not_recorded_lines(runs: list[Run]) -> list[str]:
    """A warning when some runs' model or data were Python objects (``not_recorded`` in
    their summaries): runs of equal descriptions may still differ in them."""
    keys = {key: 0 for key in ("model", "data")}
    for run in runs:
        for key in run.summary.get("not_recorded") or {}:
            keys[key] = keys.get(key, 0) + 1
    found = [f"the {key} of {count} runs" for key, count in keys.items() if count]
    if not found:
        return []
    return [
        f"Not recorded: {' and '.join(found)} were Python objects, known here by their "
        "descriptions alone; equal descriptions do not prove equal objects."
    ]


def _sections(groups: dict[str, list[Run]], examples: int, baseline: str) -> list[Section]:
    shared = shared_patriarchs(groups)
    runs = [run for members in groups.values() for run in members]
    sections = [
        Section(
            "Per generation (mean ± sample std over seeds)",
            "Test metrics and the final training top-1. Bold: best in its column "
            "(highest accuracy, lowest Dist^C and Dist^S).",
            generations_summary_table(groups, shared),
        )
    ]
    differences = differences_table(groups, shared, baseline)
    if differences is not None:
        sections.append(
            Section(f"Difference from {baseline} (paired, 95% t-interval)", "", differences)
        )
    noise = noise_floor_table(groups)
    if noise is not None:
        sections.append(
            Section(
                "Noise floor: independent runs against each other (paired, 95% t-interval)",
                "How far apart two trainings that differ only by chance come out: the "
                "generations of a process without teachers, paired by seed.",
                noise,
            )
        )
    steps = generation_steps_table(groups)
    if steps is not None:
        sections.append(
            Section(
                "Generation to generation (paired, 95% t-interval)",
                "Whether each student beats its teacher (or, without teachers, the run "
                "before it) on the same seed.",
                steps,
            )
        )
    chosen = chosen_table(groups)
    if chosen is not None:
        sections.append(
            Section(
                "Chosen on validation (mean ± sample std over seeds)",
                "The single model and the ensemble each run chose on its validation split "
                '(docs/method.md, "Choosing on validation"), in brackets per seed, and '
                "their test metrics: the numbers a user who selects on validation gets.",
                chosen,
            )
        )
    ensembles = ensembles_table(groups)
    if ensembles is not None:
        sections.append(
            Section(
                "Ensembles (mean ± sample std over seeds)",
                "Softmax averages of the listed generations.",
                ensembles,
            )
        )
    ensemble_differences = ensemble_differences_table(groups, baseline)
    if ensemble_differences is not None:
        sections.append(
            Section(
                f"Ensembles: difference from {baseline} (paired, 95% t-interval)",
                f"Each ensemble minus {baseline}'s ensemble of the same name on the same seed; "
                "n, intervals and the rule for calling a difference real as above.",
                ensemble_differences,
            )
        )
    fit = fit_table(groups)
    if fit is not None:
        sections.append(
            Section(
                "Fit to the training images (mean ± sample std over seeds)",
                "Clean train top-1 and NLL: the last epoch's model evaluated without "
                "augmentation on a fixed seeded subset of its training images (eval_train_max; "
                "docs/method.md, Evaluation protocol). A baseline near 100 % fits its training "
                "set, as the paper's networks do; running train top-1 is the accuracy during "
                "the last epoch, on augmented batches and with the weights still moving.",
                fit,
            )
        )
    losses = training_loss_table(groups)
    if losses is not None:
        sections.append(
            Section(
                "Training loss at the last epoch (mean ± sample std over seeds)",
                "The total and its parts as the last epoch's train record logs them: loss_ce "
                "(cross-entropy with the labels), loss_reg (the tolerance term, where one is "
                "trained), loss_kd (the teacher term of students with lam > 0); '-' where the "
                "generation's loss has no such part.",
                losses,
            )
        )
    tolerance = tolerance_table(runs)
    if tolerance is not None:
        sections.append(
            Section(
                "The patriarch against eta",
                "Generation 0 of every run, grouped by regulariser and eta (a patriarch "
                "shared by several runs of a seed counts once; the strict patriarch, eta = 1, "
                "starts every curve). For TSD, one-hot stays a local minimum of the teacher "
                "loss exactly when eta >= K/(2K-1) (docs/method.md, Tolerance threshold).",
                tolerance,
            )
        )
    table, notes = per_class_table(groups, examples, shared)
    sections.append(
        Section(
            "Secondary classes of the patriarch, per class",
            "Generation 0 of each process on the test split (first seed). S = the K-1 "
            "highest-scoring classes other than the true one; for each true class, the 3 "
            "classes most often in S: name (images with it in S, share of the class's "
            "images). † = sibling (same coarse class); *siblings in S* = share of all of "
            "the class's secondary slots held by siblings.",
            table,
            f"Left out: {notes}." if notes else "",
        )
    )
    return sections


def _markdown(
    header: list[str], sections: list[Section], figures: Sequence[tuple[str, str]]
) -> str:
    parts = ["# kdgen report", "", *(f"{line}  " for line in header), ""]
    for file, caption in figures:
        parts += [f"![{caption}]({file})", "", f"*{caption}*", ""]
    for section in sections:
        parts += [f"## {section.title}", ""]
        if section.intro:
            parts += [section.intro, ""]
        if section.table is not None:
            parts += [*(f"{note}\n" for note in section.table.notes)]
            parts += [section.table.markdown(), ""]
        if section.outro:
            parts += [section.outro, ""]
    return "\n".join(parts)


def write_report(
    dirs: Sequence[Path],
    out: Path,
    *,
    per_class_examples: int = 6,
    baseline: str = BASELINE,
) -> Path:
    """Write report.md, report.html, accuracy.png and secondary.png into ``out`` from every
    run folder under ``dirs``, paired differences against ``baseline``; return the path of
    report.md.

    Raises :class:`RunDirError` when no ``summary.json`` is found under ``dirs``.
    """
    dirs = [Path(d) for d in dirs]
    out = Path(out)
    runs = find_runs(dirs)
    groups = group_runs(runs, baseline)
    make_folder(out)
    plot_accuracy(groups, out / "accuracy.png", baseline)
    plot_secondary(groups, out / "secondary.png", baseline)
    figures = list(FIGURES)
    if plot_tolerance(runs, out / TOLERANCE_FIGURE[0]) is not None:
        figures.append(TOLERANCE_FIGURE)
    header = _header_lines(dirs, out, runs, groups, baseline)
    sections = _sections(groups, per_class_examples, baseline)
    atomic_write_text(out / "report.html", page(header, figures, sections))
    path = out / "report.md"
    atomic_write_text(path, _markdown(header, sections, figures))
    return path

"""``kdgen report``: tables, paired differences, per-class secondary classes and figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from kdgen.errors import RunDirError
from kdgen.report import (
    METRIC_COLUMNS,
    find_runs,
    format_stat,
    generations_table,
    group_runs,
    paired_differences,
    process_label,
    secondary_class_table,
    summarize,
    write_report,
)
from kdgen.runs import RunFolder

SEEDS = (0, 1, 2)
GENERATIONS = (0, 1, 2)
# Test top-1 by process, seed, generation. Baseline gen 1: 0.71, 0.72, 0.73 -> 72.00 ± 1.00.
TOP1 = {
    "D(1.0,0.0)": {0: [0.70, 0.71, 0.72], 1: [0.70, 0.72, 0.72], 2: [0.70, 0.73, 0.72]},
    # Minus the baseline at gen 1: +2, +3, +5 pp -> mean 3.33, sd 1.53, SE 0.88 (> 2 SE).
    "D(0.6,0.6)": {0: [0.66, 0.73, 0.74], 1: [0.66, 0.75, 0.75], 2: [0.75, 0.78, 0.76]},
}
DIST_C = {"D(1.0,0.0)": 0.30, "D(0.6,0.6)": 0.20}
CLASS_NAMES = ["apple", "pear", "plum", "oak", "pine", "elm"]
COARSE = [0, 0, 0, 1, 1, 1]


def _metrics(top1: float, dist_c: float, prob: float) -> dict[str, Any]:
    return {
        "top1": top1,
        "top5": min(1.0, top1 + 0.2),
        "nll": 1.0,
        "mean_max_prob": prob,
        "entropy": 1.0,
        "dist_c": dist_c,
        "dist_s": 1.0 + dist_c,
    }


def _summary(label: str, seed: int) -> dict[str, Any]:
    eta, lam = (1.0, 0.0) if label == "D(1.0,0.0)" else (0.6, 0.6)
    generations = []
    for g in GENERATIONS:
        top1 = TOP1[label][seed][g]
        dist_c = DIST_C[label] + 0.01 * g + 0.001 * seed
        test = _metrics(top1, dist_c, 0.5 + 0.05 * g)
        generations.append(
            {
                "generation": g,
                "teacher": None if g == 0 else g - 1,
                "epochs": 3,
                "train": {"loss": 0.5, "top1": 0.9 + 0.01 * g},
                "val": test,
                "test": test,
            }
        )
    ensemble = _metrics(0.8, DIST_C[label], 0.6)
    return {
        "name": "fake",
        "process": label,
        "eta": eta,
        "lam": lam,
        "regularizer": "tsd",
        "k": 3,
        "regularizer_form": "convex",
        "regularize_all_teachers": False,
        "temperature": 1.0,
        "model": "tiny_cnn",
        "data": "synthetic",
        "num_classes": 6,
        "seed": seed,
        "config_hash": "0",
        "generations": generations,
        "ensembles": [{"name": "all", "members": [0, 1, 2], "val": ensemble, "test": ensemble}],
    }


def _write_run(path: Path, label: str, seed: int) -> None:
    folder = RunFolder(path)
    path.mkdir(parents=True)
    folder.write_summary(_summary(label, seed))
    (path / "classes.json").write_text(
        json.dumps({"class_names": CLASS_NAMES, "coarse_of_fine": COARSE, "coarse_names": None})
    )
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(12) % 6
    for g in GENERATIONS:
        logits = torch.randn(12, 6, generator=generator)
        folder.save_logits(g, {"val": (logits, labels), "test": (logits, labels)})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    (root / "sweep.json").write_text("{}")
    for label, slug in (("D(1.0,0.0)", "D1.0-0.0"), ("D(0.6,0.6)", "D0.6-0.6")):
        for seed in SEEDS:
            _write_run(root / slug / f"seed{seed}", label, seed)
    return root


@pytest.fixture(scope="module")
def report(sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report([sweep], tmp_path_factory.mktemp("report") / "out")


def _row(markdown: str, *starts: str) -> list[str]:
    """The cells of the first table row whose leading cells are ``starts``."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[: len(starts)] == list(starts):
            return cells
    raise AssertionError(f"no row {starts}")


def test_process_label() -> None:
    base = {"process": "D(0.6,0.6)", "eta": 0.6, "regularizer": "lsr"}
    assert process_label(base) == "D(0.6,0.6):lsr"
    assert process_label({**base, "regularizer": "tsd"}) == "D(0.6,0.6)"
    assert process_label({**base, "process": "D(1.0,0.6)", "eta": 1.0}) == "D(1.0,0.6)"


def test_summarize_uses_sample_std() -> None:
    stat = summarize([0.71, 0.72, None, 0.73])
    assert stat is not None and stat.n == 3
    assert stat.std == pytest.approx(0.01)
    assert format_stat(stat, 100.0, 2) == "72.00 ± 1.00"
    assert format_stat(summarize([0.5]), 1.0, 3) == "0.500"
    assert summarize([None]) is None


def test_runs_are_found_and_grouped(sweep: Path) -> None:
    groups = group_runs(find_runs([sweep]))
    assert list(groups) == ["D(1.0,0.0)", "D(0.6,0.6)"]
    assert [run.seed for run in groups["D(0.6,0.6)"]] == [0, 1, 2]


def test_mean_std_cell_by_hand(report: Path) -> None:
    row = _row(report.read_text(), "D(1.0,0.0)", "1")
    assert row[2] == "3"  # n
    assert row[3] == "72.00 ± 1.00"
    assert row[-1] == "91.00 ± 0.00"  # train top-1


def test_best_values_are_bold(report: Path) -> None:
    text = report.read_text()
    # Highest test top-1: D(0.6,0.6) gen 1, 0.73, 0.75, 0.78 -> 75.33 ± 2.52.
    assert _row(text, "D(0.6,0.6)", "1")[3] == "**75.33 ± 2.52**"
    assert _row(text, "D(0.6,0.6)", "2")[3] == "75.00 ± 1.00"
    # Lowest Dist^C: D(0.6,0.6) gen 0 (0.200, 0.201, 0.202).
    assert _row(text, "D(0.6,0.6)", "0")[5] == "**0.201 ± 0.001**"
    assert not _row(text, "D(1.0,0.0)", "1")[3].startswith("**")
    # No best for the mean top-1 probability and the training accuracy.
    assert "**" not in _row(text, "D(0.6,0.6)", "2")[7]


def test_paired_difference_by_hand(report: Path) -> None:
    diffs = [2.0, 3.0, 5.0]
    mean = sum(diffs) / 3
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2) / math.sqrt(3)
    row = _row(report.read_text().split("## Difference")[1], "D(0.6,0.6)", "1")
    assert row[2] == "3"
    assert row[3] == f"**+{mean:.2f} ± {se:.2f}**"  # |3.33| > 2 * 0.88
    assert row[4] == "**-0.100 ± 0.000**"  # every pair differs by -0.1: SE ~ 0
    assert _row(report.read_text().split("## Difference")[1], "D(0.6,0.6)", "0")[3] == (
        "-1.00 ± 3.00"  # -4, -4, +5 pp: sd sqrt(27), SE 3.00, not marked
    )


def test_ensemble_rows(report: Path) -> None:
    row = _row(report.read_text(), "D(0.6,0.6)", "all [0,1,2]")
    assert row[3] == "**80.00 ± 0.00**"


def test_report_header_and_per_class_view(report: Path, sweep: Path) -> None:
    text = report.read_text()
    assert "6 runs: 2 processes" in text
    assert f"kdgen report {sweep} --out {report.parent}" in text
    assert "synthetic" in text and "tiny_cnn" in text
    per_class = text.split("## Secondary classes")[1]
    assert "0 apple" in per_class and "5 elm" in per_class


def test_files_and_images(report: Path) -> None:
    out = report.parent
    page = (out / "report.html").read_text()
    assert '<img src="accuracy.png"' in page and "<table>" in page and "<strong>" in page
    for name, min_width in (("accuracy.png", 800), ("secondary.png", 1500)):
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            width, height = image.size
        assert image.format == "PNG"
        assert min_width <= width <= 4000 and 300 <= height <= 2000


def test_secondary_class_table_by_hand() -> None:
    logits = torch.tensor(
        [
            [5.0, 4.0, 3.0, 1.0],  # label 0: S = {1, 2}
            [5.0, 1.0, 3.0, 4.0],  # label 0: S = {3, 2}
            [0.0, 4.0, 3.0, 1.0],  # label 0: S = {1, 2} (the true class is never in S)
            [1.0, 2.0, 3.0, 9.0],  # label 3: S = {2, 1}
        ]
    )
    labels = torch.tensor([0, 0, 0, 3])
    rows = secondary_class_table(logits, labels, ["a", "b", "c", "d"], [0, 0, 1, 1], k=3)
    assert [r.index for r in rows] == [0, 3]
    first = rows[0]
    assert first.images == 3
    assert [(s.name, s.count, s.sibling) for s in first.top] == [
        ("c", 3, False),
        ("b", 2, True),
        ("d", 1, False),
    ]
    assert first.top[1].frequency == pytest.approx(2 / 3)
    assert first.sibling_fraction == pytest.approx(2 / 6)
    # Ties go to the lower class index; only classes that occur are listed.
    assert [(s.name, s.count, s.sibling) for s in rows[1].top] == [("b", 1, False), ("c", 1, True)]
    plain = secondary_class_table(logits, labels, ["a", "b", "c", "d"], None, k=3, top=1)
    assert plain[0].top[0].sibling is None and plain[0].sibling_fraction is None
    assert len(plain[0].top) == 1


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="no run folder"):
        write_report([tmp_path], tmp_path / "out")


def test_generations_table_still_works() -> None:
    table = generations_table([_summary("D(0.6,0.6)", 0)])
    assert table.splitlines()[0].startswith("|    process | gen | test top-1")
    assert "| D(0.6,0.6) |   2 |     0.7400 |" in table


def test_pairs_need_the_same_seed(sweep: Path) -> None:
    groups = group_runs(find_runs([sweep]))
    baseline = [run for run in groups["D(1.0,0.0)"] if run.seed != 1]
    column = METRIC_COLUMNS[0]
    diffs = paired_differences(groups["D(0.6,0.6)"], baseline, 1, column)
    assert diffs == pytest.approx([0.02, 0.05])


def test_runs_without_logits_are_noted(tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.mkdir()
    RunFolder(path).write_summary(_summary("D(0.6,0.6)", 0))
    text = write_report([tmp_path], tmp_path / "out", per_class_examples=2).read_text()
    assert "no test logits of generation 0" in text
    assert "Difference from" not in text  # no baseline

"""The report's patriarch-against-eta curve: grouping, deduplication of shared patriarchs,
the threshold K/(2K-1) and 95% t-intervals computed by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kdgen.report import write_report
from kdgen.report.collect import find_runs
from kdgen.report.tolerance import patriarch_curves, threshold, tolerance_table
from kdgen.runs import RunFolder

T_975_2 = 4.302653  # Student t, 97.5% quantile, 2 degrees of freedom (from a printed table)


def _summary(process: str, eta: float, seed: int, prob: float, regularizer: str = "tsd") -> dict:
    test: dict[str, Any] = {
        "top1": 0.80 + 0.01 * seed,
        "top5": 0.99,
        "dist_c": 0.5,
        "dist_s": 1.3,
        "mean_max_prob": prob,
    }
    entry = {"generation": 0, "teacher": None, "epochs": 1, "train": None, "val": None}
    return {
        "process": process,
        "eta": eta,
        "lam": 0.0,
        "regularizer": regularizer,
        "k": 5,
        "regularizer_form": "convex",
        "seed": seed,
        "data": "fake",
        "model": "tiny_cnn",
        "generations": [{**entry, "test": test}],
    }


def _write(root: Path, name: str, summary: dict) -> None:
    path = root / name
    path.mkdir(parents=True)
    RunFolder(path).write_summary(summary)


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    for seed in range(3):
        for eta, prob in ((1.0, 0.9), (0.6, 0.7), (0.5, 0.4)):
            process = f"D({eta},0.0)"
            _write(tmp_path, f"{eta}-{seed}", _summary(process, eta, seed, prob + 0.01 * seed))
        # a born-again run of the same seed shares the strict patriarch: counted once
        _write(tmp_path, f"ban-{seed}", _summary("D(1.0,0.6)", 1.0, seed, 0.9 + 0.01 * seed))
        _write(tmp_path, f"lsr-{seed}", _summary("D(0.6,0.6)", 0.6, seed, 0.5, "lsr"))
    return tmp_path


def test_curves_group_by_regulariser_and_count_a_shared_patriarch_once(runs_dir: Path) -> None:
    curves = patriarch_curves(find_runs([runs_dir]))
    assert list(curves) == ["tsd"]  # lsr has two etas (0.6 and the strict 1.0): no curve
    assert list(curves["tsd"]) == [1.0, 0.6, 0.5]
    assert [len(members) for members in curves["tsd"].values()] == [3, 3, 3]


def test_table_gives_the_threshold_side_and_hand_computed_intervals(runs_dir: Path) -> None:
    assert threshold(5) == pytest.approx(5 / 9)
    table = tolerance_table(find_runs([runs_dir]))
    assert table is not None
    by_eta = {row[1]: row for row in table.rows}
    assert [by_eta[eta][2] for eta in ("1", "0.6", "0.5")] == [">=", ">=", "<"]
    # mean top-1 prob at eta 0.5: 0.40, 0.41, 0.42 -> mean 0.41, sample std 0.01
    half = T_975_2 * 0.01 / 3**0.5
    assert by_eta["0.5"][4] == f"0.410 [{0.41 - half:.3f}, {0.41 + half:.3f}]"
    assert by_eta["0.5"][3] == "3"


def test_the_report_draws_the_curve_only_when_there_is_one(runs_dir: Path, tmp_path: Path) -> None:
    text = write_report([runs_dir], tmp_path / "out").read_text()
    assert "## The patriarch against eta" in text and (tmp_path / "out" / "tolerance.png").exists()
    only_two = tmp_path / "two"
    for seed in range(2):
        _write(only_two, f"a{seed}", _summary("D(1.0,0.0)", 1.0, seed, 0.9))
        _write(only_two, f"b{seed}", _summary("D(0.6,0.0)", 0.6, seed, 0.7))
    text = write_report([only_two], tmp_path / "out2").read_text()
    assert "The patriarch against eta" not in text
    assert not (tmp_path / "out2" / "tolerance.png").exists()


def test_no_regulariser_below_eta_1_is_its_own_curve_not_the_strict_patriarch(
    runs_dir: Path,
) -> None:
    """regularizer=none with eta < 1 trains eta * CE (docs/method.md, "Tolerance
    regularisers"): policy.patriarch_loss_key keeps it apart from the strict patriarch,
    even when its folders are found first."""
    for seed in range(3):
        for eta in (0.6, 0.5):
            summary = _summary(f"D({eta},0.0)", eta, seed, 0.2, regularizer="none")
            _write(runs_dir, f"a-none-{eta}-{seed}", summary)
    curves = patriarch_curves(find_runs([runs_dir]))
    assert list(curves) == ["none", "tsd"]
    assert list(curves["none"]) == [1.0, 0.6, 0.5]
    for curve in curves.values():
        strict = [run.generation(0)["test"]["mean_max_prob"] for run in curve[1.0]]
        assert strict == pytest.approx([0.90, 0.91, 0.92])

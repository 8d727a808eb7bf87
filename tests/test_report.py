"""``kdgen report``: tables, paired differences, per-class secondary classes and figures."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from kdgen.cli import main
from kdgen.config import Config
from kdgen.errors import RunDirError
from kdgen.generations import train_generations
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
    t_interval,
    write_report,
)
from kdgen.report.collect import shared_patriarchs
from kdgen.report.secondary import secondary_sets
from kdgen.runs import RunFolder

SEEDS = (0, 1, 2)
GENERATIONS = (0, 1, 2)
# Test top-1 by process, seed, generation. Baseline gen 1: 0.71, 0.72, 0.73 -> 72.00 ± 1.00.
TOP1 = {
    "D(1.0,0.0)": {0: [0.70, 0.71, 0.72], 1: [0.70, 0.72, 0.72], 2: [0.70, 0.73, 0.72]},
    # Minus the baseline: gen 0 -4, -4, +5 pp; gen 1 +1, +2, +3 pp; gen 2 +3, +6, +4 pp.
    "D(0.6,0.6)": {0: [0.66, 0.72, 0.75], 1: [0.66, 0.74, 0.78], 2: [0.75, 0.76, 0.76]},
    # Generation 0 is the baseline's patriarch, loaded; then -1 pp on every seed.
    "D(1.0,0.6)": {0: [0.70, 0.70, 0.71], 1: [0.70, 0.71, 0.71], 2: [0.70, 0.72, 0.71]},
}
DIST_C = {"D(1.0,0.0)": 0.30, "D(0.6,0.6)": 0.20, "D(1.0,0.6)": 0.30}
ETA_LAM = {"D(1.0,0.0)": (1.0, 0.0), "D(0.6,0.6)": (0.6, 0.6), "D(1.0,0.6)": (1.0, 0.6)}
SLUGS = {"D(1.0,0.0)": "D1.0-0.0", "D(0.6,0.6)": "D0.6-0.6", "D(1.0,0.6)": "D1.0-0.6"}
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


def _loss_parts(eta: float, lam: float, generation: int, seed: int) -> dict[str, float]:
    """Loss components of a train record: CE always, the tolerance term for a tolerant
    patriarch, the teacher term for students with lam > 0."""
    parts = {"loss_ce": 0.4 + 0.01 * seed}
    if generation == 0 and eta < 1.0:
        parts["loss_reg"] = 0.2
    if generation > 0 and lam > 0:
        parts["loss_kd"] = 0.1 * generation
    return parts


def _summary(label: str, seed: int) -> dict[str, Any]:
    eta, lam = ETA_LAM[label]
    generations = []
    for g in GENERATIONS:
        top1 = TOP1[label][seed][g]
        dist_c = DIST_C[label] + 0.01 * g + 0.001 * seed
        prob = 0.5 + 0.05 * g - (0.01 if label == "D(1.0,0.6)" and g > 0 else 0.0)
        test = _metrics(top1, dist_c, prob)
        generations.append(
            {
                "generation": g,
                "teacher": None if g == 0 else g - 1,
                "epochs": 3,
                "train": {"loss": 0.5, "top1": 0.9 + 0.01 * g, **_loss_parts(eta, lam, g, seed)},
                "val": test,
                "test": test,
                "train_eval": {"top1": 0.97 + 0.01 * seed, "nll": 0.1 * g, "mean_max_prob": 0.9},
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
        "config_hash": f"{SLUGS[label]}-{seed}",
        "generations": generations,
        "ensembles": [{"name": "all", "members": [0, 1, 2], "val": ensemble, "test": ensemble}],
    }


def _record(source: str, config_hash: str) -> dict[str, Any]:
    """A summary's record of a patriarch loaded from ``source`` (kdgen.provenance)."""
    return {"source": source, "config_hash": config_hash, "sha256": "ab" * 32, "seeding": 2}


def _write_run(path: Path, label: str, seed: int) -> None:
    folder = RunFolder(path)
    path.mkdir(parents=True)
    summary = _summary(label, seed)
    if label == "D(1.0,0.6)" and seed == 0:  # the other seeds share it without saying so
        source = str(path.parent.parent / SLUGS["D(1.0,0.0)"] / "seed0")
        summary["patriarch"] = _record(source, "D1.0-0.0-0")
    folder.write_summary(summary)
    folder.log({"generation": 0, "epoch": 1, "split": "test", "top1": 0.5})
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
    for label, slug in SLUGS.items():
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
    tsd = {**base, "regularizer": "tsd"}
    assert process_label({**tsd, "snapshot": {"cycles": 3}}) == "D(0.6,0.6) snapshot×3"
    assert process_label({**tsd, "auto": {"max_generations": 3}}) == "D(0.6,0.6) auto"


def test_summarize_uses_sample_std() -> None:
    stat = summarize([0.71, 0.72, None, 0.73])
    assert stat is not None and stat.n == 3
    assert stat.std == pytest.approx(0.01)
    assert format_stat(stat, 100.0, 2) == "72.00 ± 1.00"
    assert format_stat(summarize([0.5]), 1.0, 3) == "0.500"
    assert summarize([None]) is None


def test_runs_are_found_and_grouped(sweep: Path) -> None:
    groups = group_runs(find_runs([sweep]))
    assert list(groups) == ["D(1.0,0.0)", "D(1.0,0.6)", "D(0.6,0.6)"]
    assert [run.seed for run in groups["D(0.6,0.6)"]] == [0, 1, 2]


def test_mean_std_cell_by_hand(report: Path) -> None:
    text = report.read_text()
    assert "mean ± sample standard deviation (ddof = 1)" in text.split("## Difference")[0]
    row = _row(text, "D(1.0,0.0)", "1")
    assert row[2] == "3"  # n
    assert row[3] == "72.00 ± 1.00"
    assert row[-1] == "91.00 ± 0.00"  # train top-1


def test_best_values_are_bold(report: Path) -> None:
    text = report.read_text()
    # Highest test top-1: D(0.6,0.6) gen 2, 0.75, 0.78, 0.76 -> 76.33 ± 1.53.
    assert _row(text, "D(0.6,0.6)", "2")[3] == "**76.33 ± 1.53**"
    assert _row(text, "D(0.6,0.6)", "1")[3] == "74.00 ± 2.00"
    # Lowest Dist^C: D(0.6,0.6) gen 0 (0.200, 0.201, 0.202).
    assert _row(text, "D(0.6,0.6)", "0")[5] == "**0.201 ± 0.001**"
    assert not _row(text, "D(1.0,0.0)", "1")[3].startswith("**")
    # No best for the mean top-1 probability and the training accuracy.
    assert "**" not in _row(text, "D(0.6,0.6)", "2")[7]


T_975_2 = 4.302653  # Student t quantile 0.975 with 2 degrees of freedom, from a table


def _differences(report: Path | str) -> str:
    """The per-generation differences section of a report (its path or its text)."""
    text = report.read_text() if isinstance(report, Path) else report
    return text.split("## Difference")[1].split("## ")[0]


def test_paired_difference_interval_by_hand(report: Path) -> None:
    text = _differences(report)
    assert "95% t-interval (Student t, n − 1 degrees of freedom)" in text
    assert "called real only where its interval excludes 0" in text
    # Gen 1: +1, +2, +3 pp: mean 2, sd 1, half-width t * 1 / sqrt(3) = 2.484: not real.
    half = T_975_2 * 1.0 / math.sqrt(3)
    row = _row(text, "D(0.6,0.6)", "1")
    assert row[2:6] == ["3", "+2.00", f"[{2 - half:+.2f}, {2 + half:+.2f}]", "no"]
    assert row[5] == "no" and row[4] == "[-0.48, +4.48]"
    # Gen 2: +3, +6, +4 pp: mean 4.33, sd 1.528, half-width 3.795: the interval excludes 0.
    diffs = [3.0, 6.0, 4.0]
    mean = sum(diffs) / 3
    half = T_975_2 * math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2) / math.sqrt(3)
    row = _row(text, "D(0.6,0.6)", "2")
    assert row[3:6] == [f"**+{mean:.2f}**", f"[{mean - half:+.2f}, {mean + half:+.2f}]", "yes"]
    assert row[4] == "[+0.54, +8.13]"
    # Dist^C: -0.1 on every seed, no spread: a zero-width interval, which excludes 0.
    assert row[6:9] == ["**-0.100**", "[-0.100, -0.100]", "yes"]
    # Gen 0: -4, -4, +5 pp: sd sqrt(27), half-width t * 3 = 12.91.
    assert _row(text, "D(0.6,0.6)", "0")[3:6] == ["-1.00", "[-13.91, +11.91]", "no"]


def _section(report: Path, title: str) -> str:
    return report.read_text().split(f"## {title}")[1].split("## ")[0]


def test_noise_floor_by_hand(report: Path) -> None:
    """D(1.0,0.0)'s generations are independent runs: their paired differences are the
    noise floor. Top-1 by seed, gens 0-2: .70 .71 .72 / .70 .72 .72 / .70 .73 .72."""
    text = _section(report, "Noise floor")
    half = T_975_2 * 1.0 / math.sqrt(3)  # sample std 1 pp, n = 3
    # gen 1 - gen 0: +1, +2, +3 pp; Dist^C +0.010 on every seed (0.01 per generation)
    assert _row(text, "D(1.0,0.0)", "1 − 0")[2:9] == [
        "3",
        "+2.00",
        f"[{2 - half:+.2f}, {2 + half:+.2f}]",
        "no",
        "**+0.010**",
        "[+0.010, +0.010]",
        "yes",
    ]
    # gen 2 - gen 1: +1, 0, -1 pp; gen 2 - gen 0: +2 pp on every seed
    assert _row(text, "D(1.0,0.0)", "2 − 1")[3:6] == ["+0.00", "[-2.48, +2.48]", "no"]
    assert _row(text, "D(1.0,0.0)", "2 − 0")[3:6] == ["**+2.00**", "[+2.00, +2.00]", "yes"]
    # Processes with a teacher (lam > 0) or a tolerant patriarch are not a noise floor.
    assert "| D(1.0,0.6)" not in text and "| D(0.6,0.6)" not in text
    # 3 rows x 2 metrics; 4 intervals exclude 0 (the Dist^C ones and 2 - 0's top-1).
    assert (
        "This table holds 6 intervals (n ≥ 2), of which 4 exclude 0. If nothing differed, "
        "about 0.05 × 6 = 0.3 of them would exclude 0 by chance." in text
    )
    assert "about 0.05 × m are expected to exclude 0 when nothing differs" in text


def test_generation_steps_by_hand(report: Path) -> None:
    text = _section(report, "Generation to generation")
    # D(0.6,0.6) top-1 by seed, gens 0-2: .66 .72 .75 / .66 .74 .78 / .75 .76 .76
    for step, diffs in (("1 − 0", [6.0, 8.0, 1.0]), ("2 − 1", [3.0, 4.0, 0.0])):
        mean = sum(diffs) / 3
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
        half = T_975_2 * sd / math.sqrt(3)
        assert _row(text, "D(0.6,0.6)", step)[2:6] == [
            "3",
            f"{mean:+.2f}",
            f"[{mean - half:+.2f}, {mean + half:+.2f}]",
            "no",
        ]
    # Every process has its steps, the baseline included; 3 processes x 2 steps x 2 metrics.
    assert _row(text, "D(1.0,0.6)", "1 − 0")[3] == "+1.00"  # 0, +1, +2 pp
    assert _row(text, "D(1.0,0.0)", "2 − 1")[3] == "+0.00"
    assert "This table holds 12 intervals (n ≥ 2)" in text
    page = (report.parent / "report.html").read_text()
    assert "<h2>Noise floor" in page and "<h2>Generation to generation" in page


def test_t_interval_matches_scipy_and_hand() -> None:
    interval = t_interval([1.0, 2.0, 3.0])
    assert interval is not None and interval.n == 3 and interval.mean == pytest.approx(2.0)
    assert interval.high - interval.mean == pytest.approx(T_975_2 / math.sqrt(3), abs=1e-6)
    assert interval.excludes_zero is False
    assert t_interval([1.0, 1.1, 1.2]).excludes_zero is True
    assert t_interval([-1.0, -1.1, -1.2]).excludes_zero is True
    assert t_interval([]) is None


def test_one_pair_gives_no_interval_and_no_claim(tmp_path: Path) -> None:
    for label, seeds in (("D(1.0,0.0)", (0, 1)), ("D(0.6,0.6)", (0,))):
        for seed in seeds:
            path = tmp_path / SLUGS[label] / f"seed{seed}"
            path.mkdir(parents=True)
            RunFolder(path).write_summary(_summary(label, seed))
    single = t_interval([0.04])
    assert single is not None and single.low is None and single.excludes_zero is None
    report = write_report([tmp_path], tmp_path / "out")
    row = _row(_differences(report), "D(0.6,0.6)", "2")
    assert row[2:9] == ["1", "+3.00", "none (n = 1)", "-", "-0.100", "none (n = 1)", "-"]
    assert "**" not in _differences(report)


def test_shared_patriarch_is_not_evidence(report: Path, sweep: Path) -> None:
    text = report.read_text()
    row = _row(_differences(report), "D(1.0,0.6)", "0")
    assert row[2] == "-" and row[3] == "shared with D(1.0,0.0)"
    assert set(row[4:]) == {"-", "shared with D(1.0,0.0)"}
    # Its students are new models: -1 pp on every seed.
    assert _row(_differences(report), "D(1.0,0.6)", "1")[3:6] == [
        "**-1.00**",
        "[-1.00, -1.00]",
        "yes",
    ]
    assert "D(1.0,0.6) generation 0 is the patriarch of D(1.0,0.0) loaded" in text
    # Recorded in the summary (seed 0) or, in summaries without the record, inferred from
    # identical metrics (seeds 1, 2), and the report says which.
    shared = shared_patriarchs(group_runs(find_runs([sweep])))
    assert shared == {("D(1.0,0.6)", seed): "D(1.0,0.0)" for seed in SEEDS}
    assert "(seeds 1, 2: inferred from equal generation-0 test metrics or config.yaml" in text
    per_class = text.split("## Secondary classes")[1]
    assert "| D(1.0,0.6)" not in per_class and "patriarch shared with D(1.0,0.0)" in per_class


def test_sharing_is_read_from_the_patriarch_record(tmp_path: Path) -> None:
    """Equal generation-0 metrics are no evidence of sharing where the summaries record
    where generation 0 came from (two strict patriarchs trained alike give equal metrics);
    a record names the run that trained the patriarch, along a chain of loads."""
    runs = {
        label: {**_summary(label, 0), "patriarch": None} for label in ("D(1.0,0.0)", "D(1.0,0.6)")
    }
    chained = {**runs["D(1.0,0.6)"], "process": "D(1.0,0.3)", "lam": 0.3}
    chained["config_hash"] = "D1.0-0.3-0"
    chained["patriarch"] = _record("elsewhere/D1.0-0.6/seed0", "D1.0-0.6-0")
    runs["D(1.0,0.3)"] = chained
    assert (
        runs["D(1.0,0.6)"]["generations"][0]["test"] == runs["D(1.0,0.0)"]["generations"][0]["test"]
    )

    def report() -> dict[tuple[str, int], str]:
        for label, summary in runs.items():
            path = tmp_path / "runs" / label / "seed0"
            path.mkdir(parents=True, exist_ok=True)
            RunFolder(path).write_summary(summary)
        return shared_patriarchs(group_runs(find_runs([tmp_path / "runs"])))

    assert report() == {("D(1.0,0.3)", 0): "D(1.0,0.6)"}
    runs["D(1.0,0.6)"]["patriarch"] = _record("elsewhere/D1.0-0.0/seed0", "D1.0-0.0-0")
    assert report() == {("D(1.0,0.6)", 0): "D(1.0,0.0)", ("D(1.0,0.3)", 0): "D(1.0,0.0)"}
    text = write_report([tmp_path / "runs"], tmp_path / "out").read_text()
    assert "D(1.0,0.6) generation 0 is the patriarch of D(1.0,0.0) loaded" in text
    assert "inferred" not in text


def test_training_loss_parts(report: Path) -> None:
    losses = report.read_text().split("## Training loss")[1].split("## ")[0]
    assert _row(losses, "process")[3:] == ["loss", "loss_ce", "loss_reg", "loss_kd"]
    # loss_ce 0.40, 0.41, 0.42 over the seeds; no tolerance or teacher term in the baseline.
    assert _row(losses, "D(1.0,0.0)", "1")[2:] == [
        "3",
        "0.5000 ± 0.0000",
        "0.4100 ± 0.0100",
        "-",
        "-",
    ]
    assert _row(losses, "D(0.6,0.6)", "0")[5:] == ["0.2000 ± 0.0000", "-"]
    assert _row(losses, "D(0.6,0.6)", "2")[5:] == ["-", "0.2000 ± 0.0000"]


def test_fit_to_the_training_images(report: Path) -> None:
    fit = report.read_text().split("## Fit to the training images")[1].split("## ")[0]
    assert _row(fit, "process")[3:5] == ["clean train top-1 (%)", "clean train NLL"]
    # Clean train top-1 0.97, 0.98, 0.99 over seeds 0-2; NLL 0.1 * generation on every seed;
    # running train top-1 0.9 + 0.01 * generation.
    assert _row(fit, "D(1.0,0.0)", "2")[2:6] == [
        "3",
        "98.00 ± 1.00",
        "0.2000 ± 0.0000",
        "92.00 ± 0.00",
    ]


def test_runs_without_train_eval_have_no_fit_section(tmp_path: Path) -> None:
    summary = _summary("D(1.0,0.0)", 0)
    for entry in summary["generations"]:
        del entry["train_eval"]
    (tmp_path / "run").mkdir()
    RunFolder(tmp_path / "run").write_summary(summary)
    text = write_report([tmp_path], tmp_path / "out").read_text()
    assert "## Fit to the training images" not in text


def test_ensemble_rows(report: Path) -> None:
    row = _row(report.read_text(), "D(0.6,0.6)", "all [0,1,2]")
    assert row[3] == "**80.00 ± 0.00**"
    # Every ensemble scores the same 0.8: a difference of exactly 0, never called real.
    ensembles = report.read_text().split("## Ensembles: difference")[1]
    assert _row(ensembles, "D(0.6,0.6)", "all [0,1,2]")[2:6] == [
        "3",
        "+0.00",
        "[+0.00, +0.00]",
        "no",
    ]


def test_report_header_and_per_class_view(report: Path, sweep: Path) -> None:
    text = report.read_text()
    assert "9 runs: 3 processes" in text
    assert f"kdgen report {sweep} --out {report.parent}" in text
    assert "Baseline of the paired differences: D(1.0,0.0)." in text
    assert "synthetic" in text and "tiny_cnn" in text
    per_class = text.split("## Secondary classes")[1]
    assert "0 apple" in per_class and "5 elm" in per_class


def test_files_and_images(report: Path) -> None:
    out = report.parent
    page = (out / "report.html").read_text()
    assert '<img src="accuracy.png"' in page and "<table>" in page and "<strong>" in page
    assert "95% t-interval of the mean" in page  # the figures say which spread they draw
    for name, min_width in (("accuracy.png", 800), ("secondary.png", 1500)):
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            width, height = image.size
        assert image.format == "PNG"
        assert min_width <= width <= 4000 and 300 <= height <= 2000


def test_report_from_summaries_alone(report: Path, sweep: Path, tmp_path: Path) -> None:
    """Committed results hold summary.json and metrics.jsonl only: every table is rebuilt,
    the per-class view is left out with a note."""
    for summary in sweep.rglob("summary.json"):
        target = tmp_path / "runs" / summary.parent.relative_to(sweep)
        target.mkdir(parents=True)
        for name in ("summary.json", "metrics.jsonl"):
            shutil.copy(summary.parent / name, target / name)
    out = write_report([tmp_path / "runs"], tmp_path / "out")
    text, full = out.read_text(), report.read_text()
    for section in ("## Per generation", "## Difference", "## Ensembles"):
        assert text.split(section)[1].split("## ")[0] == full.split(section)[1].split("## ")[0]
    assert "no test logits of generation 0 (logits/gen0.pt) for D(1.0,0.0)" in text
    assert (tmp_path / "out" / "accuracy.png").is_file()
    assert (tmp_path / "out" / "secondary.png").is_file()


def test_baseline_is_configurable(sweep: Path, tmp_path: Path) -> None:
    assert main(["report", str(sweep), "--out", str(tmp_path), "--baseline", "D(0.6,0.6)"]) == 0
    text = _differences(tmp_path / "report.md")
    assert "minus D(0.6,0.6)" in text
    assert _row(text, "D(1.0,0.0)", "1")[3:6] == ["-2.00", "[-4.48, +0.48]", "no"]
    assert "--baseline 'D(0.6,0.6)'" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_val_size_zero_runs_report(fast_config: Callable[..., Config], tmp_path: Path) -> None:
    """The paper presets train on the whole training set: no validation split anywhere,
    and a patriarch shared through ``patriarch=``."""
    strict = train_generations(
        fast_config("process=D(1.0,0.0)", "data.val_size=0", "schedule.epochs=1", out="s")
    )
    shared = train_generations(
        fast_config(
            "process=D(1.0,0.6)",
            "data.val_size=0",
            "schedule.epochs=1",
            f"patriarch={strict.path}",
            out="t",
        )
    )
    for result in (strict, shared):
        assert all(entry["val"] is None for entry in result.summary["generations"])
        assert set(RunFolder(result.path).load_logits(0)) == {"test", "train_eval"}
    text = write_report([strict.path, shared.path], tmp_path / "out").read_text()
    assert _row(_differences(text), "D(1.0,0.6)", "0")[3] == "shared with D(1.0,0.0)"
    assert _row(text, "D(1.0,0.6)", "1")[2] == "1"  # n = 1: its mean alone
    assert "none (n = 1)" in _row(_differences(text), "D(1.0,0.6)", "1")


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
    assert "| D(0.6,0.6) |   2 |     0.7500 |" in table


def test_pairs_need_the_same_seed(sweep: Path) -> None:
    groups = group_runs(find_runs([sweep]))
    baseline = [run for run in groups["D(1.0,0.0)"] if run.seed != 1]
    column = METRIC_COLUMNS[0]
    diffs = paired_differences(groups["D(0.6,0.6)"], baseline, 1, column)
    assert diffs == pytest.approx([0.01, 0.03])


def test_secondary_sets_keep_wide_logits_wide() -> None:
    """Saved logits of any dtype are read at float32 or wider, never rounded down: 1e-12
    apart is a tie in float32 (lower index first) but not in float64."""
    logits = torch.tensor([[5.0, 1.0, 1.0 + 1e-12, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0])
    assert secondary_sets(logits, labels, k=2).tolist() == [[2]]
    assert secondary_sets(logits.float(), labels, k=2).tolist() == [[1]]
    assert secondary_sets(logits.half(), labels, k=2).tolist() == [[1]]


def test_runs_without_logits_are_noted(tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.mkdir()
    summary = _summary("D(0.6,0.6)", 0)
    for entry in summary["generations"]:  # a run from before the loss was logged in parts
        entry["train"] = {"loss": 0.5, "top1": 0.9}
    RunFolder(path).write_summary(summary)
    text = write_report([tmp_path], tmp_path / "out", per_class_examples=2).read_text()
    assert "no test logits of generation 0" in text
    assert "Difference from" not in text  # no baseline
    assert "## Training loss" not in text


def _snapshot_summary(seed: int) -> dict[str, Any]:
    """D(0.6,0.6) as one training of 3 snapshot cycles; its last cycle ends at test top-1
    0.73, 0.75, 0.74 on seeds 0-2 (the baseline's generation 0: 0.70 on each)."""
    summary = _summary("D(0.6,0.6)", seed)
    summary["snapshot"] = {"cycles": 3, "temperature": 2.0, "cycle_epochs": [1, 1, 1]}
    for entry in summary["generations"]:
        entry["stage"] = "cycle"
    summary["generations"][2]["test"] = _metrics([0.73, 0.75, 0.74][seed], 0.25, 0.6)
    return summary


def _auto_summary(seed: int) -> dict[str, Any]:
    """D(0.6,0.6) under generations=auto: the grid's generations, seed 2 stopped after 1."""
    summary = _summary("D(0.6,0.6)", seed)
    summary["auto"] = {"metric": "val_top1", "min_delta": 0.0, "patience": 1, "max_generations": 2}
    summary["generations"] = summary["generations"][: 2 if seed == 2 else 3]
    best = summary["generations"][-1]
    summary["chosen"] = {
        "generation": best["generation"],
        "stage": "generation",
        "metric": "val_top1",
        "value": best["val"]["top1"],
        "test": best["test"],
        "ensemble": None,
        "reason": "the best val_top1",
    }
    return summary


def test_snapshot_and_auto_runs_are_processes_of_their_own(sweep: Path, tmp_path: Path) -> None:
    root = tmp_path / "study"
    shutil.copytree(sweep, root / "grid")
    for seed in SEEDS:
        for kind, summary in (("snapshot", _snapshot_summary(seed)), ("auto", _auto_summary(seed))):
            path = root / kind / f"seed{seed}"
            path.mkdir(parents=True)
            RunFolder(path).write_summary(summary)
    groups = group_runs(find_runs([root]))
    assert [len(groups[label]) for label in ("D(0.6,0.6)", "D(0.6,0.6) snapshot×3")] == [3, 3]
    assert [run.seed for run in groups["D(0.6,0.6) auto"]] == [0, 1, 2]

    text = write_report([root], tmp_path / "out").read_text()
    # Snapshot cycles pair with the baseline's one training, generation 0: +3, +5, +4 pp.
    half = T_975_2 * 1.0 / math.sqrt(3)
    row = _row(_differences(text), "D(0.6,0.6) snapshot×3", "c2 vs 0")
    assert row[2:6] == ["3", "**+4.00**", f"[{4 - half:+.2f}, {4 + half:+.2f}]", "yes"]
    assert _row(text, "D(0.6,0.6) snapshot×3", "c2")[3] == "74.00 ± 1.00"
    ensembles = text.split("## Ensembles: difference")[1].split("## ")[0]
    assert "snapshot×3" not in ensembles  # 3 snapshots are not 3 generations
    # An auto run pairs by seed and generation; seed 2 has no generation 2.
    assert _row(_differences(text), "D(0.6,0.6) auto", "2")[2] == "2"
    assert _row(text, "D(0.6,0.6) auto", "single (2,2,1)")[3:5] == ["3", "**76.33 ± 1.53**"]

    # Against a snapshot baseline, a run of generations pairs with its last cycle.
    assert main(["report", str(root), "--out", str(tmp_path / "b"), "--baseline",
                 "D(0.6,0.6) snapshot×3"]) == 0  # fmt: skip
    text = _differences(tmp_path / "b" / "report.md")
    assert _row(text, "D(1.0,0.0)", "0 vs c2")[3] == "**-4.00**"
    assert _row(text, "D(1.0,0.0)", "2 vs c2")[2] == "3"

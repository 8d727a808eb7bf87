"""kdgen sweep: the plan, paired patriarchs, resumable execution; and saved ensembles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdgen.cli import main
from kdgen.config import build_config
from kdgen.errors import ConfigError
from kdgen.generations import train_generations
from kdgen.metrics import classification_metrics, ensemble_members, ensemble_metrics
from kdgen.report import write_report
from kdgen.runs import RunFolder
from kdgen.sweep import parse_spec, plan_sweep, write_plan
from tests.conftest import FAST


def test_parse_spec() -> None:
    assert parse_spec("D(0.6,0.6)") == ("D(0.6,0.6)", None)
    assert parse_spec("D(0.6, 0.6):lsr") == ("D(0.6,0.6)", "lsr")
    for bad in ("D(0.6)", "E(1,2)", "D(0.6,0.6):xyz", "D(0.6,0.6)lsr"):
        with pytest.raises(ConfigError):
            parse_spec(bad)


def test_plan_pairs_patriarchs_within_a_seed(tmp_path: Path) -> None:
    specs = ["D(1.0,0.0)", "D(1.0,0.6)", "D(0.6,0.6)", "D(0.7,0.6)", "D(0.6,0.5)", "D(0.6,0.6):cp"]
    runs = plan_sweep("smoke", specs, [0, 1], tmp_path)
    assert len(runs) == 12
    by_key = {(r.label, r.seed): r for r in runs}
    assert by_key["D(1.0,0.6)", 0].shares_patriarch_of == by_key["D(1.0,0.0)", 0].path
    assert by_key["D(1.0,0.6)", 1].shares_patriarch_of == by_key["D(1.0,0.0)", 1].path
    assert by_key["D(0.6,0.5)", 0].shares_patriarch_of == by_key["D(0.6,0.6)", 0].path
    for own in ("D(1.0,0.0)", "D(0.6,0.6)", "D(0.7,0.6)", "D(0.6,0.6):cp"):
        assert by_key[own, 0].shares_patriarch_of is None
    assert "regularizer=cp" in by_key["D(0.6,0.6):cp", 0].overrides
    assert len({r.path for r in runs}) == 12


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--processes", "D(1.0,0.0)", "--jobs", "0"], "--jobs 0 must be at least 1"),
        (
            ["--processes", "D(1.0,0.0)", "D(0.6,0.6)", "D(1,0)"],
            "'D(1.0,0.0)' and 'D(1,0)' are the same process (D(1.0,0.0))",
        ),
        (
            ["--processes", "D(0.6,0.6):tsd", "D(0.6, 0.6)"],
            "'D(0.6,0.6):tsd' and 'D(0.6, 0.6)' are the same process",
        ),
        (["eta=0.9", "--processes", "D(0.6,0.6)"], "sets eta=0.6, but eta=0.9 is given too"),
    ],
)
def test_a_sweep_that_would_ignore_a_setting_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = main(["sweep", "smoke", *argv, "--print", "--out", str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_a_warning_is_one_line_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["schedule.scheduler=multistep", "schedule.milestones=[3,9]"]
    code = main(["sweep", "smoke", *argv, "--processes", "D(1.0,0.0)", "--print"])
    err = capsys.readouterr().err
    assert code == 0
    assert err == (
        "kdgen: warning: schedule.milestones=[3, 9]: 9 lies at or past schedule.epochs=6, "
        "so the lr never decays there; lower them or raise the epochs\n"
    )


def test_sweep_print_emits_one_command_per_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "sweep",
            "smoke",
            "--processes",
            "D(1.0,0.0)",
            "D(1.0,0.6)",
            "--seeds",
            "0",
            "1",
            "2",
            "--print",
            "--out",
            str(tmp_path),
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 6
    assert all(line.startswith("kdgen train smoke") for line in lines)
    assert sum("patriarch=" in line for line in lines) == 3


@pytest.mark.slow
def test_the_planned_runs_share_the_patriarch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each planned run trained as its own config says (the executors run the same
    overrides as ``kdgen train``); skipping finished runs is the executors' (test_executors).
    What a study commits of each run (summary, metrics, config.yaml, run.json) names the
    patriarch by the path the sweep gave, no machine's folder, and gives the report its
    sharing from the record."""
    monkeypatch.chdir(tmp_path)
    out = Path("sweep")  # relative, as a study committed to a repository is swept
    runs = plan_sweep("smoke", ["D(1.0,0.0)", "D(1.0,0.6)"], [0], out, (*FAST, "generations=1"))
    write_plan(out, "smoke", runs)
    strict, born_again = (
        train_generations(build_config("smoke", [*run.overrides, f"out_dir={run.path}"])).summary
        for run in runs  # in plan order: the patriarch's owner first
    )
    assert born_again["generations"][0]["test"] == strict["generations"][0]["test"]
    assert born_again["generations"][0]["train"] == strict["generations"][0]["train"]
    assert not any(r["generation"] == 0 for r in RunFolder(runs[1].path).read_metrics())
    plan = json.loads((out / "sweep.json").read_text())
    assert [r["label"] for r in plan["runs"]] == ["D(1.0,0.0)", "D(1.0,0.6)"]
    assert f"patriarch={runs[0].path}" in plan["runs"][1]["command"]
    assert born_again["patriarch"]["source"] == runs[0].path == "sweep/D1.0-0.0/seed0"
    assert born_again["patriarch"]["config_hash"] == strict["config_hash"]
    committed = tmp_path / "committed"
    for run in runs:
        target = committed / Path(run.path).relative_to(out)
        target.mkdir(parents=True)
        for name in ("summary.json", "metrics.jsonl", "config.yaml", "run.json"):
            text = (Path(run.path) / name).read_text()
            assert str(tmp_path) not in text, name
            (target / name).write_text(text)
    report = write_report([committed], tmp_path / "report").read_text()
    assert "D(1.0,0.6) generation 0 is the patriarch of D(1.0,0.0) loaded" in report
    assert "inferred" not in report


def test_ensemble_members() -> None:
    assert ensemble_members(0) == {}
    assert ensemble_members(1) == {"all": [0, 1]}
    assert ensemble_members(2) == {"all": [0, 1, 2], "last2": [1, 2]}
    assert ensemble_members(4) == {"all": [0, 1, 2, 3, 4], "last2": [3, 4], "last3": [2, 3, 4]}


def test_ensemble_averages_probabilities_not_logits() -> None:
    a = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([1, 1])
    metrics = ensemble_metrics([a, b], labels)
    probs = (torch.softmax(a, 1) + torch.softmax(b, 1)) / 2
    assert metrics["mean_max_prob"] == pytest.approx(probs.max(1).values.mean().item())
    assert metrics["top1"] == 0.5  # image 0: class 0 wins on average probability
    assert metrics == classification_metrics(probs.log(), labels)


@pytest.mark.slow
def test_run_saves_logits_and_ensembles(fast_config) -> None:  # type: ignore[no-untyped-def]
    result = train_generations(fast_config("generations=2"))
    folder = RunFolder(result.path)
    saved = [folder.load_logits(g) for g in range(3)]
    for generation in saved:
        logits, labels = generation["test"]
        assert logits.dtype == torch.float32 and logits.shape == (200, 100)
        assert labels.dtype == torch.int64
    names = [e["name"] for e in result.summary["ensembles"]]
    assert names == ["all", "last2"]
    everyone = result.summary["ensembles"][0]
    expected = ensemble_metrics(
        [s["test"][0] for s in saved],
        saved[0]["test"][1],
        torch.tensor(json.loads((result.path / "classes.json").read_text())["coarse_of_fine"]),
    )
    assert everyone["members"] == [0, 1, 2]
    assert everyone["test"] == expected

"""The command line: subcommands, one-line errors with exit status 2, eval from checkpoints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kdgen.cli import main
from kdgen.config import build_config, to_yaml
from kdgen.errors import one_line
from kdgen.runs import RunFolder
from tests.conftest import FAST


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_presets_and_models_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "presets")
    assert code == 0
    assert "smoke" in out and "demo" in out and "cifar100-resnet56" in out
    code, out, _ = _run(capsys, "models")
    assert code == 0 and "resnet56" in out.split() and "tv:<name>" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "smok"], "did you mean: smoke"),
        (["train", "smoke", "eta=1.5"], "eta=1.5 must lie in (0, 1]"),
        (["train", "smoke", "lam=abc"], "lam"),
        (["train", "smoke", "data.colour=red"], "data.colour"),
        (["train", "smoke", "process=E(1,2)"], "D(eta,lam)"),
        (["train", "smoke", "model=resnet21"], "did you mean"),
        (["train", "smoke", "k=1"], "k=1 must be >= 2"),
        (["train", "smoke", "schedule.epochs=0"], "schedule.epochs=0"),
        (["train", "smoke", "data.name=cifar100", "data.root=/nonexistent/kdgen"], "cifar"),
        (["train", "--resume", "/nonexistent/kdgen-run"], "holds no run"),
        (["eval", "/nonexistent/kdgen-run"], "holds no run"),
        (["status", "/nonexistent/kdgen-run"], "holds no run"),
    ],
)
def test_bad_input_is_one_line_with_exit_status_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    argv = (
        [*argv, f"out_dir={tmp_path / 'run'}"]
        if argv[0] == "train" and "--resume" not in argv
        else argv
    )
    code, _, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kdgen: error:")
    assert message in lines[0]
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from kdgen.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "train", "smoke", "eta=2", f"out_dir={tmp_path}"])


@pytest.mark.slow
def test_train_then_eval_recomputes_the_same_test_metrics(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    code, out, _ = _run(capsys, "train", "smoke", *FAST, "--out", str(run))
    assert code == 0 and "D(0.6,0.6)" in out and str(run) in out
    code, out, _ = _run(capsys, "eval", str(run), "--device", "cpu")
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    evaluated = json.loads((run / "eval.json").read_text())
    for trained, recomputed in zip(summary["generations"], evaluated["generations"], strict=True):
        for key, value in trained["test"].items():
            assert recomputed["test"][key] == pytest.approx(value, abs=1e-6), key

    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, _, err = _run(capsys, "train", "smoke", *FAST, "--out", str(run))
    assert code == 2 and "--force-new" in err
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    code, out, _ = _run(capsys, "status", str(run))
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["process", "seed", "state", "generation", "epoch", "test", "top-1"]
    top1 = f"{summary['generations'][-1]['test']['top1']:.4f}"
    assert row.split() == ["D(0.6,0.6)", "0", "finished", "1", "2", top1]


@pytest.mark.slow
def test_eval_rejects_a_checkpoint_of_another_architecture(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert main(["train", "smoke", *FAST, "generations=0", "--out", str(run)]) == 0
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("model: tiny_cnn", "model: resnet8"))
    code, _, err = _run(capsys, "eval", str(run), "--device", "cpu")
    assert code == 2 and "tiny_cnn" in err and "resnet8" in err


@pytest.mark.slow
def test_python_dash_m_kdgen_works() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "kdgen", "train", "smoke", "eta=7"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip() == "kdgen: error: eta=7.0 must lie in (0, 1]"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "smoke", "--out", "runs/x", "seed=5"], {"config": "smoke", "out": "runs/x"}),
        (["train", "smoke", "lam=0.1", "--out", "runs/x", "seed=5"], {"config": "smoke"}),
        (["--debug", "train", "--out", "runs/x", "smoke", "seed=5"], {"debug": True}),
        (["demo", "--out", "d", "seed=5"], {"out": "d"}),
        (
            ["sweep", "smoke", "--jobs", "2", "seed=5", "--processes", "D(1.0,0.0)"],
            {"jobs": 2, "processes": ["D(1.0,0.0)"]},
        ),
    ],
)
def test_overrides_may_come_after_options(argv: list[str], expected: dict[str, object]) -> None:
    from kdgen.cli import build_parser, parse_arguments

    args = parse_arguments(build_parser(), argv)
    assert args.overrides[-1] == "seed=5"
    assert {key: getattr(args, key) for key in expected} == expected


def test_unknown_options_are_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "smoke", "--out", "runs/x", "seed=5", "--bogus"])
    assert exit_info.value.code == 2 and "--bogus" in capsys.readouterr().err


def test_one_line_folds_a_multi_line_message() -> None:
    error = ValueError("while parsing a block\n  in line 2:\texpected ':'\n\n")
    assert one_line(error) == "while parsing a block in line 2: expected ':'"


def test_status_of_a_failed_run_is_a_row_and_its_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = RunFolder(tmp_path)
    folder.write_text(folder.config_path, to_yaml(build_config("smoke", ["regularizer=lsr"])))
    folder.write_state("failed", generation=1, epoch=3, reason="NumericalError: diverged")
    code, out, _ = _run(capsys, "status", str(tmp_path))
    assert code == 0
    assert out.splitlines() == [
        "process         seed  state   generation  epoch  test top-1",
        "D(0.6,0.6):lsr  0     failed  1           3      -",
        "D(0.6,0.6):lsr seed 0: NumericalError: diverged",
    ]


def test_dry_run_checks_and_describes_the_run_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    argv = ["train", "smoke", *FAST, "generations=1", "--dry-run", "--out", str(run)]
    code, out, _ = _run(capsys, *argv, "generation_schedules={0: {epochs: 3}}")
    assert code == 0 and not run.exists()
    config_text = out[: out.index("\nwould train")]
    assert "generations: 1" in config_text and f"out_dir: {run}" in config_text
    lines = out[out.index("would train") :].splitlines()
    assert lines[0] == (
        "would train M_0 ... M_1 of tiny_cnn (30,196 parameters) on synthetic (100 classes, "
        "3 channels), 14 steps an epoch of 50 images"
    )
    assert lines[1] == (
        "  generation 0: 3 epochs, lr 0.1 (cosine), patriarch loss: eta=0.6, regularizer=tsd, "
        "k=5, regularizer_form=convex"
    )
    assert lines[2] == (
        "  generation 1: 2 epochs, lr 0.1 (cosine), student loss: lam=0.6, temperature=1.0"
    )
    assert lines[-1] == f"run folder: {run} (new); nothing was written (--dry-run)"
    code, _, err = _run(capsys, *argv, "model=ResNet20")
    assert code == 2 and "did you mean: resnet20" in err and not run.exists()


def test_config_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "config", "smoke", "seed=3", "process=D(0.7,0.6)")
    assert code == 0
    assert out == to_yaml(build_config("smoke", ["seed=3", "process=D(0.7,0.6)"]))
    assert "seed: 3" in out.splitlines() and "eta: 0.7" in out.splitlines()


@pytest.mark.slow
def test_a_second_writer_of_a_run_folder_gets_one_line_naming_the_first(tmp_path: Path) -> None:
    """This process holds the run folder, as a training would; ``kdgen train --resume`` of
    the same folder is refused in one line that names this process, and changes nothing."""
    run = tmp_path / "run"
    config = build_config("smoke", [*FAST, "generations=0", f"out_dir={run}"])
    folder = RunFolder(run)
    folder.write_text(folder.config_path, to_yaml(config))
    folder.write_state("interrupted")
    folder.open(config, resume=True)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "kdgen", "train", "--resume", str(run)],
            capture_output=True,
            text=True,
            check=False,
        )
        after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    finally:
        folder.close()
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    holder = f"kdgen pid {os.getpid()} on host {socket.gethostname()}"
    errors = [line for line in completed.stderr.splitlines() if line.startswith("kdgen: error")]
    assert errors == [
        f"kdgen: error: {run} is being written by {holder}; wait for that run to end or stop "
        f"it, then resume with: kdgen train --resume {run}"
    ]
    assert after == before

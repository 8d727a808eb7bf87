"""Snapshot distillation: one training split into cycles, each cycle's last snapshot frozen
to teach the next (docs/method.md, "Snapshot distillation")."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from kdgen import generations, preemption
from kdgen.cli import main
from kdgen.config import Config, build_config, config_hash, cycle_epochs
from kdgen.evaluation import evaluate_run
from kdgen.export import export_run, load_exported
from kdgen.generations import RunResult, train_generations
from kdgen.policy import plan_stages
from kdgen.preemption import TrainingStopped
from kdgen.report import write_report
from kdgen.runs import RunFolder, load_checkpoint
from kdgen.sweep import SweepRun, plan_sweep, sweep_status, write_plan
from tests.conftest import FAST, refusal

# 300 training images in batches of 50: 6 steps an epoch; 2 cycles of 2 epochs.
SNAPSHOT = (
    "data.synthetic.train_per_class=4",
    "generations=0",
    "snapshot.cycles=2",
    "schedule.epochs=4",
)


def test_plan_of_a_snapshot_run() -> None:
    config = build_config("smoke", ["generations=0", "snapshot.cycles=3", "schedule.epochs=6"])
    stages = plan_stages(config)
    assert [(s.index, s.kind, s.carries_on, s.teacher) for s in stages] == [
        (0, "cycle", False, None),
        (1, "cycle", True, 0),
        (2, "cycle", True, 1),
    ]
    assert [s.schedule.epochs for s in stages] == [2, 2, 2]  # 6 epochs in all, not 18
    assert {(s.schedule.scheduler, s.schedule.lr) for s in stages} == {("cosine", 0.1)}
    assert [s.teaches for s in stages] == [True, True, False]
    # Cycle 0 has the patriarch's loss (D(0.6,0.6): tolerant), the others the student loss
    # at snapshot.temperature.
    assert stages[0].loss.settings == {
        "generation_role": "patriarch",
        "eta": 0.6,
        "regularizer": "tsd",
        "k": 5,
        "regularizer_form": "convex",
    }
    assert stages[2].loss.settings == {"generation_role": "student", "lam": 0.6, "temperature": 2.0}
    logits, teacher_logits, targets = torch.randn(4, 10), torch.randn(4, 10), torch.arange(4)
    assert "loss_kd" not in stages[0].loss(logits, targets, None)
    kd = stages[1].loss(logits, targets, teacher_logits)["loss_kd"]
    p_teacher = torch.softmax(teacher_logits / 2, dim=1)
    by_hand = 4 * (p_teacher * (p_teacher.log() - torch.log_softmax(logits / 2, dim=1))).sum(1)
    assert torch.allclose(kd, by_hand.mean())


def test_snapshot_ensembles_without_a_teacher_and_uneven_cycles() -> None:
    config = build_config(
        "smoke",
        ["process=D(1.0,0.0)", "generations=0", "snapshot.cycles=3", "schedule.epochs=8"],
    )
    assert [s.teacher for s in plan_stages(config)] == [None, None, None]
    assert not any(s.teaches for s in plan_stages(config))
    assert cycle_epochs(config) == [3, 3, 2]
    config = build_config(
        "smoke",
        [
            "generations=0",
            "snapshot.cycles=3",
            "snapshot.first_cycle_epochs=4",
            "schedule.epochs=8",
            "schedule.warmup_epochs=1",
        ],
    )
    stages = plan_stages(config)
    assert [s.schedule.epochs for s in stages] == [4, 2, 2]
    assert [s.schedule.warmup_epochs for s in stages] == [1, 0, 0]


def test_snapshot_keys_keep_every_existing_config_hash() -> None:
    # Measured with main's code before the snapshot keys existed.
    assert config_hash(build_config("smoke")) == "94cf9fa67c46d1fd"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["snapshot.cycles=3", "generations=2"], ["snapshot.cycles=3", "generations=2"]),
        (["snapshot.cycles=4", "generations=0", "schedule.epochs=3"], ["schedule.epochs=3"]),
        (
            ["snapshot.cycles=3", "generations=0", "snapshot.first_cycle_epochs=5"],
            ["snapshot.first_cycle_epochs=5", "schedule.epochs=6"],
        ),
        (
            ["snapshot.cycles=3", "generations=0", "schedule.epochs=3", "schedule.warmup_epochs=1"],
            ["schedule.warmup_epochs=1"],
        ),
        (["snapshot.cycles=1", "generations=0"], ["snapshot.cycles=1"]),
        (["snapshot.cycles=2", "generations=0", "patriarch=runs/x"], ["patriarch"]),
        (["snapshot.cycles=2", "generations=0", "temperature=3"], ["temperature=3.0"]),
        (
            ["snapshot.cycles=2", "generations=0", "generation_schedules={0: {epochs: 3}}"],
            ["generation_schedules"],
        ),
        (
            ["snapshot.cycles=2", "generations=0", "schedule.scheduler=multistep"],
            ["schedule.scheduler='multistep'"],
        ),
        (["snapshot.temperature=3"], ["snapshot.temperature", "snapshot.cycles"]),
    ],
)
def test_combinations_that_make_no_sense_are_refused(
    overrides: list[str], named: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = refusal(capsys, *overrides)
    assert all(key in err for key in named), err


def _spy_on_stages(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record what every stage starts from: its weights, its optimiser state, its teacher
    (and whether the teacher changed while it taught)."""
    calls: list[dict[str, Any]] = []
    real = generations.train_generation

    def spy(model, *args, teacher=None, generation=0, optimizer_state=None, **kwargs):  # type: ignore[no-untyped-def]
        call = {
            "generation": generation,
            "start": {k: v.clone() for k, v in model.state_dict().items()},
            "carried_optimizer": optimizer_state is not None,
            "teacher": None,
        }
        if teacher is not None:
            call["teacher"] = {k: v.clone() for k, v in teacher.state_dict().items()}
            call["teacher_frozen"] = not teacher.training and not any(
                p.requires_grad for p in teacher.parameters()
            )
            call["teacher_is_student"] = teacher is model or any(
                p.data_ptr() == q.data_ptr()
                for p in teacher.parameters()
                for q in model.parameters()
            )
        calls.append(call)
        result = real(
            model,
            *args,
            teacher=teacher,
            generation=generation,
            optimizer_state=optimizer_state,
            **kwargs,
        )
        if teacher is not None:
            call["teacher_unchanged"] = all(
                torch.equal(v, teacher.state_dict()[k]) for k, v in call["teacher"].items()
            )
        return result

    monkeypatch.setattr(generations, "train_generation", spy)
    return calls


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, list[dict[str, Any]]]:
    """An uninterrupted snapshot run, and what each of its stages started from."""
    out = tmp_path_factory.mktemp("snapshot") / "ref"
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = _spy_on_stages(monkeypatch)
        result = train_generations(build_config("smoke", [*FAST, *SNAPSHOT, f"out_dir={out}"]))
    return result, calls


@pytest.mark.slow
def test_a_snapshot_run_trains_its_cycles_each_taught_by_the_last_snapshot(
    reference: tuple[RunResult, list[dict[str, Any]]],
) -> None:
    result, calls = reference
    folder = RunFolder(result.path)
    gen0 = load_checkpoint(folder.generation_checkpoint(0))["model"]
    # Cycle 1 carries on cycle 0's final weights and optimiser state, and learns from a
    # frozen copy of them that does not change while it teaches.
    assert [c["generation"] for c in calls] == [0, 1]
    assert [c["carried_optimizer"] for c in calls] == [False, True]
    assert calls[0]["teacher"] is None
    for name, value in gen0.items():
        assert torch.equal(calls[1]["start"][name], value), name
        assert torch.equal(calls[1]["teacher"][name], value), name
    assert calls[1]["teacher_frozen"] and not calls[1]["teacher_is_student"]
    assert calls[1]["teacher_unchanged"]

    summary = json.loads(folder.summary_path.read_text())
    assert summary["snapshot"] == {"cycles": 2, "temperature": 2.0, "cycle_epochs": [2, 2]}
    entries = summary["generations"]
    assert [(e["generation"], e["stage"], e["teacher"], e["epochs"]) for e in entries] == [
        (0, "cycle", None, 2),
        (1, "cycle", 0, 2),
    ]
    assert all(e["test"]["top1"] is not None for e in entries)
    assert [e["members"] for e in summary["ensembles"]] == [[0, 1]]  # a snapshot ensemble
    # The chooser picks among snapshots on validation, as among generations.
    val = [e["val"]["top1"] for e in entries]
    assert summary["chosen"]["stage"] == "cycle"
    assert summary["chosen"]["generation"] == val.index(max(val))
    assert summary["chosen"]["reason"].endswith("of cycles 0-1")
    train = [r for r in folder.read_metrics() if r["split"] == "train"]
    assert [(r["generation"], r["epoch"]) for r in train] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert [("loss_kd" in r) for r in train] == [False, False, True, True]
    # The lr restarts at its peak in every cycle and anneals to about 0 by the cycle's end.
    # (lr is logged at an epoch's end: half-way, then the end of each 2-epoch cycle.)
    assert train[0]["lr"] == train[2]["lr"] == pytest.approx(0.05)
    assert max(train[1]["lr"], train[3]["lr"]) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("polls", "where"),
    [
        (16, (1, 1, 3)),  # inside cycle 1's first epoch, after its 3rd step
        (13, (1, 0, 0)),  # between cycles 0 and 1: cycle 1 carries on the saved end of 0
    ],
)
def test_stop_inside_or_between_cycles_then_resume_matches_an_uninterrupted_run(
    fast_config: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
    reference: tuple[RunResult, list[dict[str, Any]]],
    polls: int,
    where: tuple[int, int, int],
) -> None:
    calls = {"n": 0}

    def stop_at_poll() -> bool:
        calls["n"] += 1
        return calls["n"] >= polls

    monkeypatch.setattr(preemption, "stop_requested", stop_at_poll)
    with pytest.raises(TrainingStopped) as stopped:
        train_generations(fast_config(*SNAPSHOT, out="run"))
    monkeypatch.undo()
    assert (stopped.value.generation, stopped.value.epoch, stopped.value.step) == where
    resumed = train_generations(fast_config(*SNAPSHOT, out="run"), resume=True)
    assert resumed.summary == reference[0].summary
    assert (resumed.path / "summary.json").read_bytes() == (
        reference[0].path / "summary.json"
    ).read_bytes()


@pytest.mark.slow
def test_eval_export_report_and_status_understand_cycles(
    reference: tuple[RunResult, list[dict[str, Any]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    result, _ = reference
    summary = result.summary
    evaluated = evaluate_run(result.path, device="cpu")
    assert [(e["generation"], e["stage"]) for e in evaluated["generations"]] == [
        (0, "cycle"),
        (1, "cycle"),
    ]
    assert [e["test"] for e in evaluated["generations"]] == [
        e["test"] for e in summary["generations"]
    ]
    exported = export_run(result.path, tmp_path / "export")
    assert [load_exported(path)[1]["stage"] for path in exported] == ["cycle", "cycle"]

    report = write_report([result.path], tmp_path / "report").read_text()
    assert re.search(r"\| D\(0\.6,0\.6\) snapshot×2 \| +c1 \|", report)
    assert "Chosen on validation" in report

    assert main(["status", str(result.path)]) == 0
    assert re.search(r"\bfinished +cycle 1 +2 ", capsys.readouterr().out)
    sweep = tmp_path / "sweep"
    write_plan(sweep, "smoke", [SweepRun("D(0.6,0.6)", 0, str(result.path), SNAPSHOT, None)])
    (row,) = sweep_status(sweep)
    assert (row["state"], row["generation"], row["epoch"]) == ("finished", "cycle 1", 2)


def test_a_snapshot_sweep_shares_no_patriarch(tmp_path: Path) -> None:
    specs = ["D(1.0,0.0)", "D(1.0,0.6)"]
    assert plan_sweep("smoke", specs, [0], tmp_path)[1].shares_patriarch_of is not None
    runs = plan_sweep("smoke", specs, [0], tmp_path, overrides=SNAPSHOT)
    assert [run.shares_patriarch_of for run in runs] == [None, None]

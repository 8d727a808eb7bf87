"""Training in generations end to end: run folder, summary, frozen teachers, resume."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from kdgen import engine, generations, losses
from kdgen.config import Config, build_config
from kdgen.errors import CheckpointError, RunDirError
from kdgen.generations import train_generations
from kdgen.policy import make_loss
from kdgen.runs import RunFolder, load_checkpoint

SPLIT_KEYS = {"top1", "top5", "nll", "mean_max_prob", "entropy", "dist_c", "dist_s"}


@pytest.mark.slow
def test_run_folder_and_summary(fast_config: Callable[..., Config]) -> None:
    config = fast_config("generations=2", "tensorboard=true")
    result = train_generations(config)
    folder = RunFolder(result.path)
    assert (folder.checkpoints / "gen0.pt").exists()
    assert (folder.checkpoints / "gen2.pt").exists()
    assert folder.last_checkpoint.exists()
    assert list((result.path / "tb").iterdir()), "no TensorBoard events written"
    saved = yaml.safe_load(folder.config_path.read_text())
    assert saved["eta"] == 0.6 and saved["lam"] == 0.6 and saved["process"] == "D(0.6,0.6)"

    summary = json.loads(folder.summary_path.read_text())
    assert summary == result.summary
    assert (summary["eta"], summary["lam"], summary["regularizer"], summary["k"]) == (
        0.6,
        0.6,
        "tsd",
        5,
    )
    assert summary["process"] == "D(0.6,0.6)"
    assert [g["generation"] for g in summary["generations"]] == [0, 1, 2]
    for entry in summary["generations"]:
        for split in ("val", "test"):
            assert set(entry[split]) == SPLIT_KEYS
            assert 0 <= entry[split]["top1"] <= entry[split]["top5"] <= 1
            assert entry[split]["dist_c"] is not None
            assert 1 <= entry[split]["dist_s"] <= 2

    records = [json.loads(line) for line in folder.metrics_path.read_text().splitlines()]
    assert {(r["generation"], r["split"]) for r in records} == {
        (g, s) for g in range(3) for s in ("train", "val", "test", "train_eval")
    }
    assert all(r["epoch"] in (1, 2) for r in records)
    assert (result.path / "metrics.csv").read_text().startswith("generation,epoch,split")
    assert folder.read_state()["status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_config_and_seed_give_the_same_metrics(
    fast_config: Callable[..., Config], precision: str
) -> None:
    first = train_generations(fast_config(f"precision={precision}", out="a"))
    second = train_generations(fast_config(f"precision={precision}", out="b"))
    assert first.summary == second.summary
    assert first.summary["precision"] == precision
    third = train_generations(fast_config(f"precision={precision}", "seed=1", out="c"))
    assert third.summary["generations"] != first.summary["generations"]


@pytest.mark.slow
def test_teacher_is_a_frozen_copy_of_the_previous_generation(
    fast_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict] = []
    real = engine.train_generation

    def spy(model, *args, teacher=None, generation=0, **kwargs):  # type: ignore[no-untyped-def]
        if teacher is not None:
            calls.append(
                {
                    "is_student": teacher is model,
                    "shares_storage": any(
                        p.data_ptr() == q.data_ptr()
                        for p in teacher.parameters()
                        for q in model.parameters()
                    ),
                    "requires_grad": any(p.requires_grad for p in teacher.parameters()),
                    "training": teacher.training,
                    "state": {k: v.clone() for k, v in teacher.state_dict().items()},
                    "generation": generation,
                }
            )
        result = real(model, *args, teacher=teacher, generation=generation, **kwargs)
        if teacher is not None:
            calls[-1]["unchanged"] = all(
                torch.equal(v, teacher.state_dict()[k]) for k, v in calls[-1]["state"].items()
            )
        return result

    monkeypatch.setattr(generations, "train_generation", spy)
    result = train_generations(fast_config("generations=2"))
    assert [c["generation"] for c in calls] == [1, 2]
    for call in calls:
        assert not call["is_student"] and not call["shares_storage"]
        assert not call["requires_grad"] and not call["training"]
        assert call["unchanged"], "the teacher's weights changed while it taught"
        previous = load_checkpoint(result.path / "checkpoints" / f"gen{call['generation'] - 1}.pt")
        for name, value in previous["model"].items():
            assert torch.equal(call["state"][name], value), name


def test_regulariser_applies_to_the_patriarch_only_by_default() -> None:
    config = build_config("smoke", ["generations=2"])
    logits, teacher_logits = torch.randn(6, 10), torch.randn(6, 10)
    targets = torch.arange(6)
    ce = torch.nn.functional.cross_entropy(logits, targets)
    tolerant = 0.6 * ce + 0.4 * losses.tsd(logits, 5)
    kd = losses.student_loss(logits, teacher_logits, targets, 1.0)
    assert torch.allclose(make_loss(config, 0)(logits, targets, None)["loss"], tolerant)
    student = make_loss(config, 1)(logits, targets, teacher_logits)["loss"]
    assert torch.allclose(student, 0.4 * ce + 0.6 * kd)
    config.regularize_all_teachers = True
    assert torch.allclose(
        make_loss(config, 1)(logits, targets, teacher_logits)["loss"], 0.4 * tolerant + 0.6 * kd
    )
    # The last generation teaches nobody: no regulariser even then.
    assert torch.allclose(
        make_loss(config, 2)(logits, targets, teacher_logits)["loss"], 0.4 * ce + 0.6 * kd
    )


@pytest.mark.slow
def test_refuses_a_folder_with_results_and_force_new_writes_beside_it(
    fast_config: Callable[..., Config],
) -> None:
    first = train_generations(fast_config("generations=0"))
    before = (first.path / "summary.json").read_bytes()
    with pytest.raises(RunDirError, match="--resume"):
        train_generations(fast_config("generations=0"))
    assert (first.path / "summary.json").read_bytes() == before
    second = train_generations(fast_config("generations=0"), force_new=True)
    assert second.path == first.path.with_name(first.path.name + "-1")
    assert (first.path / "summary.json").read_bytes() == before


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resume_continues_and_matches_an_uninterrupted_run(
    fast_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = train_generations(fast_config("generations=2", "schedule.epochs=3", out="ref"))
    saves = {"count": 0}
    real_save = generations.RunHooks.save_state

    def crash_after_five(self, state):  # type: ignore[no-untyped-def]
        real_save(self, state)
        saves["count"] += 1
        if saves["count"] == 5:  # generation 1, epoch 2 of 3
            raise _Interrupt

    monkeypatch.setattr(generations.RunHooks, "save_state", crash_after_five)
    with pytest.raises(_Interrupt):
        train_generations(fast_config("generations=2", "schedule.epochs=3", out="run"))
    monkeypatch.undo()
    folder = RunFolder(Path(reference.path).with_name("run"))
    assert folder.read_state()["status"] == "failed"
    gen0 = folder.generation_checkpoint(0).read_bytes()

    resumed = train_generations(
        fast_config("generations=2", "schedule.epochs=3", out="run"), resume=True
    )
    assert folder.generation_checkpoint(0).read_bytes() == gen0, "generation 0 was retrained"
    assert resumed.summary["generations"] == reference.summary["generations"]
    records = folder.read_metrics()
    keys = [(r["generation"], r["epoch"], r["split"]) for r in records]
    assert len(keys) == len(set(keys)), "resume duplicated metric records"
    assert len(keys) == len(RunFolder(reference.path).read_metrics())


@pytest.mark.slow
def test_resume_refuses_another_config(fast_config: Callable[..., Config]) -> None:
    train_generations(fast_config("generations=0"))
    with pytest.raises(RunDirError, match="eta"):
        train_generations(fast_config("generations=0", "process=D(0.7,0.6)"), resume=True)


@pytest.mark.slow
def test_shared_patriarch_gives_the_same_patriarch_metrics(
    fast_config: Callable[..., Config],
) -> None:
    strict = train_generations(fast_config("process=D(1.0,0.0)", out="strict"))
    shared = train_generations(
        fast_config("process=D(1.0,0.6)", f"patriarch={strict.path}", out="shared")
    )
    own = train_generations(fast_config("process=D(1.0,0.6)", out="own"))
    assert shared.summary["generations"][0]["test"] == strict.summary["generations"][0]["test"]
    for generation in (0, 1):
        assert (
            own.summary["generations"][generation]["test"]
            == shared.summary["generations"][generation]["test"]
        )
    with pytest.raises(CheckpointError, match="does not match"):
        train_generations(fast_config("process=D(0.6,0.6)", f"patriarch={strict.path}", out="x"))

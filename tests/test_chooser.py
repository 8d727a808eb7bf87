"""Choosing on validation and generations=auto (docs/method.md, "Choosing on validation"):
every choice follows the validation split, never the test split."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from kdgen.chooser import choose, stops_before
from kdgen.config import Config, build_config, config_hash
from kdgen.generations import train_generations
from kdgen.policy import plan_stages
from tests.conftest import refusal


def _entry(generation: int, val_top1: float, test_top1: float, val_nll: float = 1.0) -> dict:
    return {
        "generation": generation,
        "stage": "generation",
        "val": {"top1": val_top1, "nll": val_nll},
        "test": {"top1": test_top1, "nll": 9.0},
    }


# Validation and test disagree everywhere: test prefers generation 0 and the ensemble "all".
ENTRIES = [_entry(0, 0.50, 0.90, 2.0), _entry(1, 0.70, 0.40, 1.5), _entry(2, 0.60, 0.80, 1.2)]
ENSEMBLES = [
    {
        "name": "all",
        "members": [0, 1, 2],
        "val": {"top1": 0.65, "nll": 1.1},
        "test": {"top1": 0.95},
    },
    {"name": "last2", "members": [1, 2], "val": {"top1": 0.72, "nll": 1.3}, "test": {"top1": 0.10}},
]


def test_the_choice_follows_validation_not_test() -> None:
    chosen = choose(build_config("smoke", ["generations=2"]), ENTRIES[::-1], ENSEMBLES)
    assert chosen is not None
    assert (chosen["generation"], chosen["metric"], chosen["value"]) == (1, "val_top1", 0.70)
    assert chosen["test"] == {"top1": 0.40, "nll": 9.0}  # reported, not chosen on
    assert chosen["ensemble"] == {
        "name": "last2",
        "members": [1, 2],
        "value": 0.72,
        "test": {"top1": 0.10},
    }
    assert chosen["reason"] == "generation 1 has the best val_top1 of generations 0-2"


def test_val_nll_is_lower_is_better() -> None:
    chosen = choose(build_config("smoke", ["auto.metric=val_nll"]), ENTRIES, ENSEMBLES)
    assert chosen is not None
    assert (chosen["generation"], chosen["value"]) == (2, 1.2)
    assert chosen["ensemble"]["name"] == "all"


def test_an_improvement_must_exceed_min_delta() -> None:
    entries = [_entry(0, 0.500, 0.1), _entry(1, 0.505, 0.9), _entry(2, 0.520, 0.2)]
    config = build_config("smoke", ["auto.min_delta=0.01"])
    chosen = choose(config, entries, [])
    assert chosen is not None and chosen["generation"] == 2 and chosen["ensemble"] is None
    config = build_config("smoke", ["auto.min_delta=0.05"])
    assert choose(config, entries, [])["generation"] == 0  # type: ignore[index]


def test_no_validation_split_no_choice() -> None:
    entries = [{"generation": 0, "val": None, "test": {"top1": 0.5}}]
    assert choose(build_config("smoke"), entries, []) is None


def test_auto_stops_after_patience_generations_fail_to_improve() -> None:
    config = build_config("smoke", ["generations=auto", "auto.patience=2"])
    entries = [_entry(0, 0.5, 0), _entry(1, 0.6, 0), _entry(2, 0.6, 0), _entry(3, 0.55, 0)]
    assert [stops_before(config, entries, index) for index in range(5)] == [
        False,  # nothing trained yet
        False,
        False,  # generation 1 improved
        False,  # generation 2 tied: 1 in a row failed
        True,  # generation 3 too: 2 in a row
    ]
    assert not stops_before(build_config("smoke", ["generations=3"]), entries, 4)
    chosen = choose(config, entries, [])
    assert chosen is not None and chosen["generation"] == 1
    assert chosen["reason"].startswith("generations=auto stopped after generation 3: 2 in a row")


def test_auto_plans_up_to_max_generations_and_keeps_hashes() -> None:
    config = build_config("smoke", ["generations=auto", "auto.max_generations=3"])
    assert [stage.index for stage in plan_stages(config)] == [0, 1, 2, 3]
    # Measured with main's code before generations could be auto.
    assert config_hash(build_config("smoke", ["generations=3"])) == "148c39b9919a02b7"
    assert config_hash(build_config("smoke", ["generations='3'"])) == "148c39b9919a02b7"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["generations=auto", "data.val_size=0"], ["generations=auto", "data.val_size=0"]),
        (["auto.metric=test_top1"], ["auto.metric='test_top1'"]),
        (["generations=auto", "auto.patience=0"], ["auto.patience=0"]),
        (["generations=auto", "auto.max_generations=0"], ["auto.max_generations=0"]),
        (["auto.min_delta=-0.1"], ["auto.min_delta=-0.1"]),
        (["generations=3", "auto.patience=2"], ["auto.patience=2", "generations=3"]),
        (["generations=some"], ["generations='some'"]),
        (["generations=auto", "snapshot.cycles=3"], ["generations=auto", "snapshot.cycles=3"]),
        (
            ["generations=auto", "auto.max_generations=2", "generation_schedules={3: {epochs: 1}}"],
            ["generation_schedules key 3"],
        ),
    ],
)
def test_auto_refusals(
    overrides: list[str], named: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = refusal(capsys, *overrides)
    assert all(key in err for key in named), err


@pytest.mark.slow
def test_auto_run_stops_on_validation_and_records_its_choice(
    fast_config: Callable[..., Config],
) -> None:
    # No generation can improve top-1 by more than 1: generation 1 fails, the run stops.
    config = fast_config(
        "generations=auto", "auto.min_delta=1.0", "data.synthetic.train_per_class=4"
    )
    result = train_generations(config)
    summary: dict[str, Any] = json.loads((result.path / "summary.json").read_text())
    assert [e["generation"] for e in summary["generations"]] == [0, 1]
    assert summary["auto"] == {
        "metric": "val_top1",
        "min_delta": 1.0,
        "patience": 1,
        "max_generations": 5,
    }
    chosen = summary["chosen"]
    assert chosen["generation"] == 0 and chosen["value"] == summary["generations"][0]["val"]["top1"]
    assert chosen["ensemble"]["name"] == "all"
    assert "stopped after generation 1" in chosen["reason"]
    state = json.loads((result.path / "run.json").read_text())
    assert (state["status"], state["generation"]) == ("finished", 1)

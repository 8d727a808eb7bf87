"""Tests of kdgen.config: presets, overrides, process names, validation, schedules, hashing."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdgen.config import (
    Config,
    ScheduleConfig,
    build_config,
    config_diff,
    config_from_dict,
    config_from_yaml,
    config_hash,
    flatten_config,
    format_process,
    list_presets,
    parse_process,
    preset_description,
    process_slug,
    schedule_for,
    to_dict,
    to_yaml,
    validate,
)
from kdgen.errors import ConfigError, KdgenWarning
from tests.helpers import SMOKE_CONFIG_HASH

# ---------------------------------------------------------------------------- presets


def test_presets_are_listed() -> None:
    presets = list_presets()
    assert {"smoke", "demo", "cifar100-resnet20"} <= set(presets)
    assert presets == sorted(presets)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_builds(name: str) -> None:
    config = build_config(name)
    assert isinstance(config, Config)
    assert config.name == name
    assert config.process == format_process(config.eta, config.lam)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_description_is_a_whole_sentence(name: str) -> None:
    description = preset_description(name)
    assert description.endswith(".") and description.count("(") == description.count(")")


def test_a_description_over_several_comment_lines_ends_at_its_first_sentence() -> None:
    assert preset_description("fashion-mnist-study") == (
        "Fashion-MNIST study (docs/results/fashion-mnist): tiny CNN, 6k-image subset "
        "(5k train, 1k val), 15 epochs cosine, fp32."
    )


PRESET_HASHES = {
    "cifar100-densenet-bc-100": "f956db7b9542010a",
    "cifar100-densenet-bc-190": "9757701333f59206",
    "cifar100-resnet110": "0f7207ecbae7ea4c",
    "cifar100-resnet20": "fd4eb6236f2fcbed",
    "cifar100-resnet56": "fc5f5d95716ed9da",
    "cifar100-wrn-28-10": "170973f56356aac7",
    "demo": "126e1675f85bd3c5",
    "fashion-mnist-resnet8": "d9f79597a0d39961",
    "fashion-mnist-small": "a357309687af20b9",
    "fashion-mnist-study": "ece3ffa6b2dec228",
    "imagenet-resnet18": "5907227939a291b3",
    "smoke": "94cf9fa67c46d1fd",
}


def test_later_keys_at_their_defaults_keep_every_presets_hash() -> None:
    # The hashes of the shipped presets before the optimiser, fp16, accumulation and EMA
    # keys and the null imagefolder workers: old run folders stay resumable.
    assert {name: config_hash(build_config(name)) for name in list_presets()} == PRESET_HASHES
    folder = build_config("smoke", ["data.name=imagefolder", "data.root=/data"])
    assert config_hash(folder) == "a3063ca42eb22324"


def test_smoke_preset_values() -> None:
    config = build_config("smoke")
    assert config.model == "tiny_cnn"
    assert config.generations == 1
    assert (config.eta, config.lam) == (0.6, 0.6)
    assert config.data.synthetic.train_per_class == 40
    assert config.schedule.epochs == 6
    assert config.schedule.milestones == []


def test_no_source_gives_schema_defaults() -> None:
    config = build_config(None)
    assert config == validate(Config())
    assert config.process == "D(1.0,0.0)"


def test_misspelt_preset_suggests_close_name() -> None:
    with pytest.raises(ConfigError, match="did you mean: smoke"):
        build_config("smoek")


def test_missing_yaml_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build_config("/nonexistent/folder/run.yaml")


def test_yaml_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "name: mine\nmodel: tiny_cnn\ngenerations: 2\neta: 0.7\nlam: 0.5\n"
        "data:\n  batch_size: 32\nschedule:\n  epochs: 4\n  milestones: [2, 3]\n"
        "generation_schedules:\n  1:\n    epochs: 8\n"
    )
    config = build_config(str(path), ["seed=3"])
    assert config.name == "mine"
    assert config.process == "D(0.7,0.5)"
    assert config.data.batch_size == 32
    assert config.seed == 3
    assert [schedule_for(config, g).epochs for g in range(3)] == [4, 8, 4]
    assert schedule_for(config, 1).milestones == [2, 3]


@pytest.mark.parametrize(
    "text", ["eta: [unclosed\n", "- a list\n- not a mapping\n", "just a string\n"]
)
def test_malformed_yaml_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"bad\.yaml|just a string"):
        build_config(str(path))


def test_unknown_key_in_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("schedule:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"schedule\.epochz"):
        build_config(str(path))


# ---------------------------------------------------------------------------- process


def test_process_override_sets_eta_and_lam() -> None:
    config = build_config("smoke", ["process=D(1.0,0.5)"])
    assert (config.eta, config.lam) == (1.0, 0.5)
    assert config.process == "D(1.0,0.5)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("D(0.6,0.6)", (0.6, 0.6)),
        ("D( 1 , 0 )", (1.0, 0.0)),
        ("  D(0.7, 0.6) ", (0.7, 0.6)),
        ("D(1e-1,.5)", (0.1, 0.5)),
    ],
)
def test_parse_process(text: str, expected: tuple[float, float]) -> None:
    assert parse_process(text) == expected


@pytest.mark.parametrize(
    ("eta", "lam", "expected"),
    [(1, 0, "D(1.0,0.0)"), (0.6, 0.6, "D(0.6,0.6)"), (0.25, 1.0, "D(0.25,1.0)")],
)
def test_format_process(eta: float, lam: float, expected: str) -> None:
    assert format_process(eta, lam) == expected
    assert parse_process(expected) == (float(eta), float(lam))


@pytest.mark.parametrize(
    ("label", "slug"),
    [("D(1.0,0.0)", "D1.0-0.0"), ("D(0.6,0.6):lsr", "D0.6-0.6-lsr"), ("D(0.25,1.0)", "D0.25-1.0")],
)
def test_process_slug_names_a_folder(label: str, slug: str) -> None:
    assert process_slug(label) == slug


def test_process_is_normalised() -> None:
    config = config_from_dict({"process": "D( 1 , 0 )"})
    assert config.process == "D(1.0,0.0)"
    assert (config.eta, config.lam) == (1.0, 0.0)
    config = build_config(None, ["process=D(0.60,0.6)"])
    assert config.process == "D(0.6,0.6)"


def test_eta_lam_without_process_give_process_name() -> None:
    config = config_from_dict({"eta": 0.7, "lam": 0.6})
    assert config.process == "D(0.7,0.6)"


def test_eta_override_wins_over_preset_process() -> None:
    # The smoke preset says process: D(0.6,0.6); an explicit eta must not be ignored.
    config = build_config("smoke", ["eta=0.3"])
    assert (config.eta, config.lam) == (0.3, 0.6)
    assert config.process == "D(0.3,0.6)"
    config = build_config("smoke", ["lam=0.0", "eta=1.0"])
    assert config.process == "D(1.0,0.0)"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["process=D(0.6,0.6)", "eta=0.9"], "process=D(0.6,0.6) sets eta=0.6, but eta=0.9"),
        (["eta=0.3", "process=D(0.9,0.1)"], "process=D(0.9,0.1) sets eta=0.9, but eta=0.3"),
        (["process=D(0.6,0.6)", "lam=0.2"], "process=D(0.6,0.6) sets lam=0.6, but lam=0.2"),
    ],
)
def test_process_and_a_different_eta_or_lam_are_refused_naming_both(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config("smoke", overrides)
    with pytest.raises(ConfigError, match="give process or eta and lam, not both"):
        config_from_dict({"process": "D(0.6,0.6)", "eta": 0.9})


def test_a_yaml_file_whose_process_and_eta_disagree_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("model: tiny_cnn\nprocess: D(0.6,0.6)\neta: 0.9\n")
    with pytest.raises(ConfigError, match=f"eta=0.9 is given too in {re.escape(str(path))}"):
        build_config(str(path))


def test_process_with_the_same_eta_and_lam_is_accepted() -> None:
    config = build_config("smoke", ["process=D(0.7,0.5)", "eta=0.7", "lam=0.50"])
    assert (config.eta, config.lam) == (0.7, 0.5)
    again = config_from_yaml(to_yaml(build_config("smoke", ["eta=0.1234567"])))
    assert again.eta == pytest.approx(0.1234567, rel=1e-5)  # config.yaml keeps 6 digits


@pytest.mark.parametrize(
    "text",
    ["D(0.6)", "D(0.6,0.6", "(0.6,0.6)", "E(0.6,0.6)", "D(a,0.6)", "D(0.6,0.6,0.6)", "", "D(,)"],
)
def test_malformed_process(text: str) -> None:
    with pytest.raises(ConfigError, match="process"):
        parse_process(text)
    with pytest.raises(ConfigError, match="process"):
        config_from_dict({"process": text})


@pytest.mark.parametrize("text", ["D(1.5,0.5)", "D(0.5,-0.1)", "D(nan,0.5)"])
def test_process_out_of_range(text: str) -> None:
    with pytest.raises(ConfigError, match="must lie in"):
        config_from_dict({"process": text})


# ---------------------------------------------------------------------------- key/type errors


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["foo=1"], "foo"),
        (["data.foo=1"], "data.foo"),
        (["schedule.epochz=1"], "schedule.epochz"),
        (["data.synthetic.bar=2"], "data.synthetic.bar"),
    ],
)
def test_unknown_keys(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        build_config("smoke", overrides)


@pytest.mark.parametrize(
    ("override", "suggested"),
    [
        ("schedule.epoch=3", "schedule.epochs, schedule.warmup_epochs"),  # in its section
        ("lr=0.01", "schedule.lr"),  # by its last part, in another section
        ("modle=resnet20", "model"),
        ("regulariser=lsr", "regularizer"),
        ("data.batchsize=32", "data.batch_size, data.eval_batch_size"),
        ("schedul.lr=0.1", "schedule, schedule.scheduler"),  # a section, or a leaf
        ("generation_schedules={0: {epoch: 3}}", "epochs"),  # within a generation's schedule
    ],
)
def test_an_unknown_key_suggests_the_closest_known_keys(override: str, suggested: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"; did you mean: {suggested}?")):
        build_config("smoke", [override])


def test_an_unknown_key_far_from_every_key_suggests_none() -> None:
    with pytest.raises(ConfigError) as error:
        build_config("smoke", ["colour=red"])
    assert str(error.value) == "unknown config key 'colour' (every key: kdgen config PRESET)"


def test_unknown_keys_from_dict() -> None:
    with pytest.raises(ConfigError, match="'foo'"):
        config_from_dict({"foo": 1})
    with pytest.raises(ConfigError, match=r"data\.foo"):
        config_from_dict({"data": {"foo": 1}})


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("eta=abc", "eta"),
        ("k=2.5", "k"),
        ("data.batch_size=big", "data.batch_size"),
        ("schedule.milestones=3", "schedule.milestones"),
        ("amp=maybe", "amp"),
        ("generation_schedules=5", "generation_schedules"),
    ],
)
def test_wrong_types(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config("smoke", [override])


@pytest.mark.parametrize("value", [5, "text", [1, 2]])
def test_wrong_type_for_nested_section_names_the_key(value: Any) -> None:
    with pytest.raises(ConfigError, match="data"):
        config_from_dict({"data": value})
    with pytest.raises(ConfigError, match="synthetic"):
        config_from_dict({"data": {"synthetic": value}})


def test_override_without_equals() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        build_config("smoke", ["eta"])


def test_unparsable_override_value_is_config_error() -> None:
    # "{0:{epochs:3}}" is not valid YAML flow syntax (no space after ':').
    with pytest.raises(ConfigError, match="generation_schedules"):
        build_config("smoke", ["generation_schedules={0:{epochs:3}}"])


# ---------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("eta=1.5", "eta"),
        ("eta=-0.1", "eta"),
        ("eta=nan", "eta"),
        ("lam=1.01", "lam"),
        ("lam=nan", "lam"),
        ("k=1", "k"),
        ("temperature=0", "temperature"),
        ("temperature=-1", "temperature"),
        ("temperature=nan", "temperature"),
        ("schedule.epochs=0", "schedule.epochs"),
        ("schedule.lr=0", "schedule.lr"),
        ("schedule.lr=-0.1", "schedule.lr"),
        ("schedule.lr=nan", "schedule.lr"),
        ("schedule.momentum=1", "schedule.momentum"),
        ("schedule.gamma=0", "schedule.gamma"),
        ("schedule.warmup_epochs=6", "schedule.warmup_epochs"),
        ("schedule.warmup_epochs=-1", "schedule.warmup_epochs"),
        ("schedule.milestones=[4,2]", "schedule.milestones"),
        ("schedule.milestones=[0,2]", "schedule.milestones"),
        ("schedule.scheduler=step", "schedule.scheduler"),
        ("regularizer=tsdd", "regularizer"),
        ("regularizer_form=exact", "regularizer_form"),
        ("generations=-1", "generations"),
        ("eval_every=0", "eval_every"),
        ("device=gpu", "device"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.val_size=-1", "data.val_size"),
        ("data.crop_padding=-2", "data.crop_padding"),
        ("data.train_subset=0", "data.train_subset"),
    ],
)
def test_out_of_range_values(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config("smoke", [override])


@pytest.mark.parametrize("override", ["eta=0", "process=D(0.0,0.5)", "process=D(0,0.6)"])
def test_eta_zero_is_refused_a_patriarch_without_labels(override: str) -> None:
    with pytest.raises(ConfigError, match="eta=0 trains the patriarch on the regulariser alone"):
        build_config("smoke", [override])
    config = build_config("smoke", ["process=D(0.5,0.5)", "regularizer_form=normalized"])
    assert config.regularizer_form == "normalized"


def test_milestones_past_the_last_epoch_warn_once_per_schedule() -> None:
    message = r"schedule\.milestones=\[100, 150\]: 100, 150 lie at or past schedule\.epochs=30"
    with pytest.warns(KdgenWarning, match=message):
        build_config("cifar100-resnet20", ["schedule.epochs=30", "data.root=/data"])
    with pytest.warns(KdgenWarning, match=r"generation_schedules\.1\.milestones=\[3, 6\]: 6 lies"):
        build_config(
            "smoke", ["generation_schedules={1: {scheduler: multistep, milestones: [3, 6]}}"]
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_config("cifar100-resnet20", ["schedule.epochs=151", "data.root=/data"])
        build_config("smoke", ["schedule.milestones=[10]"])  # cosine: no milestones used


def test_nesterov_needs_momentum() -> None:
    # smoke sets nesterov: true
    with pytest.raises(ConfigError, match="nesterov"):
        build_config("smoke", ["schedule.momentum=0"])


def test_boundary_values_are_accepted() -> None:
    config = build_config(
        "smoke",
        ["eta=1", "lam=1", "k=2", "schedule.epochs=1", "schedule.milestones=[]", "generations=0"],
    )
    assert (config.eta, config.lam, config.k) == (1.0, 1.0, 2)


def test_validate_type_checks_a_hand_built_config() -> None:
    with pytest.raises(ConfigError, match="eta"):
        validate(Config(eta="abc"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k"):
        validate(Config(k=None))  # type: ignore[arg-type]
    config = Config(eta="0.5", process=None)  # type: ignore[arg-type]
    assert validate(config) is config
    assert config.eta == 0.5 and config.process == "D(0.5,0.0)"


# ---------------------------------------------------------------------------- schedules


def test_generation_schedule_override_changes_that_generation_only() -> None:
    config = build_config("smoke", ["generations=2", "generation_schedules={0: {epochs: 3}}"])
    assert [schedule_for(config, g).epochs for g in range(3)] == [3, 6, 6]
    changed, base = schedule_for(config, 0), schedule_for(config, 1)
    assert isinstance(changed, ScheduleConfig)
    assert base is config.schedule
    assert changed.lr == base.lr and changed.scheduler == base.scheduler


def test_generation_schedule_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"generation_schedules\.0\.warmup_epochs"):
        build_config("smoke", ["generation_schedules={0: {warmup_epochs: 6}}"])
    with pytest.raises(ConfigError, match=r"generation_schedules\.1"):
        build_config("smoke", ["generation_schedules={1: {lr: -1}}"])
    with pytest.raises(ConfigError, match="generation_schedules"):
        build_config("smoke", ["generation_schedules={0: {epochz: 3}}"])


def test_generation_schedule_key_beyond_generations() -> None:
    with pytest.raises(ConfigError, match="generation_schedules key 5"):
        build_config("smoke", ["generation_schedules={5: {epochs: 3}}"])


@pytest.mark.parametrize("changes", ["fast", 3, [1, 2], 1.5])
def test_generation_schedule_that_is_not_a_mapping(changes: Any) -> None:
    with pytest.raises(ConfigError, match="generation_schedules"):
        config_from_dict({"generation_schedules": {0: changes}})


# ---------------------------------------------------------------------------- hash and diff


def test_config_hash_ignores_non_semantic_keys() -> None:
    base = build_config("smoke")
    other = build_config(
        "smoke", ["out_dir=/tmp/elsewhere", "progress=false", "name=other", "tensorboard=false"]
    )
    assert config_hash(base) == config_hash(other)
    assert len(config_hash(base)) == 16


@pytest.mark.parametrize(
    "override", ["process=D(0.7,0.6)", "schedule.epochs=7", "data.synthetic.seed=1", "seed=1"]
)
def test_config_hash_changes_with_semantic_keys(override: str) -> None:
    assert config_hash(build_config("smoke")) != config_hash(build_config("smoke", [override]))


def test_config_hash_is_pinned_so_old_run_folders_stay_resumable() -> None:
    """Hashes computed by earlier code (the schema's defaults and the smoke preset): a key
    added since must leave them unchanged at its default (``LATER_KEY_DEFAULTS``)."""
    assert config_hash(build_config(None)) == "0d9cb0c5b5697e09"
    assert config_hash(build_config("smoke")) == SMOKE_CONFIG_HASH


def test_config_diff() -> None:
    old = build_config("smoke")
    new = build_config("smoke", ["process=D(0.7,0.6)", "schedule.epochs=9", "out_dir=/tmp/x"])
    diff = config_diff(old, new)
    keys = [line.split(":")[0] for line in diff]
    assert keys == ["eta", "process", "schedule.epochs"]
    assert "schedule.epochs: 6 -> 9" in diff
    assert config_diff(old, old) == []


def test_flatten_config_dots_the_sections_but_not_the_generation_schedules() -> None:
    values = {"eta": 0.6, "data": {"name": "synthetic", "synthetic": {"seed": 1}}}
    values["generation_schedules"] = {0: {"epochs": 3}}
    assert flatten_config(values) == {
        "eta": 0.6,
        "data.name": "synthetic",
        "data.synthetic.seed": 1,
        "generation_schedules": {0: {"epochs": 3}},
    }


def test_round_trip_through_dict() -> None:
    config = build_config("smoke", ["generation_schedules={0: {epochs: 3}}"])
    again = config_from_dict(to_dict(config))
    assert again == config
    assert config_hash(again) == config_hash(config)


# ---------------------------------------------------------------------------- property

KNOWN_KEYS = [
    "name", "model", "generations", "process", "eta", "lam", "regularizer", "k",
    "regularizer_form", "temperature", "seed", "device", "amp", "eval_every", "out_dir",
]  # fmt: skip
DATA_KEYS = ["name", "val_size", "batch_size", "crop_padding", "flip", "train_subset", "root"]
SCHEDULE_KEYS = ["epochs", "lr", "momentum", "scheduler", "milestones", "gamma", "warmup_epochs"]
SCHEMA_WORDS = {
    *KNOWN_KEYS, *DATA_KEYS, *SCHEDULE_KEYS, "data", "schedule", "synthetic",
    "generation_schedules", "weight_decay", "nesterov",
}  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "abc", "0.5", "D(0.6,0.6)", "cpu", "tsd", "cosine", "???", "${eta}"]),
    st.text(max_size=5),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["epochs", "lr", "foo", "seed"]), inner, max_size=3),
    ),
    max_leaves=6,
)


def _section(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from([*keys, "bogus"]), values, max_size=3)


config_dicts = st.dictionaries(
    st.sampled_from([*KNOWN_KEYS, "data", "schedule", "generation_schedules", "unknown"]),
    st.one_of(
        values,
        _section(DATA_KEYS),
        _section(SCHEDULE_KEYS),
        st.dictionaries(st.integers(-1, 6), st.one_of(values, _section(SCHEDULE_KEYS)), max_size=2),
    ),
    max_size=5,
)


def _words(value: Any) -> set[str]:
    if isinstance(value, dict):
        return {str(k) for k in value} | {w for v in value.values() for w in _words(v)}
    return set()


@settings(max_examples=150, deadline=None)
@given(config_dicts)
def test_config_from_dict_accepts_or_raises_config_error(values: dict[str, Any]) -> None:
    try:
        config = config_from_dict(values)
    except ConfigError as error:
        message = str(error)
        assert any(word in message for word in _words(values) | SCHEMA_WORDS), message
        return
    assert isinstance(config, Config)
    assert 0.0 <= config.eta <= 1.0 and 0.0 <= config.lam <= 1.0
    assert config.k >= 2 and config.temperature > 0
    assert config.process == format_process(config.eta, config.lam)
    for generation in range(config.generations + 1):
        schedule = schedule_for(config, generation)
        assert schedule.epochs >= 1 and schedule.lr > 0
        assert not math.isnan(schedule.lr)
    # An accepted config survives a round trip unchanged.
    assert config_from_dict(to_dict(config)) == config

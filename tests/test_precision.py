"""Precision and layout: the rules, the config, the record in the run folder, resume."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch

from kdgen import build, generations
from kdgen.config import Config, build_config, config_hash, precision_setting
from kdgen.errors import ConfigError
from kdgen.generations import train_generations
from kdgen.policy import uses_teacher
from kdgen.precision import Numerics, choose_numerics, native_bf16, resolve_precision
from kdgen.runs import RunFolder

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("capabilities", "native"),
    [
        ({"avx512_bf16": True, "amx_bf16": False}, True),
        ({"avx512_bf16": False, "amx_bf16": True}, True),
        ({"avx512_bf16": False, "amx_bf16": False, "avx512_f": True}, False),
        ({}, False),
    ],
)
def test_auto_precision_follows_the_cpus_bf16_instructions(
    monkeypatch: pytest.MonkeyPatch, capabilities: dict[str, bool], native: bool
) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert native_bf16(CPU) is native
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"


def test_cpu_defaults_to_channels_last_and_mps_to_contiguous() -> None:
    """benchmarks/RESULTS.md, "Precision and layout": the measured CPU rule."""
    assert choose_numerics("fp32", None, CPU) == Numerics("fp32", True)
    assert choose_numerics("bf16", False, CPU) == Numerics("bf16", False)
    assert choose_numerics("fp32", None, torch.device("mps")) == Numerics("fp32", False)
    assert not native_bf16(torch.device("mps"))


def test_numerics_record_round_trips() -> None:
    for numerics in (Numerics("bf16", True), Numerics("fp32", False), Numerics("fp16", True)):
        assert Numerics.from_record(numerics.record()) == numerics
    assert Numerics.from_record({"status": "running"}) is None


def test_precision_config_and_the_older_amp_key() -> None:
    assert build_config("smoke").precision == "auto"
    assert precision_setting(build_config("smoke", ["precision=bf16"])) == "bf16"
    assert precision_setting(build_config("smoke", ["amp=false"])) == "fp32"
    assert precision_setting(build_config("smoke", ["amp=true"])) == "auto"
    assert precision_setting(build_config("smoke", ["precision=fp16"])) == "fp16"
    with pytest.raises(ConfigError, match="precision='fp8' must be one of auto, fp32, bf16, fp16"):
        build_config("smoke", ["precision=fp8"])
    for precision in ("bf16", "fp16"):
        with pytest.raises(ConfigError, match=f"amp=false .* contradicts precision={precision}"):
            build_config("smoke", ["amp=false", f"precision={precision}"])


def test_older_configs_keep_their_hash() -> None:
    """A config.yaml written before ``precision`` (``amp: true``, no precision) hashes as
    it did then, so its run folder stays resumable: the hash of this preset with amp=true
    was computed by the code before precision existed."""
    assert config_hash(build_config("smoke", ["amp=true"])) == "cbf70b7c73eacd2e"
    assert config_hash(build_config("smoke", ["amp=true", "precision=bf16"])) != (
        "cbf70b7c73eacd2e"
    )


def test_teacher_use_follows_lam() -> None:
    config = build_config("smoke", ["generations=2", "lam=0"])
    assert not any(uses_teacher(config, g) for g in range(3))
    config = build_config("smoke", ["generations=2", "lam=0.6"])
    assert [uses_teacher(config, g) for g in range(3)] == [False, True, True]


@pytest.mark.slow
@pytest.mark.parametrize("lam", [0.0, 0.6])
def test_no_teacher_is_frozen_or_run_when_lam_is_zero(
    fast_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch, lam: float
) -> None:
    frozen: list[int] = []
    teachers: list[bool] = []
    real_freeze, real_train = generations.freeze, generations.train_generation

    def counting_freeze(model):  # type: ignore[no-untyped-def]
        frozen.append(1)
        return real_freeze(model)

    def spy(*args, teacher=None, **kwargs):  # type: ignore[no-untyped-def]
        teachers.append(teacher is not None)
        return real_train(*args, teacher=teacher, **kwargs)

    monkeypatch.setattr(generations, "freeze", counting_freeze)
    monkeypatch.setattr(generations, "train_generation", spy)
    train_generations(fast_config("generations=2", f"lam={lam}", "schedule.epochs=1"))
    assert teachers == [False, lam > 0, lam > 0]
    assert len(frozen) == (2 if lam > 0 else 0)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_override_is_used_and_recorded(
    fast_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    used: list[str] = []
    real_train = generations.train_generation

    def spy(*args, precision="fp32", **kwargs):  # type: ignore[no-untyped-def]
        used.append(precision)
        return real_train(*args, precision=precision, **kwargs)

    monkeypatch.setattr(generations, "train_generation", spy)
    result = train_generations(fast_config(f"precision={precision}", "schedule.epochs=1"))
    assert used == [precision, precision]
    state = RunFolder(result.path).read_state()
    assert (state["precision"], state["layout"]) == (precision, "channels_last")
    summary = json.loads((result.path / "summary.json").read_text())
    assert (summary["precision"], summary["layout"]) == (precision, "channels_last")


@pytest.mark.slow
def test_resume_reuses_the_recorded_numerics(
    fast_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume computes as the run began, whatever ``auto`` resolves to now; a run folder
    from before the record (run.json without it) resumes as kdgen then ran: fp32 and
    contiguous on CPU."""
    config = fast_config("generations=1", "schedule.epochs=1")
    first = train_generations(config)
    folder = RunFolder(first.path)
    for recorded, expected in (
        ({"precision": "bf16", "layout": "channels_last"}, Numerics("bf16", True)),
        ({"precision": None, "layout": None}, Numerics("fp32", False)),
    ):
        state = {**folder.read_state(), **recorded}
        assert build.run_numerics(config, CPU, state) == expected
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert build.run_numerics(config, CPU, {}) == Numerics("bf16", True)


def test_bf16_evaluation_rounds_like_bf16_and_returns_float32() -> None:
    """bf16 autocast really runs (logits move by bf16 rounding, ~1e-2 relative, not 0 and
    not more), and the logits come back as float32."""
    from kdgen.data.split import ImageSplit
    from kdgen.data.tensors import DeviceLoader
    from kdgen.engine import predict
    from kdgen.models import create_model

    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    split = ImageSplit(images, torch.zeros(16, dtype=torch.long))
    loader = DeviceLoader(split, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), channels_last=False)
    model = create_model("tiny_cnn", 10, 3)
    full, _ = predict(model, loader, "fp32")
    half, _ = predict(model, loader, "bf16")
    assert half.dtype == torch.float32
    error = float((half - full).norm() / full.norm())
    assert 1e-4 < error < 5e-2, error

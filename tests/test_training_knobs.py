"""The optimiser, fp16 with loss scaling, gradient accumulation and the EMA of the weights."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdgen import generations
from kdgen.build import PreparedData, build_model, prepare_data
from kdgen.config import Config, ScheduleConfig, build_config, config_hash, list_presets
from kdgen.ema import WeightEma
from kdgen.engine import (
    EpochContext,
    EpochProgress,
    GenerationResult,
    Hooks,
    LossFn,
    TrainSettings,
    _accumulate,
    make_optimizer,
    make_scheduler,
    train_generation,
)
from kdgen.errors import ConfigError, NumericalError
from kdgen.generations import train_generations
from kdgen.models import create_model
from kdgen.policy import make_loss
from kdgen.precision import resolve_precision
from kdgen.preemption import TrainingStopped
from kdgen.runs import RunFolder, load_checkpoint
from tests.conftest import FAST

CPU = torch.device("cpu")
# The fp16 tests: 350 training images, 14 steps an epoch.
SMALL = (
    "data.synthetic.train_per_class=4",
    "data.synthetic.test_per_class=1",
    "data.val_size=50",
    "data.batch_size=25",
)


def _setup(*overrides: str) -> tuple[Config, PreparedData]:
    config = build_config("smoke", [*FAST, "precision=fp32", *overrides])
    return config, prepare_data(config, CPU)


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in state.items()}


def _train(
    config: Config,
    data: PreparedData,
    model: nn.Module,
    *,
    precision: str = "fp32",
    loss_fn: LossFn | None = None,
    schedule: ScheduleConfig | None = None,
    settings: TrainSettings | None = None,
    resume_state: dict[str, Any] | None = None,
    states: list[dict[str, Any]] | None = None,
) -> tuple[GenerationResult, list[dict[str, Any]], list[dict[str, Any]]]:
    """Train one generation; returns the result, the saved states (also appended to
    ``states``) and the logged records."""
    states = [] if states is None else states
    records: list[dict[str, Any]] = []

    class Keep(Hooks):
        def log(self, record: dict[str, Any]) -> None:
            records.append(record)

        def save_state(self, state: dict[str, Any]) -> None:
            states.append(copy.deepcopy(state))  # the model's tensors change afterwards

    result = train_generation(
        model,
        data.train_loader,
        data.eval_loaders,
        schedule or config.schedule,
        loss_fn or make_loss(config, 0),
        precision=precision,
        hooks=Keep(),
        settings=settings,
        resume_state=resume_state,
    )
    return result, states, records


def _small_model(num_classes: int, batchnorm: bool = False) -> nn.Module:
    """A CNN small enough for fp16 on a CPU (emulated there, several times slower than
    float32); without BatchNorm, micro-batches compute exactly what their batch does."""
    torch.manual_seed(0)
    norm: list[nn.Module] = [nn.BatchNorm2d(8)] if batchnorm else []
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2),
        *norm,
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def _scaled_cross_entropy(factor: float) -> LossFn:
    """factor x CE: with lr / factor, the updates of CE at lr, but gradients factor x as large."""

    def loss(logits: torch.Tensor, targets: torch.Tensor, _: torch.Tensor | None) -> torch.Tensor:
        return factor * F.cross_entropy(logits, targets)

    return loss


# ---------------------------------------------------------------------------- optimiser


def test_adamw_takes_lr_betas_and_weight_decay_on_weights_only() -> None:
    overrides = ["schedule.lr=0.002", "schedule.betas=[0.8,0.99]", "schedule.weight_decay=0.05"]
    config = build_config("smoke", ["schedule.optimizer=adamw", *overrides])
    optimizer = make_optimizer(create_model("tiny_cnn", 10), config.schedule)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert (decay["lr"], decay["betas"], decay["weight_decay"]) == (0.002, (0.8, 0.99), 0.05)
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in no_decay["params"])
    assert config_hash(config) != config_hash(build_config("smoke", overrides))
    for name in list_presets():  # the presets keep SGD
        schedule = build_config(name).schedule
        assert isinstance(make_optimizer(create_model("tiny_cnn", 10), schedule), torch.optim.SGD)
    with pytest.raises(ConfigError, match=r"schedule.optimizer='adam' must be one of sgd, adamw"):
        build_config("smoke", ["schedule.optimizer=adam"])
    with pytest.raises(ConfigError, match=r"schedule.betas=\[0.9, 1.0\] must be two numbers"):
        build_config("smoke", ["schedule.betas=[0.9,1.0]"])


def test_a_generation_trained_with_adamw_learns() -> None:
    config, data = _setup("schedule.optimizer=adamw", "schedule.lr=0.01", "schedule.epochs=3")
    model = build_model(config, data.dataset, 0, CPU)
    result, _, records = _train(config, data, model, loss_fn=_scaled_cross_entropy(1.0))
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(losses) == 3 and losses[-1] < 0.93 * losses[0]
    assert result.final["test"]["top1"] > 3 / data.dataset.num_classes


# ---------------------------------------------------------------------------- fp16


@pytest.mark.parametrize(
    ("capability", "bf16", "expected"),
    [
        ((7, 0), False, "fp16"),
        ((7, 5), False, "fp16"),
        ((6, 1), False, "fp32"),
        ((8, 0), True, "bf16"),
    ],
)
def test_auto_precision_is_fp16_on_cuda_cards_with_tensor_cores_but_no_bf16(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], bf16: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", torch.device("cuda")) == expected


def test_fp16_skips_overflowing_steps_and_the_guard_lets_them_pass() -> None:
    # x1e5 gradients overflow fp16 at the first loss scales (2^16 ...): the scaler skips those
    # steps and halves its scale; a gradient bound must not count their infinite norms.
    config, data = _setup(*SMALL, "schedule.lr=1e-6")
    model = _small_model(data.dataset.num_classes)
    before = _clone(model.state_dict())
    settings = TrainSettings(max_grad_norm=1e30, check_every=1)
    result, states, _ = _train(
        config, data, model, precision="fp16", loss_fn=_scaled_cross_entropy(1e5), settings=settings
    )
    assert states[-1]["scaler"]["scale"] <= 2.0**8  # at least 8 steps skipped
    assert torch.isfinite(torch.tensor(result.final["train"]["loss"]))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("factor", "message"),
    [
        (1e30, r"epoch 2, step 3: fp16 gradients overflowed step after step \(loss scale 0.5\)"),
        (float("inf"), "step 1: a non-finite loss"),
    ],
)
def test_fp16_divergence_is_a_scale_fallen_below_one_or_a_non_finite_loss(
    factor: float, message: str
) -> None:
    config, data = _setup(*SMALL, "schedule.lr=1e-30")
    model = _small_model(data.dataset.num_classes)
    with pytest.raises(NumericalError, match=message):
        _train(
            config,
            data,
            model,
            precision="fp16",
            loss_fn=_scaled_cross_entropy(factor),
            settings=TrainSettings(check_every=1),
        )


# ---------------------------------------------------------------------------- accumulation


def test_two_half_micro_batches_give_the_weights_of_the_whole_batch() -> None:
    config, data = _setup("schedule.epochs=1")
    trained = []
    for steps in (1, 2):
        model = _small_model(data.dataset.num_classes)
        initial = _clone(model.state_dict())
        _train(config, data, model, schedule=replace(config.schedule, accumulate_steps=steps))
        trained.append(model.state_dict())
    for name, value in trained[0].items():
        torch.testing.assert_close(trained[1][name], value, rtol=1e-4, atol=1e-6)
        assert not torch.equal(value, initial[name])
    with pytest.raises(ConfigError, match=r"accumulate_steps=51 .* exceeds data.batch_size=50"):
        _setup("schedule.accumulate_steps=51")


def test_under_ddp_only_the_last_micro_batch_all_reduces(tmp_path: Path) -> None:
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel

    config, data = _setup()
    images, targets = next(iter(data.train_loader))
    store = f"file://{tmp_path / 'store'}"
    tdist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        all_reduces = []
        for steps in (1, 2):
            net = DistributedDataParallel(_small_model(data.dataset.num_classes))
            calls: list[int] = []

            def count(state, bucket):  # type: ignore[no-untyped-def]  # DDP reads no strings
                calls.append(1)  # noqa: B023 (each net gets its own list)
                done: torch.futures.Future[torch.Tensor] = torch.futures.Future()
                done.set_result(bucket.buffer())
                return done

            net.register_comm_hook(None, count)
            optimizer = make_optimizer(net, config.schedule)
            scheduler = make_scheduler(optimizer, config.schedule, len(data.train_loader))
            loss = make_loss(config, 0)
            context = EpochContext(net, None, data.train_loader, loss, optimizer, scheduler)
            context.accumulate_steps = steps
            context.guard.start(CPU)
            progress = EpochProgress()
            progress.start(CPU)
            _accumulate(context, images, targets, progress)
            all_reduces.append(len(calls))
    finally:
        tdist.destroy_process_group()
    assert all_reduces[0] >= 1 and all_reduces[1] == all_reduces[0]


# ---------------------------------------------------------------------------- EMA


def test_the_timm_and_the_torch_ema_follow_the_rule() -> None:
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 10)
    expected = _clone(model.state_dict())
    emas = [WeightEma(model, 0.9, use_timm=True), WeightEma(model, 0.9, use_timm=False)]
    assert [e.implementation for e in emas] == ["timm.ModelEmaV3", "torch.AveragedModel"]
    for _ in range(3):
        with torch.no_grad():
            for value in model.state_dict().values():
                if value.is_floating_point():
                    value.add_(torch.randn_like(value))
        for ema in emas:
            ema.update()
        current = model.state_dict()
        expected = {
            k: 0.9 * v + 0.1 * current[k] if v.is_floating_point() else v
            for k, v in expected.items()
        }
    for ema in emas:
        assert not ema.module.training
        for name, value in ema.state_dict().items():
            if value.is_floating_point():
                torch.testing.assert_close(value, expected[name])
                assert value.data_ptr() != model.state_dict()[name].data_ptr()


@pytest.mark.slow
@pytest.mark.parametrize("teach", [False, True])
def test_the_ema_is_evaluated_beside_the_weights_saved_and_teaches_only_if_asked(
    fast_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch, teach: bool
) -> None:
    frozen: list[dict[str, torch.Tensor]] = []
    freeze = generations.freeze
    monkeypatch.setattr(
        generations,
        "freeze",
        lambda model: frozen.append(_clone(model.state_dict())) or freeze(model),
    )
    config = fast_config("ema.decay=0.8", f"ema.teach={str(teach).lower()}")
    result = train_generations(config)
    folder = RunFolder(result.path)
    for entry in result.summary["generations"]:
        evaluated = {s for s in ("train_eval", "val", "test") if entry[s] is not None}
        assert set(entry["ema"]) == evaluated and {"val", "test"} <= evaluated
        assert entry["ema"]["test"]["top1"] is not None
        assert entry["ema"]["test"]["nll"] != entry["test"]["nll"]
        assert folder.generation_checkpoint(entry["generation"], ema=True).exists()
    assert {"val_ema", "test_ema"} <= {r["split"] for r in folder.read_metrics()}
    taught_by = folder.generation_checkpoint(0, ema=teach)
    assert len(frozen) == 1
    for name, value in load_checkpoint(taught_by)["model"].items():
        assert torch.equal(frozen[0][name], value), name


def test_resumed_mid_epoch_with_fp16_ema_and_accumulation_ends_as_uninterrupted() -> None:
    config, data = _setup(*SMALL, "schedule.accumulate_steps=2", "schedule.lr=1e-6")
    settings = TrainSettings(ema_decay=0.9)
    loss = _scaled_cross_entropy(1e5)  # the loss scale falls, so its saved state matters
    model = _small_model(data.dataset.num_classes, batchnorm=True)
    whole, _, _ = _train(config, data, model, precision="fp16", loss_fn=loss, settings=settings)
    polls = itertools.count(1)
    stopping = replace(settings, stop_requested=lambda: next(polls) == 8)
    states: list[dict[str, Any]] = []
    with pytest.raises(TrainingStopped):
        stopped = _small_model(data.dataset.num_classes, batchnorm=True)
        _train(
            config, data, stopped, precision="fp16", loss_fn=loss, settings=stopping, states=states
        )
    state = states[-1]
    assert state["step"] == 8 and state["scaler"]["scale"] < 2.0**16 and "ema" in state
    resumed = _small_model(data.dataset.num_classes, batchnorm=True)
    again, _, _ = _train(
        config, data, resumed, precision="fp16", loss_fn=loss, settings=settings, resume_state=state
    )
    assert whole.ema_model is not None and again.ema_model is not None
    for trained, twin in ((model, resumed), (whole.ema_model, again.ema_model)):
        for name, value in trained.state_dict().items():
            assert torch.equal(twin.state_dict()[name], value), name
    assert again.final == whole.final

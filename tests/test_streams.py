"""Each generation draws its own training stream (docs/method.md, Training in generations):
order, crops and flips depend on (seed, generation, epoch); the split on the seed alone.

The streams are observed from the outside: a registered model records a checksum of every
training batch it is given, one list per model instance (one instance per generation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
import torch

from kdgen import preemption
from kdgen.config import Config
from kdgen.generations import train_generations
from kdgen.models.registry import register_model
from kdgen.models.tiny import TinyCNN
from kdgen.preemption import TrainingStopped

# model instance -> checksums of the training batches it saw, in order
SEEN: dict[int, list[str]] = {}


class RecordingCNN(TinyCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            digest = hashlib.sha1(x.detach().contiguous().cpu().numpy().tobytes()).hexdigest()
            SEEN.setdefault(id(self), []).append(digest)
        return super().forward(x)


@register_model("recording_tiny_cnn")
def recording_tiny_cnn(num_classes: int = 10, in_channels: int = 3) -> RecordingCNN:
    return RecordingCNN(num_classes, in_channels)


def _streams(config: Config, **kwargs: object) -> list[list[str]]:
    """Train ``config`` and return each trained generation's batch checksums, in order."""
    SEEN.clear()
    train_generations(config, **kwargs)  # type: ignore[arg-type]
    return [list(batches) for batches in SEEN.values()]


def _epochs(stream: list[str], epochs: int) -> list[tuple[str, ...]]:
    steps = len(stream) // epochs
    assert steps * epochs == len(stream)
    return [tuple(stream[e * steps : (e + 1) * steps]) for e in range(epochs)]


@pytest.mark.slow
def test_no_generation_or_epoch_replays_another_stream(
    fast_config: Callable[..., Config],
) -> None:
    streams = _streams(fast_config("model=recording_tiny_cnn", "generations=2"))
    assert len(streams) == 3  # M_0, M_1, M_2, each trained once
    per_epoch = [epoch for stream in streams for epoch in _epochs(stream, 2)]
    assert len(per_epoch) == 6
    assert len(set(per_epoch)) == 6, "a generation or an epoch replayed another's batches"


@pytest.mark.slow
def test_processes_of_one_seed_draw_the_same_streams_and_seeds_differ(
    fast_config: Callable[..., Config],
) -> None:
    model = "model=recording_tiny_cnn"
    baseline = _streams(fast_config(model, "process=D(1.0,0.0)", out="a"))
    tolerant = _streams(fast_config(model, "process=D(0.6,0.6)", out="b"))
    other_seed = _streams(fast_config(model, "process=D(1.0,0.0)", "seed=1", out="c"))
    assert baseline == tolerant  # same images, same order, crops and flips per generation
    assert baseline[0] != other_seed[0]


def test_split_depends_on_the_seed_alone(fast_config: Callable[..., Config]) -> None:
    from kdgen.build import prepare_data

    def split(*overrides: str) -> dict[str, torch.Tensor]:
        data = prepare_data(fast_config(*overrides), torch.device("cpu"))
        loaders = {"train": data.train_loader, **data.eval_loaders}
        return {name: loader.images for name, loader in loaders.items()}

    first = split("process=D(1.0,0.0)")
    second = split("process=D(0.5,0.6)", "regularizer=lsr", "generations=3")
    assert first.keys() == second.keys() == {"train", "val", "test", "train_eval"}
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["val"], split("seed=1")["val"])


@pytest.mark.slow
def test_a_resumed_generation_draws_the_uninterrupted_stream(
    fast_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = ("model=recording_tiny_cnn", "generations=2")
    reference = _streams(fast_config(*overrides, out="ref"))
    calls = {"n": 0}

    def stop_in_generation_1() -> bool:
        calls["n"] += 1
        return calls["n"] >= len(reference[0]) + 6  # a few steps into M_1's first epoch

    SEEN.clear()
    monkeypatch.setattr(preemption, "stop_requested", stop_in_generation_1)
    with pytest.raises(TrainingStopped) as stopped:
        train_generations(fast_config(*overrides, out="run"))
    monkeypatch.undo()
    assert stopped.value.generation == 1 and stopped.value.step > 0
    before = [list(batches) for batches in SEEN.values()]
    after = _streams(fast_config(*overrides, out="run"), resume=True)
    # M_0 is loaded, not retrained; M_1 continues where it stopped; M_2 is trained whole.
    assert before[0] == reference[0]
    assert before[1] + after[0] == reference[1]
    assert after[1] == reference[2]


def test_image_folder_loader_draws_a_stream_per_generation() -> None:
    from torch.utils.data import TensorDataset

    from kdgen.data.dataset_loader import DatasetLoader

    data = TensorDataset(torch.zeros(64, 3, 2, 2), torch.arange(64))
    loader = DatasetLoader(data, 8, shuffle=True, seed=3, workers=0)
    first = loader.batches()
    loader.set_generation(1)
    second = loader.batches()
    loader.set_generation(0)
    assert second != first and loader.batches() == first

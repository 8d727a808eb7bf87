"""The clean evaluation of the training images, ``train_eval`` (docs/method.md, "Evaluation
protocol"): a fixed seeded, stratified subset of the training split, read without
augmentation, evaluated with the other splits; every generation's summary entry holds it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from kdgen.build import prepare_data
from kdgen.config import Config
from kdgen.evaluation import load_generation_model
from kdgen.generations import train_generations


def _rows(images: torch.Tensor) -> set[bytes]:
    return {image.cpu().numpy().tobytes() for image in images}


def test_train_eval_is_a_seeded_stratified_subset_of_the_training_split(
    fast_config: Callable[..., Config],
) -> None:
    # 100 classes x 8 images, 20 held out for validation: 780 training images.
    config = fast_config("data.val_size=20", "eval_train_max=200")
    data = prepare_data(config, torch.device("cpu"))
    train, loaders = data.train_loader, data.eval_loaders
    subset = loaders["train_eval"]
    assert len(subset.labels) == 200
    assert _rows(subset.images) <= _rows(train.images)
    assert not _rows(subset.images) & _rows(loaders["val"].images)
    assert torch.bincount(subset.labels, minlength=100).tolist() == [2] * 100
    assert subset.augment.crop_padding == 0 and not subset.augment.flip and not subset.shuffle

    again = prepare_data(config, torch.device("cpu")).eval_loaders["train_eval"]
    assert torch.equal(again.images, subset.images)
    other = fast_config("data.val_size=20", "eval_train_max=200", "seed=1")
    other_seed = prepare_data(other, torch.device("cpu")).eval_loaders["train_eval"]
    assert not torch.equal(other_seed.images, subset.images)


def test_at_most_the_whole_training_split_and_none_when_off(
    fast_config: Callable[..., Config],
) -> None:
    whole = prepare_data(
        fast_config("data.val_size=20", "eval_train_max=5000"), torch.device("cpu")
    )
    assert len(whole.eval_loaders["train_eval"].labels) == 780
    off = prepare_data(fast_config("eval_train_max=0"), torch.device("cpu"))
    assert "train_eval" not in off.eval_loaders


@pytest.mark.slow
def test_every_generation_records_the_accuracy_of_its_model_on_those_images(
    fast_config: Callable[..., Config],
) -> None:
    config = fast_config("data.val_size=20", "eval_train_max=40", "generations=1")
    result = train_generations(config)
    subset = prepare_data(config, torch.device("cpu")).eval_loaders["train_eval"]
    for entry in result.summary["generations"]:
        model = load_generation_model(result.path, entry["generation"])
        with torch.inference_mode():
            predicted = torch.cat([model(images).argmax(1) for images, _ in subset])
        by_hand = (predicted == subset.labels).sum().item() / len(subset.labels)
        assert entry["train_eval"]["top1"] == by_hand
        assert set(entry["train_eval"]) >= {"top1", "nll", "mean_max_prob"}

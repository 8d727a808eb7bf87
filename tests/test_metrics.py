"""Tests of kdgen.metrics: hand-computed values on tiny inputs, edge cases and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdgen.metrics import classification_metrics, dist_coarse, dist_semantic, secondary_classes

# Three images over 6 classes, probabilities chosen without ties; each row sums to 1, so
# softmax(log p) = p exactly (up to rounding).
PROBS = [
    [0.30, 0.05, 0.25, 0.20, 0.12, 0.08],  # label 0: top-1 hit; the label scores highest
    [0.02, 0.45, 0.03, 0.26, 0.04, 0.20],  # label 4: top-1 miss, top-5 hit (rank 4)
    [0.50, 0.20, 0.15, 0.08, 0.05, 0.02],  # label 5: ranks last, top-5 miss
]
LABELS = torch.tensor([0, 4, 5])
LOGITS = torch.tensor(PROBS, dtype=torch.float64).log()
TWO_GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])
THREE_GROUPS = torch.tensor([0, 0, 1, 1, 2, 2])


def _probs() -> torch.Tensor:
    return torch.tensor(PROBS, dtype=torch.float64)


def test_accuracy_and_summaries_by_hand() -> None:
    metrics = classification_metrics(LOGITS, LABELS)
    assert metrics["top1"] == pytest.approx(1 / 3)
    assert metrics["top5"] == pytest.approx(2 / 3)
    nll = -(math.log(0.30) + math.log(0.04) + math.log(0.02)) / 3
    assert metrics["nll"] == pytest.approx(nll, rel=1e-5)
    assert metrics["mean_max_prob"] == pytest.approx((0.30 + 0.45 + 0.50) / 3, rel=1e-5)
    entropy = sum(-sum(p * math.log(p) for p in row) for row in PROBS) / 3
    assert metrics["entropy"] == pytest.approx(entropy, rel=1e-5)
    assert metrics["dist_c"] is None and metrics["dist_s"] is None
    assert all(isinstance(v, float) for k, v in metrics.items() if not k.startswith("dist"))


def test_metrics_are_invariant_to_a_per_row_logit_shift() -> None:
    shifted = LOGITS + torch.tensor([[3.0], [-7.0], [100.0]], dtype=torch.float64)
    a = classification_metrics(LOGITS, LABELS, TWO_GROUPS, k=3)
    b = classification_metrics(shifted, LABELS, TWO_GROUPS, k=3)
    assert a == pytest.approx(b, rel=1e-5)


def test_secondary_classes_exclude_the_ground_truth() -> None:
    secondary = secondary_classes(_probs(), LABELS, k=3)
    # Image 0: its label 0 has the highest score, yet S holds the next two classes.
    assert secondary.tolist() == [[2, 3], [1, 3], [0, 1]]
    assert secondary_classes(_probs(), LABELS, k=2).tolist() == [[2], [1], [0]]
    secondary = secondary_classes(_probs(), LABELS, k=6)
    for row, label in zip(secondary.tolist(), LABELS.tolist(), strict=True):
        assert sorted(row) == sorted(set(range(6)) - {label})


def test_dist_two_groups_k3_by_hand() -> None:
    # S per image: {2, 3} (3 is outside coarse 0), {1, 3} (1 is outside coarse 1),
    # {0, 1} (both outside coarse 1).
    dist_c = (1 / 2 + 1 / 2 + 1) / 3
    dist_s = (
        (1 * 0.25 + 2 * 0.20) / (0.25 + 0.20)
        + (2 * 0.45 + 1 * 0.26) / (0.45 + 0.26)
        + (2 * 0.50 + 2 * 0.20) / (0.50 + 0.20)
    ) / 3
    probs = _probs()
    assert float(dist_coarse(probs, LABELS, TWO_GROUPS, 3)) == pytest.approx(dist_c)
    assert float(dist_semantic(probs, LABELS, TWO_GROUPS, 3)) == pytest.approx(dist_s)
    metrics = classification_metrics(LOGITS, LABELS, TWO_GROUPS, k=3)
    assert metrics["dist_c"] == pytest.approx(dist_c, rel=1e-5)
    assert metrics["dist_s"] == pytest.approx(dist_s, rel=1e-5)


def test_dist_two_groups_k2_by_hand() -> None:
    # S = {2} (sibling), {1} (outside), {0} (outside).
    metrics = classification_metrics(LOGITS, LABELS, TWO_GROUPS, k=2)
    assert metrics["dist_c"] == pytest.approx(2 / 3)
    assert metrics["dist_s"] == pytest.approx((1 + 2 + 2) / 3)


def test_dist_three_groups_k4_by_hand() -> None:
    # Siblings: 0-1, 2-3, 4-5. S = {2, 3, 4} (all outside), {1, 3, 5} (5 is a sibling of 4),
    # {0, 1, 2} (all outside).
    dist_c = (1 + 2 / 3 + 1) / 3
    dist_s = (2 + (2 * 0.45 + 2 * 0.26 + 1 * 0.20) / (0.45 + 0.26 + 0.20) + 2) / 3
    metrics = classification_metrics(LOGITS, LABELS, THREE_GROUPS, k=4)
    assert metrics["dist_c"] == pytest.approx(dist_c, rel=1e-5)
    assert metrics["dist_s"] == pytest.approx(dist_s, rel=1e-5)


def test_all_secondary_classes_siblings() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.0, 0.0, -1.0]])
    metrics = classification_metrics(logits, torch.tensor([0]), TWO_GROUPS, k=3)
    assert metrics["dist_c"] == 0.0
    assert metrics["dist_s"] == pytest.approx(1.0)


def test_dist_none_without_hierarchy_or_with_k_above_classes() -> None:
    assert classification_metrics(LOGITS, LABELS, None, k=3)["dist_c"] is None
    metrics = classification_metrics(LOGITS, LABELS, TWO_GROUPS, k=7)
    assert metrics["dist_c"] is None and metrics["dist_s"] is None
    assert metrics["top1"] == pytest.approx(1 / 3)


def test_top5_with_fewer_than_five_classes() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    metrics = classification_metrics(logits, torch.tensor([2, 2]))
    assert metrics["top1"] == pytest.approx(0.5)
    assert metrics["top5"] == 1.0  # every class is among the top min(5, C)


def test_top5_with_exactly_five_and_more_classes() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert classification_metrics(logits, torch.tensor([4]))["top5"] == 1.0
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    assert classification_metrics(logits, torch.tensor([5]))["top5"] == 0.0
    assert classification_metrics(logits, torch.tensor([4]))["top5"] == 1.0
    assert classification_metrics(logits, torch.tensor([4]))["top1"] == 0.0


def test_zero_probabilities_give_finite_entropy_and_equal_weights() -> None:
    inf = float("inf")
    logits = torch.tensor([[0.0, -inf, -inf]])
    metrics = classification_metrics(logits, torch.tensor([0]), torch.tensor([0, 0, 1]), k=3)
    assert metrics["entropy"] == 0.0
    assert metrics["mean_max_prob"] == 1.0
    assert metrics["nll"] == 0.0
    # Secondary mass is exactly 0: both classes weigh 1/2, distances 1 and 2.
    assert metrics["dist_s"] == pytest.approx(1.5)
    assert metrics["dist_c"] == pytest.approx(0.5)


def test_uniform_output() -> None:
    metrics = classification_metrics(torch.zeros(4, 8), torch.tensor([0, 1, 2, 3]))
    assert metrics["entropy"] == pytest.approx(math.log(8), rel=1e-6)
    assert metrics["nll"] == pytest.approx(math.log(8), rel=1e-6)
    assert metrics["mean_max_prob"] == pytest.approx(1 / 8)


@st.composite
def problems(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    classes = draw(st.integers(2, 9))
    count = draw(st.integers(1, 6))
    scale = draw(st.sampled_from([0.0, 0.5, 3.0, 30.0]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32)))
    logits = torch.randn(count, classes, generator=generator) * scale
    if draw(st.booleans()):
        logits = logits.round()  # ties
    labels = torch.randint(0, classes, (count,), generator=generator)
    coarse = torch.randint(0, draw(st.integers(1, 4)), (classes,), generator=generator)
    k = draw(st.integers(2, classes))
    return logits, labels, coarse, k


@settings(max_examples=60, deadline=None)
@given(problems())
def test_metric_ranges(problem: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]) -> None:
    logits, labels, coarse, k = problem
    metrics = classification_metrics(logits, labels, coarse, k=k)
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
    assert 0.0 <= metrics["dist_c"] <= 1.0
    assert 1.0 - 1e-9 <= metrics["dist_s"] <= 2.0 + 1e-9
    assert 1.0 / logits.shape[1] - 1e-6 <= metrics["mean_max_prob"] <= 1.0 + 1e-6
    assert -1e-6 <= metrics["entropy"] <= math.log(logits.shape[1]) + 1e-5
    assert metrics["nll"] >= -1e-6
    if metrics["dist_c"] == 0.0:
        assert metrics["dist_s"] == pytest.approx(1.0)
    if metrics["dist_c"] == 1.0:
        assert metrics["dist_s"] == pytest.approx(2.0)
    secondary = secondary_classes(torch.softmax(logits, 1), labels, k)
    assert secondary.shape == (len(labels), k - 1)
    assert not (secondary == labels[:, None]).any()
    # Every class in one coarse group: all secondary classes are siblings.
    same = classification_metrics(logits, labels, torch.zeros_like(coarse), k=k)
    assert same["dist_c"] == 0.0 and same["dist_s"] == pytest.approx(1.0)

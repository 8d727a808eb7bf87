"""Evaluation metrics computed from a model's logits: accuracy, calibration-free summaries
of the output distribution, and the secondary-information distances Dist^C and Dist^S.

Dist^C and Dist^S are the project's own definitions (docs/method.md, "Measuring secondary
information"): for each image, S is the set of the K-1 highest-scoring classes other than
the ground truth.
- Dist^C: the fraction of S outside the ground truth's coarse class, averaged over images.
- Dist^S: the mean over images of sum_{c in S} w_c * d(y, c) with w_c = p_c / sum_S p and
  d the tree distance to the lowest common ancestor; in a two-level hierarchy d is 1 for
  siblings and 2 otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def secondary_classes(probs: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """The K-1 highest-probability classes other than the ground truth, per image (N, K-1)."""
    masked = probs.scatter(1, labels[:, None], float("-inf"))
    return masked.topk(k - 1, dim=1).indices


def dist_coarse(
    probs: torch.Tensor, labels: torch.Tensor, coarse_of_fine: torch.Tensor, k: int
) -> torch.Tensor:
    """Dist^C: mean fraction of the secondary classes outside the true coarse class."""
    secondary = secondary_classes(probs, labels, k)
    outside = coarse_of_fine[secondary] != coarse_of_fine[labels][:, None]
    return outside.double().mean()


def two_level_distance(coarse_of_fine: torch.Tensor) -> torch.Tensor:
    """Tree distances of a two-level hierarchy: 1 between siblings, 2 otherwise, 0 on the
    diagonal."""
    different = coarse_of_fine[:, None] != coarse_of_fine[None, :]
    distance = 1.0 + different.double()
    distance.fill_diagonal_(0.0)
    return distance


def dist_semantic(
    probs: torch.Tensor,
    labels: torch.Tensor,
    coarse_of_fine: torch.Tensor | None,
    k: int,
    distance: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dist^S: probability-weighted tree distance d(y, c) of the secondary classes S.

    ``distance[y, c]`` counts the edges from y up to the lowest common ancestor with c
    (see ``kdgen.data.hierarchy``); without it, the two-level rule of ``coarse_of_fine``.
    """
    if distance is None:
        if coarse_of_fine is None:
            raise ValueError("dist_semantic needs coarse_of_fine or a distance matrix")
        distance = two_level_distance(coarse_of_fine)
    secondary = secondary_classes(probs, labels, k)
    weights = probs.gather(1, secondary).double()
    total = weights.sum(dim=1, keepdim=True)
    # An image whose secondary mass underflows to 0 weighs its classes equally.
    weights = torch.where(total > 0, weights / total.clamp_min(1e-300), 1.0 / (k - 1))
    distances = distance.to(probs.device, torch.float64)[labels[:, None], secondary]
    return (weights * distances).sum(dim=1).mean()


def classification_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    coarse_of_fine: torch.Tensor | None = None,
    k: int = 5,
    distance: torch.Tensor | None = None,
) -> dict[str, float | None]:
    """All per-split metrics of docs/method.md from (N, C) logits; accuracies are fractions.

    Dist^C needs ``coarse_of_fine``; Dist^S uses ``distance`` (C, C) when given, else the
    two-level distances of ``coarse_of_fine``. Both are None without a hierarchy.
    """
    logits = logits.float()
    labels = labels.to(logits.device)
    log_probs = torch.log_softmax(logits, dim=1)
    probs = log_probs.exp()
    num_classes = logits.shape[1]
    top = logits.topk(min(5, num_classes), dim=1).indices
    hits = top == labels[:, None]
    entropy = -(probs * log_probs).nan_to_num(0.0).sum(dim=1)
    values = {
        "top1": hits[:, 0].double().mean(),
        "top5": hits.any(dim=1).double().mean(),
        "nll": -log_probs.gather(1, labels[:, None]).double().mean(),
        "mean_max_prob": probs.max(dim=1).values.double().mean(),
        "entropy": entropy.double().mean(),
    }
    if coarse_of_fine is not None and 2 <= k <= num_classes:
        coarse = coarse_of_fine.to(logits.device)
        values["dist_c"] = dist_coarse(probs, labels, coarse, k)
        values["dist_s"] = dist_semantic(probs, labels, coarse, k, distance)
    stacked = torch.stack(list(values.values())).tolist()  # one host sync for all metrics
    metrics: dict[str, float | None] = dict(zip(values, stacked, strict=True))
    metrics.setdefault("dist_c", None)
    metrics.setdefault("dist_s", None)
    return metrics


def ensemble_metrics(
    member_logits: list[torch.Tensor],
    labels: torch.Tensor,
    coarse_of_fine: torch.Tensor | None = None,
    k: int = 5,
    distance: torch.Tensor | None = None,
) -> dict[str, float | None]:
    """Metrics of the ensemble that averages its members' softmax outputs (docs/method.md)."""
    probs = torch.stack([torch.softmax(logits.float(), dim=1) for logits in member_logits])
    # log of the mean probability is a valid logit vector: its softmax is the mean itself.
    return classification_metrics(probs.mean(dim=0).log(), labels, coarse_of_fine, k, distance)


def ensemble_members(last_generation: int) -> dict[str, list[int]]:
    """The ensembles of docs/method.md: all generations, and the last k for k = 2 and 3."""
    everyone = list(range(last_generation + 1))
    members = {"all": everyone}
    for k in (2, 3):
        if k < len(everyone):
            members[f"last{k}"] = everyone[-k:]
    return members if len(everyone) > 1 else {}


def ensemble_summaries(
    saved: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]],
    coarse_of_fine: torch.Tensor | None = None,
    k: int = 5,
    distance: torch.Tensor | None = None,
    models: Mapping[int, str] | None = None,
) -> list[dict[str, Any]]:
    """Metrics of the softmax-averaging ensembles of :func:`ensemble_members`, per split,
    from each generation's saved ``{split: (logits, labels)}`` (no model reruns); with
    ``models`` (generation -> model), each entry names its members' models."""
    entries = []
    for name, members in ensemble_members(max(saved)).items():
        entry: dict[str, Any] = {"name": name, "members": members}
        if models is not None:
            entry["models"] = [models[g] for g in members]
        for split, (_, labels) in saved[members[0]].items():
            logits = [saved[g][split][0] for g in members]
            entry[split] = ensemble_metrics(logits, labels, coarse_of_fine, k, distance)
        entries.append(entry)
    return entries

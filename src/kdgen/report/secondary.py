"""The per-class view: which secondary classes each patriarch puts after the true one.

It reads the saved test logits of generation 0 (``logits/gen0.pt``), whatever their dtype,
and computes in float32 or wider. Folders holding only summaries (e.g. a study's committed
results) have no logits: the view is then left out with a note saying why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kdgen.errors import KdgenError
from kdgen.report.collect import ClassInfo, Run, class_info
from kdgen.report.tables import Table


@dataclass(frozen=True)
class Secondary:
    """One secondary class of a true class: how many of its images had it in S."""

    index: int
    name: str
    count: int
    frequency: float
    sibling: bool | None


@dataclass(frozen=True)
class SecondaryRow:
    """A true class, its image count, its most frequent secondary classes and the share of
    all its secondary slots that are siblings (None without coarse labels)."""

    index: int
    name: str
    images: int
    top: list[Secondary]
    sibling_fraction: float | None


def secondary_sets(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """S per image: the K-1 highest-scoring classes other than the true one, (N, K-1)."""
    scores = logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True)
    scores[torch.arange(len(labels)), labels] = -math.inf
    return scores.topk(k - 1, dim=1).indices


def secondary_class_table(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    coarse_of_fine: Sequence[int] | None,
    k: int,
    top: int = 3,
    classes: Sequence[int] | None = None,
) -> list[SecondaryRow]:
    """For each true class (all present, or ``classes``), its ``top`` most frequent
    secondary classes over its images (ties: lower class index first)."""
    sets = secondary_sets(logits, labels, k)
    num_classes = logits.shape[1]
    chosen = sorted(set(labels.tolist())) if classes is None else list(classes)
    rows = []
    for c in chosen:
        mine = sets[labels == c]
        counts = torch.bincount(mine.flatten(), minlength=num_classes).tolist()
        order = sorted((i for i in range(num_classes) if counts[i] > 0), key=lambda i: -counts[i])
        rows.append(
            SecondaryRow(
                index=c,
                name=class_names[c],
                images=len(mine),
                top=[
                    _secondary(i, counts[i], len(mine), c, class_names, coarse_of_fine)
                    for i in order[:top]
                ],
                sibling_fraction=_sibling_fraction(mine, c, coarse_of_fine),
            )
        )
    return rows


def _secondary(
    index: int,
    count: int,
    images: int,
    true_class: int,
    names: Sequence[str],
    coarse: Sequence[int] | None,
) -> Secondary:
    sibling = None if coarse is None else coarse[index] == coarse[true_class]
    return Secondary(index, names[index], count, count / images, sibling)


def _sibling_fraction(
    sets: torch.Tensor, true_class: int, coarse: Sequence[int] | None
) -> float | None:
    if coarse is None or sets.numel() == 0:
        return None
    coarse_t = torch.as_tensor(list(coarse))
    return float((coarse_t[sets] == coarse[true_class]).float().mean())


def example_classes(num_classes: int, count: int) -> list[int]:
    """``count`` evenly spaced class indices (deterministic), first and last included."""
    if count <= 0 or num_classes <= 0:
        return []
    return sorted(
        {round(float(x)) for x in np.linspace(0, num_classes - 1, min(count, num_classes))}
    )


def _secondary_text(item: Secondary) -> str:
    mark = " †" if item.sibling else ""
    return f"{item.name}{mark} ({item.count}, {item.frequency:.0%})"


def _test_logits(run: Run) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not run.folder.logits_path(0).is_file():
        return None
    try:
        return run.folder.load_logits(0)["test"]
    except (KdgenError, KeyError):
        return None


def per_class_table(
    groups: dict[str, list[Run]],
    examples: int,
    shared: dict[tuple[str, int], str] | None = None,
) -> tuple[Table | None, str]:
    """Patriarch (first seed) secondary classes for a few classes, and a note on gaps.

    A process whose patriarch is another's (shared) is left out: its rows would repeat them.
    """
    shared = shared or {}
    missing: list[str] = []
    notes: list[str] = []
    infos: dict[str, ClassInfo] = {}
    per_process: dict[str, list[SecondaryRow]] = {}
    for label, runs in groups.items():
        run = runs[0]
        if (label, run.seed) in shared:
            notes.append(f"{label}: patriarch shared with {shared[(label, run.seed)]}")
            continue
        found = _test_logits(run)
        if found is None:
            missing.append(f"{label} ({run.folder.path})")
            continue
        logits, labels = found
        info = infos.setdefault(run.summary.get("data", ""), class_info(run))
        k = int(run.summary.get("k", 5))
        chosen = example_classes(logits.shape[1], examples)
        per_process[label] = secondary_class_table(
            logits, labels, info.names, info.coarse_of_fine, k, classes=chosen
        )
    if missing:
        notes.append(
            "no test logits of generation 0 (logits/gen0.pt) for "
            + ", ".join(missing)
            + ": this view needs the runs' own folders, not only their summaries"
        )
    if not per_process:
        return None, "; ".join(notes)
    rows = [
        _per_class_row(label, found[position])
        for position in range(max(len(v) for v in per_process.values()))
        for label, found in per_process.items()
        if position < len(found)
    ]
    headers = ["class", "process", "images", "1st", "2nd", "3rd", "siblings in S"]
    return Table(headers, rows, left=2), "; ".join(notes)


def _per_class_row(label: str, row: SecondaryRow) -> list[str]:
    tops = [_secondary_text(s) for s in row.top] + ["-"] * (3 - len(row.top))
    share = "-" if row.sibling_fraction is None else f"{row.sibling_fraction:.0%}"
    return [f"{row.index} {row.name}", label, str(row.images), *tops[:3], share]

"""Choosing on validation (docs/method.md, "Choosing on validation"): which stage (a
generation or a snapshot cycle) and which ensemble a run recommends, and when
``generations=auto`` stops.

Every decision reads the validation split alone; test metrics are copied into the choice,
never compared. Everything here is a pure function of summary entries and the config.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from kdgen.config import AutoConfig, Config

# metric -> (summary key of the validation split, whether higher is better)
_METRICS = {"val_top1": ("top1", True), "val_nll": ("nll", False)}


def _value(entry: dict[str, Any], metric: str) -> float | None:
    key, _ = _METRICS[metric]
    return (entry.get("val") or {}).get(key)


def _improves(value: float, best: float, auto: AutoConfig) -> bool:
    """Whether ``value`` beats ``best`` by more than ``auto.min_delta``."""
    _, higher_is_better = _METRICS[auto.metric]
    gain = value - best if higher_is_better else best - value
    return gain > auto.min_delta


def best_stage(entries: Sequence[dict[str, Any]], auto: AutoConfig) -> tuple[int, int] | None:
    """(position of the best entry, how many entries after it failed to improve on it),
    walking the entries in training order: a later entry becomes the best only when it
    improves the best value by more than ``auto.min_delta``. None without validation
    metrics."""
    best, best_value = 0, None
    for position, entry in enumerate(entries):
        value = _value(entry, auto.metric)
        if value is None:
            return None
        if best_value is None or _improves(value, best_value, auto):
            best, best_value = position, value
    return None if best_value is None else (best, len(entries) - 1 - best)


def in_order(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summary entries sorted by stage index."""
    return sorted(entries, key=lambda entry: entry["generation"])


def stops_before(config: Config, entries: Sequence[dict[str, Any]], index: int) -> bool:
    """Whether ``generations=auto`` stops before training stage ``index``: the last
    ``auto.patience`` generations trained before it failed to improve the best validation
    value. Never for a run of fixed length."""
    if config.generations != "auto":
        return False
    found = best_stage(in_order(e for e in entries if e["generation"] < index), config.auto)
    return found is not None and found[1] >= config.auto.patience


def choose(
    config: Config, entries: Sequence[dict[str, Any]], ensembles: Sequence[dict[str, Any]]
) -> dict[str, Any] | None:
    """The single stage and the ensemble with the best validation ``auto.metric``, their
    test metrics and the reason; None when the run has no validation split."""
    entries = in_order(entries)
    found = best_stage(entries, config.auto)
    if found is None:
        return None
    metric = config.auto.metric
    best = entries[found[0]]
    return {
        "metric": metric,
        "generation": best["generation"],
        "stage": best.get("stage", "generation"),
        "value": _value(best, metric),
        "test": best.get("test"),
        "ensemble": _best_ensemble(ensembles, metric),
        "reason": _reason(config, entries, found),
    }


def _best_ensemble(ensembles: Sequence[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The ensemble with the best validation value (the first listed, on a tie)."""
    scored = [(e, _value(e, metric)) for e in ensembles]
    scored = [(e, value) for e, value in scored if value is not None]
    if not scored:
        return None
    _, higher_is_better = _METRICS[metric]
    sign = 1.0 if higher_is_better else -1.0
    ensemble, value = max(scored, key=lambda pair: sign * pair[1])
    return {
        "name": ensemble["name"],
        "members": ensemble["members"],
        "value": value,
        "test": ensemble.get("test"),
    }


def _reason(config: Config, entries: list[dict[str, Any]], found: tuple[int, int]) -> str:
    auto, (best, stale) = config.auto, found
    kind = entries[best].get("stage", "generation")
    first, last = entries[0]["generation"], entries[-1]["generation"]
    chosen = f"{kind} {entries[best]['generation']} has the best {auto.metric}"
    rule = f" (a later one counts only when it improves by more than {auto.min_delta})"
    if config.generations != "auto":
        return f"{chosen} of {kind}s {first}-{last}{rule if auto.min_delta else ''}"
    if stale >= auto.patience:
        return (
            f"generations=auto stopped after generation {last}: {stale} in a row did not "
            f"improve {auto.metric} by more than {auto.min_delta} (auto.patience="
            f"{auto.patience}); {chosen}"
        )
    return (
        f"generations=auto trained up to auto.max_generations={auto.max_generations}; {chosen}"
        f"{rule if auto.min_delta else ''}"
    )

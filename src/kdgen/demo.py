"""``kdgen demo``: the paper's comparison in miniature, on the built-in synthetic data.

Trains D(1.0,0.0) (independent runs), D(1.0,0.6) (born-again, strict patriarch) and
D(0.6,0.6) (tolerant TSD patriarch), each a patriarch and 2 students, with one seed.
Processes whose patriarchs would be identical (the two strict ones) share it: it is trained
once (:func:`kdgen.policy.patriarch_key`).
"""

from __future__ import annotations

import time
from pathlib import Path

from kdgen.config import build_config, process_slug
from kdgen.generations import RunResult, train_generations
from kdgen.policy import patriarch_key, plan_stages
from kdgen.report import generations_table
from kdgen.runs import unique_folder

DEMO_PROCESSES = ("D(1.0,0.0)", "D(1.0,0.6)", "D(0.6,0.6)")


def run_demo(
    out_dir: str | None = None, overrides: tuple[str, ...] = (), preset: str = "demo"
) -> tuple[str, list[RunResult]]:
    """Run the demo's processes; returns the table and each run's result."""
    root = Path(out_dir) if out_dir else Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    root = unique_folder(root)
    results: list[RunResult] = []
    patriarchs: dict[tuple[object, ...], Path] = {}  # the first run of each patriarch
    for process in DEMO_PROCESSES:
        settings = [
            *overrides,
            f"process={process}",
            f"name={process_slug(process)}",
            f"out_dir={root / process_slug(process)}",
        ]
        key = patriarch_key(build_config(preset, settings))
        if key is not None and key in patriarchs:
            settings.append(f"patriarch={patriarchs[key]}")  # validated with the rest
        config = build_config(preset, settings)
        print(
            f"== {process}: {len(plan_stages(config))} generations of {config.model} "
            f"on {config.data.name} -> {config.out_dir}",
            flush=True,
        )
        result = train_generations(config)
        results.append(result)
        if key is not None:
            patriarchs.setdefault(key, result.path)
    table = generations_table(result.summary for result in results)
    (root / "demo.md").write_text(table + "\n")
    return table, results

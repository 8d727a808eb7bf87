"""The demo: its processes in a row, the strict patriarch trained once and reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdgen.config import process_slug
from kdgen.demo import DEMO_PROCESSES, run_demo
from kdgen.runs import RunFolder
from tests.conftest import FAST


@pytest.mark.slow
def test_the_demo_trains_the_strict_patriarch_once(tmp_path: Path) -> None:
    table, results = run_demo(str(tmp_path / "demo"), (*FAST, "generations=1"), preset="smoke")
    configs = {r.summary["process"]: RunFolder(r.path).read_config() for r in results}
    assert list(configs) == list(DEMO_PROCESSES)
    owner = tmp_path / "demo" / process_slug("D(1.0,0.0)")
    assert configs["D(1.0,0.0)"].patriarch is None
    assert configs["D(1.0,0.6)"].patriarch == str(owner)  # the same strict M_0
    assert configs["D(0.6,0.6)"].patriarch is None  # a tolerant M_0 of its own
    gen0 = [r.summary["generations"][0]["test"] for r in results]
    assert gen0[0] == gen0[1] != gen0[2]
    assert (tmp_path / "demo" / "demo.md").read_text() == table + "\n"

"""``kdgen`` whose writing process stops (KeyboardInterrupt) after N resumable-state saves
(0: never), and that says on stderr which gloo threads are still alive when it ends.

For tests that interrupt a run where a monkeypatch cannot reach, e.g. under torchrun, and
that check that the process group's threads were joined before the interpreter shuts
down (a gloo worker alive then can abort the process, see
``kdgen.distributed._destroy_groups``)::

    torchrun ... tests/stop_after_saves.py N train CONFIG ...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from kdgen import generations
from kdgen.cli import main

THREADS_AT_EXIT = "gloo threads at exit:"


def stop_after(saves: int) -> None:
    """Make the process that writes the run folder stop after its ``saves``-th save."""
    real_save = generations.RunHooks.save_state
    done = 0

    def save_state(self: generations.RunHooks, state: dict[str, Any]) -> None:
        nonlocal done
        real_save(self, state)
        if self.folder.writable:
            done += 1
            if done == saves:
                raise KeyboardInterrupt(f"stopped by the test after {saves} saves")

    generations.RunHooks.save_state = save_state  # type: ignore[method-assign]


def gloo_threads() -> list[str]:
    """The names of this process's threads that gloo or its process group started
    (Linux names them ``gloo_tcp_loop`` and ``pt_gloo_runloop``)."""
    tasks = Path("/proc/self/task")
    names = [(task / "comm").read_text().strip() for task in tasks.iterdir()]
    return sorted(name for name in names if "gloo" in name)


def report_threads() -> None:
    rank = os.environ.get("RANK", "0")
    print(f"rank {rank} {THREADS_AT_EXIT} {gloo_threads()}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    if int(sys.argv[1]):
        stop_after(int(sys.argv[1]))
    try:
        status = main(sys.argv[2:])
    finally:
        report_threads()
    sys.exit(status)

"""``kdgen`` whose writing process stops (KeyboardInterrupt) after N resumable-state saves.

For tests that interrupt a run where a monkeypatch cannot reach, e.g. under torchrun::

    torchrun ... tests/stop_after_saves.py N train CONFIG ...
"""

from __future__ import annotations

import sys
from typing import Any

from kdgen import generations
from kdgen.cli import main


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


if __name__ == "__main__":
    stop_after(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))

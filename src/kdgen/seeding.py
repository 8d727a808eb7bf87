"""Seeds derived from several integers, well mixed and stable across platforms."""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure function of ``keys`` (numpy's SeedSequence mixing)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


def seeded_generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*keys))

"""Seeds derived from several integers, well mixed and stable across platforms; the global
RNG states a resumable checkpoint saves and restores."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

# How seeds are derived, recorded in every run folder: 1 = SeedSequence of the keys alone
# (kdgen before purpose tags), 2 = :func:`derive_seed` below. A run resumed under another
# scheme would draw other streams in its remaining epochs than in its first ones.
SEEDING_SCHEME = 2


def _purpose_tag(purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:4], "little")


def derive_seed(purpose: str, *keys: int) -> int:
    """A 63-bit seed that is a pure function of ``purpose`` and ``keys`` (numpy's
    SeedSequence mixing).

    SeedSequence ignores trailing zeros of its entropy, so the purpose's tag and the number
    of keys come first: ``("init", 3, 0)`` and ``("stream", 3, 0, 0)`` never share a seed,
    and no two purposes or key counts can collide that way.
    """
    entropy = [_purpose_tag(purpose), len(keys), *(int(k) for k in keys)]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


def seeded_generator(purpose: str, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(purpose, *keys))


def cuda_rng_state() -> dict[str, Any]:
    """The RNG state of every CUDA device once this process uses CUDA (else nothing: asking
    would create a CUDA context on every card for a run on the CPU)."""
    if not torch.cuda.is_initialized():
        return {}
    return {"cuda_rng": torch.cuda.get_rng_state_all()}


def rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU, and CUDA once used), Python and NumPy as
    tensors, plain lists and ints, so that a checkpoint holding them loads with
    ``weights_only=True``."""
    version, internal, gauss_next = random.getstate()
    algorithm, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "torch_rng": torch.get_rng_state(),
        **cuda_rng_state(),
        "python_rng": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy_rng": {
            "algorithm": str(algorithm),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the torch (CPU and, where saved and available, CUDA), Python and NumPy RNG
    states of :func:`rng_state`. A state without CUDA's (saved on a machine without CUDA,
    or by an older version) leaves the CUDA generators as they are; a state saved with
    more devices than this machine has restores those it has. Older states may lack
    Python's and NumPy's."""
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        for index, device_state in enumerate(state["cuda_rng"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, index)
    if "python_rng" in state:
        saved = state["python_rng"]
        random.setstate((saved["version"], tuple(saved["state"]), saved["gauss_next"]))
    if "numpy_rng" in state:
        saved = state["numpy_rng"]
        keys = saved["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (saved["algorithm"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"])
        )

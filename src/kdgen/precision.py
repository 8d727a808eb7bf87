"""Numeric precision and memory layout: what a run computes in, chosen once and recorded.

``precision=auto`` trains under bf16 autocast where the device computes bf16 natively
(CUDA cards with bf16 support; CPUs with AVX512-BF16 or AMX-BF16) and in float32
elsewhere. Weights, optimiser state and the loss stay float32 in both: autocast only
lowers the precision of the convolutions and matmuls inside the forward and backward.

``channels_last=null`` (auto) picks the memory layout by :func:`auto_channels_last`, a
fixed rule per device, not a timing taken at run start: a timing can come out either
way on a busy machine, and the same config on the same machine must make the same
choice. Both choices are recorded in the run folder and reused on resume.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (not by emulation through float32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


def resolve_precision(setting: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"``: the configured precision, ``auto`` resolved for ``device``."""
    if setting != "auto":
        return setting
    return "bf16" if native_bf16(device) else "fp32"


def auto_channels_last(device: torch.device) -> bool:
    """The layout rule of ``channels_last=null``: channels_last on CUDA, where cuDNN's
    tensor-core convolutions want it, and on CPU; the default (contiguous) layout elsewhere
    (MPS: not measured).

    On CPU, interleaved measurements on two CPUs (benchmarks/RESULTS.md, "the CPU layout
    rule, measured again" and "precision and layout") found channels_last faster with one
    thread (the setting of each training of ``kdgen sweep --jobs N`` on N cores) in every
    fp32 case, medians 1.08-1.62x, and in most bf16 ones, and no difference the noise let
    them resolve with two threads;
    ``channels_last=false`` is the override.
    """
    return device.type in ("cuda", "cpu")


def resolve_channels_last(setting: bool | None, device: torch.device) -> bool:
    """The configured layout, or :func:`auto_channels_last` when unset."""
    return auto_channels_last(device) if setting is None else setting


@dataclass(frozen=True)
class Numerics:
    """What a run computes in: ``precision`` ("fp32" or "bf16") and the memory layout."""

    precision: str = "fp32"
    channels_last: bool = False

    @property
    def layout(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    def record(self) -> dict[str, str]:
        """The fields that ``run.json`` and ``summary.json`` hold."""
        return {"precision": self.precision, "layout": self.layout}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Numerics | None:
        """The numerics a run folder recorded, or None if it recorded none."""
        if record.get("precision") not in ("fp32", "bf16") or "layout" not in record:
            return None
        return cls(record["precision"], record["layout"] == "channels_last")


def choose_numerics(precision: str, channels_last: bool | None, device: torch.device) -> Numerics:
    """The numerics of a new run on ``device``, from its ``precision`` and ``channels_last``
    settings (``auto`` and null resolved by the rules above)."""
    return Numerics(
        resolve_precision(precision, device), resolve_channels_last(channels_last, device)
    )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``precision`` is ``"bf16"``; a no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

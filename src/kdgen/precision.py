"""Numeric precision and memory layout: what a run computes in, chosen once and recorded.

``precision=auto`` trains under bf16 autocast where the device computes bf16 natively
(CUDA cards with bf16 support; CPUs with AVX512-BF16 or AMX-BF16), under fp16 autocast
with loss scaling on CUDA cards that have fp16 tensor cores but no bf16 (compute
capability 7.x: V100, T4), and in float32 elsewhere. Weights, optimiser state and the
loss stay float32 in all of them: autocast only lowers the precision of the convolutions
and matmuls inside the forward and backward.

fp16 has bf16's 16 bits but 5 exponent bits instead of 8: gradients below 6e-8 flush to
zero and above 65504 overflow. :func:`grad_scaler` gives the remedy, a
``torch.amp.GradScaler``: the loss is multiplied by a scale before the backward pass, the
gradients divided by it before the step, and a step whose gradients overflowed is
skipped (the scale halves; it doubles after 2000 good steps).

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


FP16_TENSOR_CORES = (7, 0)
"""The first CUDA compute capability with fp16 tensor cores (Volta)."""


def fast_fp16(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA card with fp16 tensor cores (compute capability >= 7.0);
    on older cards fp16 is no faster than float32, on CPUs it is emulated."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= FP16_TENSOR_CORES


def resolve_precision(setting: str, device: torch.device) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``: the configured precision, ``auto`` resolved
    for ``device`` (bf16 where native, else fp16 on CUDA tensor cores, else fp32)."""
    if setting != "auto":
        return setting
    if native_bf16(device):
        return "bf16"
    return "fp16" if fast_fp16(device) else "fp32"


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
    """What a run computes in: ``precision`` ("fp32", "bf16" or "fp16") and the memory
    layout."""

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
        if record.get("precision") not in ("fp32", "bf16", "fp16") or "layout" not in record:
            return None
        return cls(record["precision"], record["layout"] == "channels_last")


def choose_numerics(precision: str, channels_last: bool | None, device: torch.device) -> Numerics:
    """The numerics of a new run on ``device``, from its ``precision`` and ``channels_last``
    settings (``auto`` and null resolved by the rules above)."""
    return Numerics(
        resolve_precision(precision, device), resolve_channels_last(channels_last, device)
    )


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 or fp16 autocast on ``device`` as ``precision`` says; a no-op for fp32."""
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """The loss scaler of a training step: active for fp16, a pass-through (``scale``
    returns the loss, ``step`` is the optimiser's step) for fp32 and bf16, whose exponent
    range is float32's."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")

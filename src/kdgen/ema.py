"""An exponential moving average (EMA) of a model's weights, kept beside the model.

After every optimiser step, ``ema = decay * ema + (1 - decay) * weights`` for every
floating-point entry of the state dict (the parameters and BatchNorm's running
statistics), starting from the initial weights. timm's ``ModelEmaV3`` does it when timm is
installed; otherwise torch's ``AveragedModel`` with ``get_ema_multi_avg_fn``, the same
rule (its first update copies, so it is made with the initial weights and updated from
there). The two differ only in integer buffers (BatchNorm's batch count: timm copies it,
torch averages it), which no kdgen model reads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def _timm_ema_class() -> type[nn.Module] | None:
    try:
        from timm.utils import ModelEmaV3
    except ImportError:  # no timm, or one from before ModelEmaV3
        return None
    return ModelEmaV3


class WeightEma:
    """The EMA of ``model``'s weights with ``decay``: :meth:`update` after each optimiser
    step of ``model``; :attr:`module` is the averaged model (evaluate it, or freeze it as a
    teacher). ``use_timm`` None: timm's ModelEmaV3 when installed, else torch's
    AveragedModel."""

    def __init__(self, model: nn.Module, decay: float, use_timm: bool | None = None) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"an EMA decay must lie in (0, 1), not {decay}")
        timm_class = _timm_ema_class() if use_timm is not False else None
        if use_timm and timm_class is None:
            raise ImportError("timm's ModelEmaV3 is not installed: pip install 'kdgen[timm]'")
        self.decay, self.source = decay, model
        if timm_class is not None:
            self._ema: nn.Module = timm_class(model, decay=decay)
            self.implementation = "timm.ModelEmaV3"
        else:
            averaged = AveragedModel(
                model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
            )
            averaged.update_parameters(model)  # the first update copies the initial weights
            self._ema = averaged
            self.implementation = "torch.AveragedModel"
        self.module.eval()
        self.module.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (eval mode, no gradients)."""
        module = self._ema.module
        assert isinstance(module, nn.Module)
        return module

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's current weights (one optimiser step)."""
        if isinstance(self._ema, AveragedModel):
            self._ema.update_parameters(self.source)
        else:
            self._ema.update(self.source)  # type: ignore[operator]

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights (loadable whichever implementation saved them)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)

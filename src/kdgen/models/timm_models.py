"""timm models (``timm:<name>``) behind the kdgen model interface.

The model is built with ``timm.create_model(name, pretrained=False, num_classes=...,
in_chans=...)`` and wrapped in :class:`TimmClassifier`: ``forward`` is timm's own forward,
``forward_features`` is ``forward_head(forward_features(x), pre_logits=True)`` (the pooled
penultimate features, flattened to ``(N, D)``), ``fc`` is timm's ``get_classifier()`` (which
must be one ``nn.Linear`` with ``num_classes`` outputs) and ``num_features`` its input size.
Model arguments (the config's ``model_args``) go to ``timm.create_model``, e.g.
``{drop_rate: 0.2}``. timm is optional: ``pip install 'kdgen[timm]'`` (or ``pip install timm``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from kdgen.errors import ConfigError
from kdgen.models.registry import (
    PrefixSource,
    Pretrained,
    hub_cache_file,
    register_prefix,
    unknown_with_suggestions,
)

PREFIX = "timm:"


def _import_timm(name: str) -> ModuleType:
    """Import timm, or raise a one-line ConfigError saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ConfigError(f"{PREFIX}{name} needs timm: pip install 'kdgen[timm]'") from None
    return timm


class TimmClassifier(nn.Module):
    """A timm model with the kdgen interface; ``fc`` is the model's own classifier."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        classifier = model.get_classifier()
        if not isinstance(classifier, nn.Linear):
            raise ConfigError("a timm model needs one nn.Linear classifier for kdgen")
        self.num_features = classifier.in_features

    @property
    def fc(self) -> nn.Linear:
        """The classifier (timm's ``get_classifier()``; not a second copy of its parameters)."""
        return self.model.get_classifier()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the classifier's input), shape ``(N, num_features)``."""
        features = self.model.forward_features(x)
        return torch.flatten(self.model.forward_head(features, pre_logits=True), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(N, num_classes)``."""
        return self.model(x)


def timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def timm_names() -> list[str]:
    """Names of timm's models (ConfigError with an install hint without timm)."""
    return list(_import_timm("<name>").list_models())


def _timm_model(name: str) -> ModuleType:
    """timm, once ``name`` is known to be one of its models."""
    timm = _import_timm(name)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise unknown_with_suggestions("timm model", PREFIX + name, [PREFIX + c for c in close])
    return timm


def create_timm_model(name: str, num_classes: int, in_channels: int, **args: object) -> nn.Module:
    """Build timm's ``name`` (no pretrained weights) as a :class:`TimmClassifier`."""
    timm = _timm_model(name)
    try:
        model = timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **args
        )
    except TypeError as error:  # an argument the model does not take
        raise ConfigError(f"{PREFIX}{name}: {error}") from None
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Linear) or classifier.out_features != num_classes:
        raise ConfigError(f"{PREFIX}{name} has no single nn.Linear classifier; kdgen cannot use it")
    return TimmClassifier(model)


def _cached_weights(cfg: Any) -> tuple[Path | None, str]:
    """Where timm's pretrained weights of ``cfg`` are on this machine (the Hugging Face
    cache, or torch hub's for older URL weights), else None and where they were looked for."""
    places = []
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else HF_WEIGHT_FILES
        for filename in names:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found), ""
        places.append(
            f"{cfg.hf_hub_id}/{names[0]} in the Hugging Face cache ({constants.HF_HUB_CACHE})"
        )
    if cfg.url:
        file = hub_cache_file(cfg.url)
        if file.is_file():
            return file, ""
        places.append(f"{file} (torch hub's cache)")
    return None, " or ".join(places)


# The files timm reads from a Hugging Face repository, in its order.
HF_WEIGHT_FILES = ["model.safetensors", "pytorch_model.bin"]


def pretrained_timm(name: str) -> Pretrained:
    """timm's default pretrained weights of ``name`` (``name.tag`` for another tag), from
    the caches timm downloads to; built by timm with them (its own key filters, strict)."""
    timm = _timm_model(name)
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url) or not cfg.num_classes:
        raise ConfigError(f"{PREFIX}{name} has no pretrained classifier weights in timm")
    classes, channels = int(cfg.num_classes), int(cfg.input_size[0])

    def build(state: dict[str, torch.Tensor], **args: object) -> nn.Module:
        model = timm.create_model(
            name,
            pretrained=True,
            pretrained_cfg_overlay={"state_dict": state, "source": None},
            num_classes=classes,
            in_chans=channels,
            **args,
        )
        return TimmClassifier(model)

    file, expected = _cached_weights(cfg)
    return Pretrained("timm", classes, channels, file, expected, build)


register_prefix(
    PrefixSource(
        PREFIX,
        create_timm_model,
        timm_names,
        "any timm model, e.g. timm:resnet18",
        timm_available,
        "pip install 'kdgen[timm]'",
        pretrained=pretrained_timm,
    )
)

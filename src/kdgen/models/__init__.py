"""kdgen models: a registry of classifiers with a shared interface.

Every model returned by :func:`create_model` has ``forward(x) -> logits (N, num_classes)``,
``forward_features(x) -> penultimate features (N, num_features)``, an int attribute
``num_features`` and its classifier as the ``nn.Linear`` attribute ``fc``.

Names: the CIFAR ResNets ``resnet8`` ... ``resnet110``, DenseNet-BC ``densenet_bc_100_12`` and
``densenet_bc_190_40``, Wide ResNets ``wrn_16_8``, ``wrn_28_10`` and ``wrn_40_2``, ``tiny_cnn``,
``tv:<name>`` for any torchvision classification model and ``timm:<name>`` for any timm model
(needs the optional timm; both built without weights). To add a family, write one
module whose factories ``f(num_classes, in_channels, **args)`` carry
``@register_model("name")`` and import it below; its keyword arguments are the config's
``model_args``. Shared layers and checks live in :mod:`kdgen.models.layers`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdgen.models import cifar_resnet as _cifar_resnet  # noqa: F401  (registers resnet*)
from kdgen.models import densenet as _densenet  # noqa: F401  (registers densenet_bc_*)
from kdgen.models import timm_models as _timm_models  # noqa: F401  (registers timm:)
from kdgen.models import tiny as _tiny  # noqa: F401  (registers tiny_cnn)
from kdgen.models import torchvision_models as _torchvision  # noqa: F401  (registers tv:)
from kdgen.models import wrn as _wrn  # noqa: F401  (registers wrn_*)
from kdgen.models.cifar_resnet import CifarResNet, cifar_resnet
from kdgen.models.densenet import DenseNetBC, densenet_bc
from kdgen.models.layers import check_positive_int
from kdgen.models.registry import (
    PrefixSource,
    build,
    prefix_sources,
    pretrained_weights,
    register_model,
    registered_names,
    unknown_name_error,
    unknown_with_suggestions,
)
from kdgen.models.timm_models import TimmClassifier
from kdgen.models.tiny import TinyCNN, tiny_cnn
from kdgen.models.torchvision_models import PREFIX, TorchvisionClassifier, torchvision_names
from kdgen.models.wrn import WideResNet, wide_resnet

__all__ = [
    "CifarResNet",
    "DenseNetBC",
    "PrefixSource",
    "TimmClassifier",
    "TinyCNN",
    "TorchvisionClassifier",
    "WideResNet",
    "cifar_resnet",
    "create_model",
    "densenet_bc",
    "list_models",
    "prefix_sources",
    "pretrained_weights",
    "register_model",
    "tiny_cnn",
    "wide_resnet",
]


def list_models() -> list[str]:
    """Names of the kdgen models (``tv:<name>`` and ``timm:<name>`` are accepted besides;
    see :func:`prefix_sources`)."""
    return registered_names()


def _unknown_model(name: str) -> Exception:
    """ConfigError for an unknown kdgen name; suggests ``tv:<name>`` if torchvision has it."""
    if name in torchvision_names():
        return unknown_with_suggestions("model", name, [PREFIX + name])
    return unknown_name_error("model", name, registered_names())


def create_model(name: str, num_classes: int, in_channels: int = 3, **model_args: Any) -> nn.Module:
    """Build the model registered as ``name`` (torchvision's for ``tv:<name>``, timm's for
    ``timm:<name>``); ``model_args`` go to its factory, e.g. ``dropout=0.3`` for a WRN."""
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    return build(name, num_classes, in_channels, model_args, _unknown_model)

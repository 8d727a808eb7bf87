"""kdgen models: a registry of classifiers with a shared interface.

Every model returned by :func:`create_model` has ``forward(x) -> logits (N, num_classes)``,
``forward_features(x) -> penultimate features (N, num_features)``, an int attribute
``num_features`` and its classifier as the ``nn.Linear`` attribute ``fc``.

Names: the CIFAR ResNets ``resnet8`` ... ``resnet110``, DenseNet-BC ``densenet_bc_100_12`` and
``densenet_bc_190_40``, Wide ResNets ``wrn_16_8``, ``wrn_28_10`` and ``wrn_40_2``, ``tiny_cnn``,
``tv:<name>`` for any torchvision classification model and ``timm:<name>`` for any timm model
(needs the optional timm; both built without weights). To add a family, write one
module whose factories ``f(num_classes, in_channels)`` carry ``@register_model("name")`` and
import it below.
"""

from __future__ import annotations

from torch import nn

from kdgen.models import cifar_resnet as _cifar_resnet  # noqa: F401  (registers resnet*)
from kdgen.models import densenet as _densenet  # noqa: F401  (registers densenet_bc_*)
from kdgen.models import tiny as _tiny  # noqa: F401  (registers tiny_cnn)
from kdgen.models import wrn as _wrn  # noqa: F401  (registers wrn_*)
from kdgen.models.cifar_resnet import CifarResNet, cifar_resnet
from kdgen.models.densenet import DenseNetBC, densenet_bc
from kdgen.models.registry import (
    check_positive_int,
    get_factory,
    register_model,
    registered_names,
    unknown_name_error,
    unknown_with_suggestions,
)
from kdgen.models.timm_models import PREFIX as TIMM_PREFIX
from kdgen.models.timm_models import TimmClassifier, create_timm_model
from kdgen.models.tiny import TinyCNN, tiny_cnn
from kdgen.models.torchvision_models import (
    PREFIX,
    TorchvisionClassifier,
    create_torchvision_model,
)
from kdgen.models.wrn import WideResNet, wide_resnet

__all__ = [
    "CifarResNet",
    "DenseNetBC",
    "TimmClassifier",
    "TinyCNN",
    "TorchvisionClassifier",
    "WideResNet",
    "cifar_resnet",
    "create_model",
    "densenet_bc",
    "list_models",
    "register_model",
    "tiny_cnn",
    "wide_resnet",
]


def list_models() -> list[str]:
    """Names of the kdgen models (``tv:<name>`` and ``timm:<name>`` are accepted besides)."""
    return registered_names()


def _unknown_model(name: str) -> Exception:
    """ConfigError for an unknown kdgen name; suggests ``tv:<name>`` if torchvision has it."""
    try:
        from kdgen.models.torchvision_models import torchvision_names

        if name in torchvision_names():
            return unknown_with_suggestions("model", name, [PREFIX + name])
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    return unknown_name_error("model", name, registered_names())


def create_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build the model registered as ``name`` (torchvision's for ``tv:<name>``, timm's for
    ``timm:<name>``)."""
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    if name.startswith(PREFIX):
        return create_torchvision_model(name[len(PREFIX) :], num_classes, in_channels)
    if name.startswith(TIMM_PREFIX):
        return create_timm_model(name[len(TIMM_PREFIX) :], num_classes, in_channels)
    factory = get_factory(name)
    if factory is None:
        raise _unknown_model(name)
    return factory(num_classes, in_channels)

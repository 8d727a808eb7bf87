"""kdgen models: a registry of classifiers with a shared interface.

Every model returned by :func:`create_model` has ``forward(x) -> logits (N, num_classes)``,
``forward_features(x) -> penultimate features (N, num_features)``, an int attribute
``num_features`` and its classifier as the ``nn.Linear`` attribute ``fc``.

Names: the CIFAR ResNets ``resnet8`` ... ``resnet110``, ``tiny_cnn``, and ``tv:<name>`` for
any torchvision classification model (built without weights). To add a family, write one
module whose factories ``f(num_classes, in_channels)`` carry ``@register_model("name")`` and
import it below.
"""

from __future__ import annotations

from torch import nn

from kdgen.models import cifar_resnet as _cifar_resnet  # noqa: F401  (registers resnet*)
from kdgen.models import tiny as _tiny  # noqa: F401  (registers tiny_cnn)
from kdgen.models.cifar_resnet import CifarResNet, cifar_resnet
from kdgen.models.registry import (
    check_positive_int,
    get_factory,
    register_model,
    registered_names,
    unknown_name_error,
    unknown_with_suggestions,
)
from kdgen.models.tiny import TinyCNN, tiny_cnn
from kdgen.models.torchvision_models import (
    PREFIX,
    TorchvisionClassifier,
    create_torchvision_model,
)

__all__ = [
    "CifarResNet",
    "TinyCNN",
    "TorchvisionClassifier",
    "cifar_resnet",
    "create_model",
    "list_models",
    "register_model",
    "tiny_cnn",
]


def list_models() -> list[str]:
    """Names of the kdgen models (``tv:<name>`` torchvision models are accepted besides)."""
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
    """Build the model registered as ``name`` (or torchvision's for ``tv:<name>``)."""
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    if name.startswith(PREFIX):
        return create_torchvision_model(name[len(PREFIX) :], num_classes, in_channels)
    factory = get_factory(name)
    if factory is None:
        raise _unknown_model(name)
    return factory(num_classes, in_channels)

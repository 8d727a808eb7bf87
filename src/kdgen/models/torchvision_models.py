"""Torchvision classification models (``tv:<name>``) behind the kdgen model interface.

The model is built with ``torchvision.models.get_model(name, weights=None, num_classes=...)``.
Its final ``nn.Linear`` (the last one registered, which must output ``num_classes``) is moved
to the wrapper's ``fc`` and replaced by ``nn.Identity`` in place, so the remaining body
computes exactly what that Linear received: the penultimate features. For ``in_channels != 3``
the first ``nn.Conv2d`` with 3 input channels is swapped for a fresh one with the same
hyper-parameters and the requested number of input channels. Model arguments (the config's
``model_args``) go to ``get_model``, e.g. ``{dropout: 0.2}`` for ``tv:efficientnet_b0``.

``model_args.weights`` (``DEFAULT``, ``IMAGENET1K_V1``, ... or the full enum name) starts
the body from torchvision's pretrained weights, read from torch hub's cache
(``$TORCH_HOME/hub/checkpoints``): a run never downloads, and weights that are not there
are refused naming the key. The classifier is then a fresh ``nn.Linear`` for
``num_classes`` (whatever the class count, so every data set gets a new head), and so is a
swapped input convolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdgen.errors import ConfigError
from kdgen.models.registry import (
    PrefixSource,
    Pretrained,
    hub_cache_file,
    register_prefix,
    unknown_name_error,
)

PREFIX = "tv:"
# Models whose auxiliary classifiers would make the training-mode output a tuple.
_NO_AUX = frozenset({"googlenet", "inception_v3"})


def torchvision_names() -> list[str]:
    """Names of torchvision's classification models (``torchvision.models`` only)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The dotted name and module of the last ``nn.Linear`` registered in ``model``."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    return found


def _set_submodule(model: nn.Module, dotted: str, new: nn.Module) -> None:
    """Replace the submodule at ``dotted`` (e.g. ``classifier.1``) with ``new``."""
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _swap_input_conv(model: nn.Module, in_channels: int, name: str) -> None:
    """Replace the first 3-channel ``nn.Conv2d`` with one taking ``in_channels`` channels."""
    for dotted, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            conv = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=module.groups,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            _set_submodule(model, dotted, conv)
            return
    raise ConfigError(f"tv:{name} has no 3-channel nn.Conv2d to adapt to in_channels={in_channels}")


class TorchvisionClassifier(nn.Module):
    """A torchvision model split into ``body`` (features) and ``fc`` (its final Linear)."""

    def __init__(self, body: nn.Module, fc: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.fc = fc
        self.num_features = fc.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the final Linear's input), shape ``(N, num_features)``."""
        return torch.flatten(self.body(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(N, num_classes)``."""
        return self.fc(self.forward_features(x))


def cached_weights_file(weights: Any) -> Path:
    """Where torch hub keeps the file of torchvision ``weights`` (a ``WeightsEnum``)."""
    return hub_cache_file(weights.url)


def local_weights(name: str, value: object) -> Any:
    """The torchvision weights that ``model_args.weights=value`` names for model ``name``,
    refused (ConfigError naming the key) unless their file is in torch hub's cache."""
    from torchvision.models import get_model_weights

    choices = get_model_weights(name)
    short = str(value).removeprefix(f"{choices.__name__}.")
    if short not in choices.__members__:
        raise ConfigError(
            f"model_args.weights={value}: {PREFIX}{name} has weights "
            f"{', '.join(choices.__members__)} (or null: none)"
        )
    weights = choices[short]
    path = cached_weights_file(weights)
    if not path.is_file():
        raise ConfigError(
            f"model_args.weights={value}: the weights of {PREFIX}{name} are not on this machine "
            f"({path}); kdgen does not download during a run: fetch {weights.url} into "
            f"{path.parent} (TORCH_HOME sets where), or drop model_args.weights"
        )
    return weights


def _check_name(name: str) -> None:
    names = torchvision_names()
    if name not in names:
        candidates = [PREFIX + n for n in names]
        raise unknown_name_error("torchvision model", PREFIX + name, candidates)


def create_torchvision_model(
    name: str, num_classes: int, in_channels: int, **args: object
) -> nn.Module:
    """Build torchvision's ``name`` as a :class:`TorchvisionClassifier`; ``args`` go to
    ``torchvision.models.get_model``, except ``weights`` (see the module's docstring)."""
    import torchvision

    _check_name(name)
    value = args.pop("weights", None)
    weights = None if value is None else local_weights(name, value)
    kwargs: dict[str, object] = {**args, "weights": weights}
    if weights is None:
        kwargs["num_classes"] = num_classes
    if name in _NO_AUX:
        kwargs["aux_logits"] = False
        if weights is None:
            kwargs["init_weights"] = True
    try:
        model = torchvision.models.get_model(name, **kwargs)
    except (TypeError, ValueError) as error:  # an argument the model does not take
        raise ConfigError(f"{PREFIX}{name}: {error}") from None
    except RuntimeError as error:  # a cached weights file that is cut short or corrupt
        raise ConfigError(f"model_args.weights={value}: {PREFIX}{name}: {error}") from None
    return as_classifier(model, name, num_classes, in_channels, new_head=weights is not None)


def as_classifier(
    model: nn.Module, name: str, num_classes: int, in_channels: int, new_head: bool = False
) -> TorchvisionClassifier:
    """torchvision's ``model`` behind the kdgen interface: its input conv adapted to
    ``in_channels``, its final Linear moved to ``fc`` (a new one of ``num_classes`` outputs
    if ``new_head``); ``model`` is changed in place."""
    if in_channels != 3:
        _swap_input_conv(model, in_channels, name)
    found = _last_linear(model)
    if found is None or (not new_head and found[1].out_features != num_classes):
        raise ConfigError(f"tv:{name} has no final nn.Linear classifier; kdgen cannot use it")
    dotted, fc = found
    if new_head:  # a new head for this data set's classes
        fc = nn.Linear(fc.in_features, num_classes, bias=fc.bias is not None)
    _set_submodule(model, dotted, nn.Identity())
    return TorchvisionClassifier(model, fc)


def pretrained_torchvision(name: str) -> Pretrained:
    """torchvision's default pretrained weights of ``name`` with their own classifier (a
    patriarch), in torch hub's cache; built as torchvision builds the model, loaded
    strictly, then given the kdgen interface."""
    import torchvision

    _check_name(name)
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise ConfigError(f"{PREFIX}{name} has no pretrained weights in torchvision") from None
    classes = len(weights.meta["categories"])
    file = cached_weights_file(weights)

    def build(state: dict[str, torch.Tensor], **args: object) -> nn.Module:
        try:
            model = torchvision.models.get_model(name, weights=None, num_classes=classes, **args)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{PREFIX}{name}: {error}") from None
        model.load_state_dict(state)
        return as_classifier(model, name, classes, 3)

    expected = f"{file} (torchvision's cache: TORCH_HOME/hub/checkpoints)"
    return Pretrained("torchvision", classes, 3, file if file.is_file() else None, expected, build)


register_prefix(
    PrefixSource(
        PREFIX,
        create_torchvision_model,
        torchvision_names,
        "any torchvision classification model, e.g. tv:resnet18",
        pretrained=pretrained_torchvision,
    )
)

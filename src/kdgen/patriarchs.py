"""Generation 0 loaded, not trained: ``patriarch=`` (docs/method.md, "Training in generations").

:func:`load_patriarch` turns the config's ``patriarch`` into a loaded model of the config's
``model`` (:func:`kdgen.provenance.patriarch_file` tells which source it names, and
:func:`kdgen.provenance.read_patriarch` what the run records of it). Four sources:

- a kdgen run folder, or its ``checkpoints/gen0.pt``: refused unless that run trained its
  generation 0 exactly as this run would (:func:`kdgen.policy.patriarch_mismatch`);
- a weights file: a state_dict saved with ``torch.save`` (read with ``weights_only``: a
  pickle that needs code to load is refused) or a ``.safetensors`` file;
- ``tv:<name>``: torchvision's pretrained weights of ``<name>``, read from torch hub's
  cache (``TORCH_HOME/hub/checkpoints``);
- ``timm:<name>``: timm's pretrained weights, read from the Hugging Face cache (or torch
  hub's, for timm's older URL weights).

Nothing is downloaded: pretrained weights that are not on the machine are refused with the
place kdgen looked. External weights are loaded strictly, and the model's number of
outputs must be the data's number of classes.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdgen.build import build_model, load_weights, run_numerics
from kdgen.config import Config
from kdgen.data import DataSource
from kdgen.errors import CheckpointError, describe
from kdgen.models import pretrained_weights
from kdgen.policy import patriarch_mismatch
from kdgen.precision import Numerics
from kdgen.provenance import patriarch_file, patriarch_paths, run_digest, warn_patriarch
from kdgen.runs import RunFolder, check_identity, load_checkpoint


@dataclass
class Patriarch:
    """M_0, and its training metrics and epochs (a kdgen run's own; None and 0 for weights
    trained elsewhere). ``has_ema``: the EMA of its weights can be loaded too (a kdgen
    run's ``gen0-ema.pt``)."""

    model: nn.Module
    train: dict[str, Any] | None = None
    epochs: int = 0
    has_ema: bool = False


def load_patriarch(
    config: Config,
    dataset: DataSource,
    device: torch.device,
    numerics: Numerics,
    ema: bool = False,
) -> Patriarch:
    """The patriarch ``config.patriarch`` names, as a model of ``config.model`` on
    ``device`` in the layout of ``numerics`` (see the module's docstring for the sources);
    with ``ema``, the EMA of a kdgen run's patriarch (``gen0-ema.pt`` beside it)."""
    kind, path = patriarch_file(config)
    if kind == "run":
        run_dir, checkpoint = patriarch_paths(config)
        if not checkpoint.is_file():
            raise CheckpointError(
                f"patriarch={config.patriarch}: {checkpoint} does not exist; give a run folder "
                "whose generation 0 is trained, or its checkpoints/gen0.pt"
            )
        if ema:
            checkpoint = checkpoint.with_name(
                RunFolder(run_dir).generation_checkpoint(0, ema=True).name
            )
        return _from_run(config, dataset, device, numerics, run_dir, checkpoint)
    if ema:
        raise CheckpointError(f"patriarch={config.patriarch} has no EMA of its weights")
    if kind != "weights":
        return _pretrained(config, dataset, device, numerics.channels_last, path)
    model = build_model(config, dataset, 0, device, numerics.channels_last)
    state = read_weights(path)
    _check_outputs(_output_count(model, state), dataset, config, f"patriarch {path}")
    load_weights(model, state, f"patriarch {path}", config.model)
    return Patriarch(model)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a ``.safetensors`` file or a ``torch.save`` file (weights only)."""
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"patriarch {path} is a pickle that needs code to load, which kdgen does not run "
            "(torch.load weights_only); save the model's state_dict() instead"
        ) from None
    except Exception as error:
        raise CheckpointError(f"patriarch {path} cannot be read ({describe(error)})") from None
    if isinstance(loaded, Mapping) and {"format", "sha256", "payload"} <= loaded.keys():
        raise CheckpointError(
            f"patriarch {path} is a kdgen checkpoint without its run folder; pass the run "
            "folder (with its config.yaml), which kdgen checks against this run"
        )
    if not (
        isinstance(loaded, Mapping)
        and loaded
        and all(isinstance(value, torch.Tensor) for value in loaded.values())
    ):
        raise CheckpointError(
            f"patriarch {path} holds no state_dict (a mapping of parameter names to tensors)"
        )
    return dict(loaded)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(
            f"patriarch {path} needs safetensors: pip install 'kdgen[export]'"
        ) from None
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(
            f"patriarch {path} is not a readable safetensors file ({describe(error)})"
        ) from None


def _output_count(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """The number of outputs ``state`` gives ``model``: the rows of its classifier's weight
    (``fc``, else its last Linear layer; None where ``state`` lacks it: the strict load
    names that)."""
    classifier = getattr(model, "fc", None)
    if not isinstance(classifier, nn.Linear):
        linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
        classifier = linears[-1] if linears else None
    if classifier is None:
        return None
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    weight = state.get(names.get(id(classifier.weight), ""))
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


def _check_outputs(outputs: int | None, dataset: DataSource, config: Config, what: str) -> None:
    if outputs is not None and outputs != dataset.num_classes:
        raise CheckpointError(
            f"{what} outputs {outputs} classes, but the data ({config.data.name}) has "
            f"{dataset.num_classes}; a patriarch must classify the run's own classes"
        )


def _pretrained(
    config: Config, dataset: DataSource, device: torch.device, channels_last: bool, path: Path
) -> Patriarch:
    """``tv:<name>`` / ``timm:<name>`` with the library's pretrained weights, read from
    ``path`` in its cache."""
    source = pretrained_weights(config.model)
    what = f"patriarch={config.model}"
    _check_outputs(source.num_classes, dataset, config, what)
    if dataset.in_channels != source.in_channels:
        raise CheckpointError(
            f"{what} takes {source.in_channels}-channel images, but the data "
            f"({config.data.name}) has {dataset.in_channels} channels"
        )
    state = read_weights(path)
    try:
        pretrained = source.build(state, **config.model_args)
    except RuntimeError as error:  # the libraries' own strict loads
        raise CheckpointError(f"{what}: {path} does not fit it ({describe(error)})") from None
    model = build_model(config, dataset, 0, device, channels_last)
    load_weights(model, pretrained.state_dict(), what, config.model)
    return Patriarch(model)


def _from_run(
    config: Config,
    dataset: DataSource,
    device: torch.device,
    numerics: Numerics,
    run_dir: Path,
    checkpoint: Path,
) -> Patriarch:
    """M_0 of another kdgen run, refused unless that run's generation 0 was trained exactly
    as this run would train it."""
    payload = load_checkpoint(checkpoint)
    _check_run(config, run_dir, payload, device, numerics)
    expected = {"num_classes": dataset.num_classes, "in_channels": dataset.in_channels}
    check_identity(payload, expected, "patriarch", checkpoint)
    model = build_model(config, dataset, 0, device, numerics.channels_last)
    model.load_state_dict(payload["model"])
    return Patriarch(model, *_run_training(run_dir), has_ema=True)


def _check_run(
    config: Config, run_dir: Path, payload: dict[str, Any], device: torch.device, numerics: Numerics
) -> None:
    """Refuse a patriarch that is not the one this run would train (exit 2, one line): its
    numerics are those its run.json recorded, resolved as a resume of it would."""
    folder = RunFolder(run_dir)
    if not folder.config_path.exists():
        raise CheckpointError(
            f"patriarch {run_dir} cannot be checked: it has no config.yaml beside its checkpoints"
        )
    trained, recorded = folder.read_config(), folder.read_state()
    if payload.get("config_hash") != run_digest(trained, recorded):
        raise CheckpointError(
            f"patriarch {run_dir}: its gen0 checkpoint does not belong to its config.yaml"
        )
    their_numerics = run_numerics(trained, device, recorded)
    mismatch = patriarch_mismatch(trained, their_numerics, config, numerics)
    if mismatch:
        raise CheckpointError(f"patriarch {run_dir} does not match this run: {mismatch}")
    warn_patriarch(run_dir, recorded, device)


def _run_training(run_dir: Path) -> tuple[dict[str, Any] | None, int]:
    """The training metrics and epochs of a shared patriarch, from its own run's summary."""
    summary = RunFolder(run_dir).read_summary() or {"generations": []}
    for entry in summary["generations"]:
        if entry["generation"] == 0:
            return entry.get("train"), entry.get("epochs", 0)
    return None, 0

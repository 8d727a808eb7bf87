"""Transfer feature extraction (docs/method.md, "Transfer feature extraction").

Each generation of a finished run is used as a frozen feature extractor on a second data
set: its penultimate features (``forward_features``; for a model without it, the input of
its final ``nn.Linear``) of the second set's training and test images are standardised
with the training features' mean and std, a multinomial logistic regression is fitted on
the training features, and its test accuracy is reported per generation.

The second set is adapted to the run's input on the device, batch by batch: the images are
normalised with the *second* set's own per-channel mean and std, a 1-channel set is
repeated to the model's channels (a 3-channel set fed to a 1-channel model is averaged to
grey), and a set of another spatial size is resized bilinearly to the run's image size.

The classifier is scikit-learn's ``LogisticRegression`` when scikit-learn is installed (the
``kdgen[transfer]`` extra), otherwise an equivalent float64 full-batch L-BFGS in torch that
minimises sklearn's objective, ``mean cross-entropy + ||W||^2 / (2 C N)`` (bias not
penalised). Results go to ``transfer-<data>.json`` in the run folder, one file per second
data set, so transfers to several sets sit side by side and a rerun replaces its own file.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kdgen.build import image_hw, load_data, load_model, resolve_device
from kdgen.config import Config, model_of
from kdgen.data import DeviceLoader, ImageDataset, ImageSplit, load_dataset
from kdgen.data.split import stratified_subset
from kdgen.errors import ConfigError, DataError
from kdgen.policy import stage_kind
from kdgen.precision import resolve_channels_last
from kdgen.runs import RunFolder, atomic_write_json
from kdgen.seeding import derive_seed

__all__ = [
    "InputAdapter",
    "LinearProbe",
    "extract_features",
    "fit_logistic_torch",
    "fit_probe",
    "format_transfer_table",
    "penultimate_features",
    "standardize",
    "transfer_path",
    "transfer_run",
]

CLASSIFIERS = ("auto", "sklearn", "torch-lbfgs")


# ------------------------------------------------------------------------ input adaptation


@dataclass(frozen=True)
class InputAdapter:
    """Turns normalised batches of the second data set into the model's input shape."""

    in_channels: int
    image_size: tuple[int, int]
    channels_last: bool = False

    def describe(self, channels: int, size: tuple[int, int]) -> dict[str, Any]:
        """What is done to images of ``channels`` x ``size`` (for the result file)."""
        self.check(channels)
        if channels == self.in_channels:
            how = "as is"
        elif channels == 1:
            how = f"grey repeated to {self.in_channels}"
        else:
            how = f"{channels} channels averaged to grey"
        return {
            "channels": how,
            "resize": None
            if tuple(size) == self.image_size
            else [list(size), list(self.image_size)],
        }

    def check(self, channels: int) -> None:
        if channels != self.in_channels and 1 not in (channels, self.in_channels):
            raise DataError(
                f"cannot feed {channels}-channel images to a {self.in_channels}-channel model "
                "(only 1 <-> C channel changes are supported)"
            )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: normalised float (N, C, H, W) -> (N, in_channels, *image_size)."""
        channels = images.shape[1]
        if channels != self.in_channels:
            self.check(channels)
            if channels == 1:
                images = images.expand(-1, self.in_channels, -1, -1)
            else:
                images = images.mean(dim=1, keepdim=True)
        if tuple(images.shape[2:]) != self.image_size:
            # Bilinear weights sum to one, so resizing commutes with the normalisation.
            images = F.interpolate(
                images, size=self.image_size, mode="bilinear", align_corners=False, antialias=True
            )
        images = images.contiguous(
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )
        return images


def penultimate_features(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function giving ``model``'s penultimate features: its ``forward_features``, or
    for a model without one the input of the last ``nn.Linear`` that runs, provided that
    layer's output is the model's output (its classifier); else a ConfigError."""
    forward_features = getattr(model, "forward_features", None)
    if callable(forward_features):
        return forward_features  # type: ignore[no-any-return]
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    name = type(model).__name__
    if not linears:
        raise ConfigError(
            f"kdgen transfer needs the penultimate features of {name}, which has neither a "
            "forward_features method nor an nn.Linear classifier; give it forward_features(x)"
        )

    def features(images: torch.Tensor) -> torch.Tensor:
        calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        hooks = [
            linear.register_forward_hook(
                lambda _, inputs, output: calls.append((inputs[0], output))
            )
            for linear in linears
        ]
        try:
            logits = model(images)
        finally:
            for hook in hooks:
                hook.remove()
        if not calls or calls[-1][1] is not logits:
            raise ConfigError(
                f"kdgen transfer needs the penultimate features of {name}: it has no "
                "forward_features method and its output is not that of its last nn.Linear; "
                "give it forward_features(x)"
            )
        return calls[-1][0]

    return features


@torch.inference_mode()
def extract_features(
    model: torch.nn.Module, loader: DeviceLoader, adapter: InputAdapter
) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (N, D) as float32 and labels (N,) of every batch, on the device
    (see :func:`penultimate_features`)."""
    model.eval()
    forward_features = penultimate_features(model)
    features, labels = [], []
    for images, targets in loader:
        features.append(forward_features(adapter(images)).float().flatten(1))
        labels.append(targets)
    return torch.cat(features), torch.cat(labels)


def standardize(
    train: torch.Tensor, test: torch.Tensor, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets in float64, centred and scaled by the training features' mean/std.

    Features constant on the training set (std <= eps, e.g. dead ReLUs) are only centred.
    """
    train, test = train.double(), test.double()
    mean = train.mean(dim=0)
    std = train.std(dim=0, unbiased=False)
    std = torch.where(std > eps, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


# ------------------------------------------------------------------------ linear probe


@dataclass
class LinearProbe:
    """A fitted multinomial logistic regression over the classes seen in training."""

    predict: Callable[[torch.Tensor], torch.Tensor]
    classifier: str
    converged: bool
    iterations: int
    weight: torch.Tensor  # (D, K) float64, K = number of training classes
    bias: torch.Tensor  # (K,)


def fit_logistic_torch(
    features: torch.Tensor, labels: torch.Tensor, C: float = 1.0, max_iter: int = 1000
) -> LinearProbe:
    """Multinomial logistic regression by full-batch L-BFGS in float64.

    Minimises ``mean_i CE(W x_i + b, y_i) + ||W||^2 / (2 C N)``, which is scikit-learn's
    objective ``C * sum_i CE_i + ||W||^2 / 2`` divided by ``C N``: the same minimiser.
    """
    x = features.double()
    classes, y = torch.unique(labels, return_inverse=True)
    count, dim = x.shape
    weight = torch.zeros(dim, len(classes), dtype=torch.float64, device=x.device)
    bias = torch.zeros(len(classes), dtype=torch.float64, device=x.device)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1,
        max_iter=max_iter,
        max_eval=max_iter * 2,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )
    penalty = 1 / (2 * C * count)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    iterations = int(optimizer.state[weight].get("n_iter", 0))
    weight, bias = weight.detach(), bias.detach()

    def predict(test: torch.Tensor) -> torch.Tensor:
        return classes[(test.double() @ weight + bias).argmax(dim=1)]

    return LinearProbe(predict, "torch-lbfgs", iterations < max_iter, iterations, weight, bias)


def _fit_logistic_sklearn(
    features: torch.Tensor, labels: torch.Tensor, C: float, max_iter: int
) -> LinearProbe:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(features.cpu().double().numpy(), labels.cpu().numpy())
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)

    def predict(test: torch.Tensor) -> torch.Tensor:
        predicted = model.predict(test.cpu().double().numpy())
        return torch.as_tensor(predicted, device=test.device)

    weight = torch.as_tensor(model.coef_).T
    bias = torch.as_tensor(model.intercept_)
    if weight.shape[1] == 1:  # two classes: sklearn keeps one logit, the other is zero
        weight = torch.cat([torch.zeros_like(weight), weight], dim=1)
        bias = torch.cat([torch.zeros_like(bias), bias])
    return LinearProbe(predict, "sklearn", converged, int(model.n_iter_.max()), weight, bias)


def sklearn_available() -> bool:
    try:
        import sklearn.linear_model  # noqa: F401
    except ImportError:
        return False
    return True


def fit_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    C: float = 1.0,
    max_iter: int = 1000,
    classifier: str = "auto",
) -> LinearProbe:
    """Fit the linear probe with ``classifier``: "sklearn", "torch-lbfgs", or "auto" (sklearn
    when importable, else torch). The two minimise the same objective for three or more
    classes; for two, sklearn fits a binomial model (one logit), the torch one a softmax."""
    if classifier not in CLASSIFIERS:
        raise ConfigError(f"classifier='{classifier}' must be one of {', '.join(CLASSIFIERS)}")
    if classifier == "auto":
        classifier = "sklearn" if sklearn_available() else "torch-lbfgs"
    if classifier == "sklearn":
        if not sklearn_available():
            raise ConfigError(
                "classifier='sklearn' needs scikit-learn: pip install 'kdgen[transfer]'"
            )
        return _fit_logistic_sklearn(features, labels, C, max_iter)
    return fit_logistic_torch(features, labels, C, max_iter)


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predicted.to(labels.device) == labels).double().mean()) if len(labels) else 0.0


# ------------------------------------------------------------------------ a run


def transfer_path(run_dir: str | Path, data: str) -> Path:
    """Where :func:`transfer_run` writes its results: ``<run>/transfer-<data>.json``."""
    return Path(run_dir) / f"transfer-{data.replace('/', '_')}.json"


def _check_settings(
    train_subset: int | None, test_subset: int | None, C: float, max_iter: int
) -> None:
    for name, value in (("train_subset", train_subset), ("test_subset", test_subset)):
        if value is not None and value < 1:
            raise ConfigError(f"{name}={value} must be a positive number of images")
    if not (C > 0 and math.isfinite(C)):
        raise ConfigError(f"C={C} must be a positive finite number")
    if max_iter < 1:
        raise ConfigError(f"max_iter={max_iter} must be at least 1")


def _check_subsets_hold_every_class(
    target: ImageDataset, train_subset: int | None, test_subset: int | None
) -> None:
    """A stratified subset smaller than the classes leaves some out: the probe would never
    learn them, or the test would never ask for them."""
    for name, value in (("train_subset", train_subset), ("test_subset", test_subset)):
        if value is not None and value < target.num_classes:
            raise ConfigError(
                f"{name}={value} is smaller than the {target.num_classes} classes of "
                f"{target.name}, so some classes would be left out; take at least "
                f"{target.num_classes} images (or all: leave it unset)"
            )


def _subset(split: ImageSplit, size: int | None, seed: int) -> ImageSplit:
    return split if size is None else stratified_subset(split, size, seed)


def _probe_generation(
    model: torch.nn.Module,
    loaders: tuple[DeviceLoader, DeviceLoader],
    adapter: InputAdapter,
    settings: dict[str, Any],
) -> tuple[dict[str, Any], LinearProbe, int]:
    train_x, train_y = extract_features(model, loaders[0], adapter)
    test_x, test_y = extract_features(model, loaders[1], adapter)
    train_x, test_x = standardize(train_x, test_x)
    probe = fit_probe(train_x, train_y, **settings)
    entry = {
        "test_top1": accuracy(probe.predict(test_x), test_y),
        "train_top1": accuracy(probe.predict(train_x), train_y),
        "converged": probe.converged,
        "iterations": probe.iterations,
    }
    return entry, probe, int(train_x.shape[1])


def transfer_run(
    run_dir: str | Path,
    data: str,
    *,
    root: str | None = None,
    download: bool = False,
    options: dict[str, Any] | None = None,
    device: str = "auto",
    train_subset: int | None = None,
    test_subset: int | None = None,
    max_iter: int = 1000,
    C: float = 1.0,
    seed: int = 0,
    batch_size: int = 500,
    classifier: str = "auto",
) -> dict[str, Any]:
    """Linear-probe every saved generation (or snapshot cycle) of a run on ``data``.

    ``options`` go to the data set's loader (the synthetic set's generator arguments, e.g.
    ``{"seed": 1, "train_per_class": 20}``); ``train_subset``/``test_subset`` take stratified
    subsets chosen by ``seed``. Writes and returns ``transfer-<data>.json`` (see
    :func:`transfer_path`). Raises RunDirError for a folder without a run or checkpoints
    and ConfigError for an unknown data set or bad settings.
    """
    _check_settings(train_subset, test_subset, C, max_iter)
    if classifier not in CLASSIFIERS:
        raise ConfigError(f"classifier='{classifier}' must be one of {', '.join(CLASSIFIERS)}")
    folder = RunFolder(run_dir)
    generations = folder.require_generations()
    config = folder.read_config()
    source = load_data(config)  # imports the run's modules: the target may be a user's data set
    target = load_dataset(data, root, download, **(options or {}))
    _check_subsets_hold_every_class(target, train_subset, test_subset)
    if not hasattr(source, "image_size"):
        raise ConfigError(
            f"kdgen transfer probes models of images; the data of {folder.path} "
            f"({config.data.name}) are not images of one size"
        )
    torch_device = resolve_device(device)
    adapter = InputAdapter(
        source.in_channels,
        image_hw(source),
        resolve_channels_last(config.channels_last, torch_device),
    )
    adaptation = adapter.describe(target.in_channels, target.image_size)
    train = _subset(target.train, train_subset, derive_seed("transfer-train", seed))
    test = _subset(target.test, test_subset, derive_seed("transfer-test", seed))
    loaders = _loaders(target, train, test, batch_size, torch_device)
    settings = {"C": C, "max_iter": max_iter, "classifier": classifier}
    result = _header(data, config, target, train, test, adaptation, settings, seed)
    kind = stage_kind(config)
    for generation in generations:
        model = load_model(folder, config, source, generation, torch_device)
        name = model_of(config, generation)
        entry, probe, dim = _probe_generation(model, loaders, adapter, settings)
        entry = {"generation": generation, "stage": kind, "model": name, **entry}
        result["generations"].append(entry)
        result["classifier"], result["feature_dim"] = probe.classifier, dim
        del model
    atomic_write_json(transfer_path(folder.path, data), result)
    return result


def _loaders(
    target: ImageDataset,
    train: ImageSplit,
    test: ImageSplit,
    batch_size: int,
    device: torch.device,
) -> tuple[DeviceLoader, DeviceLoader]:
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"{target.name}: the transfer needs training and test images")
    common = {"mean": target.mean, "std": target.std, "device": device, "channels_last": False}
    return DeviceLoader(train, batch_size, **common), DeviceLoader(test, batch_size, **common)


def _header(
    data: str,
    config: Config,
    target: ImageDataset,
    train: ImageSplit,
    test: ImageSplit,
    adaptation: dict[str, Any],
    settings: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    return {
        "data": data,
        "classifier": None,
        "train_size": len(train),
        "test_size": len(test),
        "num_classes": target.num_classes,
        "feature_dim": None,
        "run_data": config.data.name,
        "model": config.model,
        "process": config.process,
        "adaptation": adaptation,
        "C": settings["C"],
        "max_iter": settings["max_iter"],
        "seed": seed,
        "generations": [],
    }


def format_transfer_table(result: dict[str, Any]) -> str:
    """A Markdown table of a :func:`transfer_run` result: generation | test top-1."""
    lines = [
        f"Linear probe on {result['data']} ({result['classifier']}, "
        f"{result['train_size']} train / {result['test_size']} test images):",
        "| gen | test top-1 |",
        "|----:|-----------:|",
    ]
    lines += [f"| {g['generation']:>3} | {g['test_top1']:>10.4f} |" for g in result["generations"]]
    return "\n".join(lines)

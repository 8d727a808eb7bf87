"""Tests for the paper's networks: DenseNet-BC, Wide ResNets and ``timm:<name>`` models."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from kdgen.errors import ConfigError
from kdgen.models import create_model, densenet_bc, list_models, register_model, wide_resnet

# Exact counts for 10 and 100 classes, and the papers' figures (DenseNet: Huang et al. 2017,
# table 2; WRN: Zagoruyko & Komodakis 2016, table 1). The papers print one figure per network
# for both CIFAR-10 and CIFAR-100; it is the CIFAR-10 (10-class) count at the printed rounding.
# The 100-class counts round to the same figure except densenet_bc_190_40 (25.8M, not 25.6M)
# and wrn_40_2 (2.3M, not 2.2M): the larger classifier adds 0.2M and 12k parameters.
PARAMS = {
    "densenet_bc_100_12": (769_162, 800_032, 0.8e6),
    "densenet_bc_190_40": (25_624_430, 25_821_620, 25.6e6),
    "wrn_16_8": (10_961_370, 11_007_540, 11.0e6),
    "wrn_28_10": (36_479_194, 36_536_884, 36.5e6),
    "wrn_40_2": (2_243_546, 2_255_156, 2.2e6),
}
NEW_NAMES = sorted(PARAMS)
SMALL_MODELS = ["densenet_bc_100_12", "wrn_40_2", "wrn_16_8"]
# A small spatial size keeps the forward passes fast; both networks pool globally at the end.
SIZE = 8


def n_params(name: str, num_classes: int) -> int:
    """Number of learnable parameters, counted on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_list_models_includes_paper_networks() -> None:
    names = list_models()
    assert set(NEW_NAMES) <= set(names)
    assert not any(name.startswith("timm:") for name in names)


@pytest.mark.parametrize("name", NEW_NAMES)
def test_param_counts_match_papers(name: str) -> None:
    exact10, exact100, published = PARAMS[name]
    assert n_params(name, 100) == exact100
    count10 = n_params(name, 10)
    assert count10 == exact10
    assert round(count10 / 1e6, 1) == pytest.approx(published / 1e6)


@pytest.mark.parametrize("in_channels", [3, 1])
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_output_and_feature_shapes(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=100, in_channels=in_channels).eval()
    x = torch.randn(2, in_channels, SIZE, SIZE)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    assert logits.shape == (2, 100)
    assert features.shape == (2, model.num_features)
    assert isinstance(model.fc, nn.Linear)
    assert model.fc.in_features == model.num_features
    torch.testing.assert_close(model.fc(features), logits)


def test_feature_widths() -> None:
    with torch.device("meta"):
        assert create_model("densenet_bc_100_12", 100).num_features == 342
        assert create_model("densenet_bc_190_40", 100).num_features == 2190
        assert create_model("wrn_28_10", 100).num_features == 640
        assert create_model("wrn_40_2", 100).num_features == 128


def test_general_builders() -> None:
    with torch.device("meta"):
        dense = densenet_bc(40, 12, num_classes=10)
        wide = wide_resnet(22, 4, dropout=0.3, num_classes=10)
    assert [len(dense.features[i]) for i in (0, 2, 4)] == [6, 6, 6]
    assert len(wide.layer1) == len(wide.layer2) == len(wide.layer3) == 3
    assert wide.num_features == 256
    assert wide.layer1[0].dropout == 0.3
    # Only shape-changing blocks get a 1x1 conv shortcut (layer1 too: 16 -> 64 channels).
    assert [b.shortcut is not None for b in wide.layer1] == [True, False, False]
    assert [b.shortcut is not None for b in wide.layer2] == [True, False, False]


@pytest.mark.parametrize("depth", [0, 4, 15, 27, 101, -2, 28.0, True])
def test_wide_resnet_rejects_bad_depth(depth: object) -> None:
    with pytest.raises(ConfigError, match="6n\\+4"):
        wide_resnet(depth, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("depth", [0, 4, 12, 99, 40.0, True])
def test_densenet_rejects_bad_depth(depth: object) -> None:
    with pytest.raises(ConfigError, match="6n\\+4"):
        densenet_bc(depth, 12)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: wide_resnet(28, 0), "widen_factor"),
        (lambda: wide_resnet(28, 10, dropout=1.0), "dropout"),
        (lambda: densenet_bc(100, 0), "growth_rate"),
        (lambda: densenet_bc(100, 12, compression=0.0), "compression"),
    ],
)
def test_bad_hyperparameters(call: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()  # type: ignore[operator]


def test_timm_prefix_is_reserved() -> None:
    with pytest.raises(ValueError, match="reserved"):
        register_model("timm:mine")(lambda num_classes, in_channels: nn.Identity())


def test_timm_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes ``import timm`` raise ImportError
    with pytest.raises(ConfigError) as info:
        create_model("timm:resnet18", num_classes=10)
    assert str(info.value) == "timm:resnet18 needs timm: pip install 'kdgen[timm]'"


@pytest.mark.parametrize("in_channels", [3, 1])
@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_timm_model_interface(name: str, in_channels: int) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = create_model(f"timm:{name}", num_classes=7, in_channels=in_channels).eval()
    x = torch.randn(2, in_channels, 32, 32)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    assert logits.shape == (2, 7)
    assert features.shape == (2, model.num_features)
    assert isinstance(model.fc, nn.Linear)
    assert model.fc is model.model.get_classifier()
    assert model.fc.in_features == model.num_features
    torch.testing.assert_close(model.fc(features), logits)
    # The classifier is not registered twice.
    reference = timm.create_model(name, num_classes=7, in_chans=in_channels)
    assert len(model.state_dict()) == len(reference.state_dict())


def test_timm_unknown_name_suggests() -> None:
    pytest.importorskip("timm")
    with pytest.raises(ConfigError, match=r"unknown timm model 'timm:resnet_18'.*timm:resnet18"):
        create_model("timm:resnet_18", num_classes=10)

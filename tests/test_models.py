"""Tests for kdgen.models: registry, CIFAR ResNets, the tiny CNN and torchvision models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdgen.errors import ConfigError
from kdgen.models import cifar_resnet, create_model, list_models, register_model

# Exact counts for 10 classes with option-A shortcuts, and He et al. 2016's table 6 figures.
PARAMS = {
    "resnet20": (269_722, 0.27e6),
    "resnet32": (464_154, 0.46e6),
    "resnet44": (658_586, 0.66e6),
    "resnet56": (853_018, 0.85e6),
    "resnet110": (1_727_962, 1.7e6),
}
FAST_MODELS = ["resnet8", "resnet20", "tiny_cnn"]


def n_params(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_list_models() -> None:
    names = list_models()
    assert [n for n in names if n.startswith("resnet")] == [
        f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)
    ]
    assert "tiny_cnn" in names


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_cifar_resnet_param_counts(name: str) -> None:
    exact, published = PARAMS[name]
    count = n_params(create_model(name, num_classes=10))
    assert count == exact
    # The paper rounds to the digits it prints: 0.27M, ..., 1.7M.
    digits = 1 if published >= 1e6 else 2
    assert round(count / 1e6, digits) == pytest.approx(published / 1e6)


@pytest.mark.parametrize("depth", [0, 2, 7, 9, 21, -4, 20.0, True])
def test_cifar_resnet_rejects_bad_depth(depth: object) -> None:
    with pytest.raises(ConfigError, match="6n\\+2"):
        cifar_resnet(depth)  # type: ignore[arg-type]


def test_cifar_resnet_depth_builds_layers() -> None:
    model = cifar_resnet(14, num_classes=5)
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 2
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 14  # stem + 6n block convs (n = 2), plus the fc layer
    assert model.fc.out_features == 5


@pytest.mark.parametrize("in_channels", [3, 1])
@pytest.mark.parametrize("name", FAST_MODELS)
def test_output_and_feature_shapes(name: str, in_channels: int) -> None:
    model = create_model(name, num_classes=7, in_channels=in_channels).eval()
    x = torch.randn(4, in_channels, 32, 32)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
    assert logits.shape == (4, 7)
    assert feats.shape == (4, model.num_features)
    assert isinstance(model.fc, nn.Linear)
    assert model.fc.in_features == model.num_features
    torch.testing.assert_close(model.fc(feats), logits)


def test_grayscale_28px_input() -> None:
    model = create_model("resnet8", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet8", "tiny_cnn", "tv:resnet18"])
def test_channels_last(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 10)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_tiny_cnn_is_small() -> None:
    assert n_params(create_model("tiny_cnn", num_classes=10)) < 100_000


def test_tiny_cnn_widths_set_its_layers() -> None:
    # conv weights 1*8*9 + 8*16*9, BatchNorm 2*(8+16), linear 16*10 + 10
    model = create_model("tiny_cnn", num_classes=10, in_channels=1, widths=[8, 16])
    assert n_params(model) == 72 + 1152 + 48 + 170
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert model.num_features == 16


@pytest.mark.parametrize("widths", [[], [8, 0], [8, 2.5]])
def test_tiny_cnn_refuses_bad_widths(widths: list[object]) -> None:
    with pytest.raises(ConfigError, match="widths"):
        create_model("tiny_cnn", num_classes=10, widths=widths)


@pytest.mark.slow
def test_tiny_cnn_overfits_small_batch() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 3, 16, 16)
    y = torch.randint(0, 10, (64,))
    model = create_model("tiny_cnn", num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.9


def test_torchvision_resnet18() -> None:
    model = create_model("tv:resnet18", num_classes=10)
    # torchvision's resnet18 with 1000 classes: 11,689,512; the 512x1000 head becomes 512x10.
    assert n_params(model) == 11_689_512 - 513 * 1000 + 513 * 10
    assert model.num_features == 512
    assert model.fc.out_features == 10
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        assert model.forward_features(x).shape == (2, 512)


def test_torchvision_grayscale() -> None:
    model = create_model("tv:resnet18", num_classes=10, in_channels=1).eval()
    assert model.body.conv1.in_channels == 1
    assert model.body.conv1.kernel_size == (7, 7)
    assert model.body.conv1.stride == (2, 2)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_torchvision_nested_classifier() -> None:
    model = create_model("tv:mobilenet_v3_small", num_classes=4, in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features)
        torch.testing.assert_close(model.fc(feats), model(x))
    assert model(x).shape == (2, 4)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet21", "resnet20"),
        ("tiny-cnn", "tiny_cnn"),
        ("resnet18", "tv:resnet18"),
        ("tv:resnet19", "tv:resnet18"),
    ],
)
def test_unknown_name_suggests(name: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="did you mean") as info:
        create_model(name, num_classes=10)
    message = str(info.value)
    assert f"'{name}'" in message
    assert expected in message
    assert "\n" not in message


def test_unknown_name_without_close_match() -> None:
    with pytest.raises(ConfigError, match="unknown model 'zzz'") as info:
        create_model("zzz", num_classes=10)
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize(("num_classes", "in_channels"), [(0, 3), (-1, 3), (10, 0), (10, -2)])
@pytest.mark.parametrize("name", ["resnet8", "tiny_cnn", "tv:resnet18"])
def test_bad_sizes_rejected(name: str, num_classes: int, in_channels: int) -> None:
    with pytest.raises(ConfigError, match=">= 1"):
        create_model(name, num_classes=num_classes, in_channels=in_channels)


def test_register_model_adds_a_family() -> None:
    @register_model("test_linear_probe")
    def factory(num_classes: int, in_channels: int) -> nn.Module:
        return create_model("tiny_cnn", num_classes, in_channels)

    from kdgen.models import registry

    try:
        assert "test_linear_probe" in list_models()
        assert create_model("test_linear_probe", 3).fc.out_features == 3
        with pytest.raises(ValueError, match="twice"):
            register_model("test_linear_probe")(factory)
    finally:
        registry._REGISTRY.pop("test_linear_probe")

"""The model registry's prefix table, model arguments from the config, and ``kdgen models``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from kdgen.cli import main
from kdgen.config import build_config, config_hash
from kdgen.errors import ConfigError
from kdgen.models import PrefixSource, create_model, prefix_sources, register_model, registry
from tests.helpers import SMOKE_CONFIG_HASH


def _dropouts(model: nn.Module) -> set[float]:
    return {m.dropout for m in model.modules() if isinstance(getattr(m, "dropout", None), float)}


@pytest.mark.parametrize("name", ["wrn_16_8", "densenet_bc_100_12"])
def test_model_args_reach_the_factory(name: str) -> None:
    with torch.device("meta"):  # no memory, no init cost
        assert _dropouts(create_model(name, 10)) == {0.0}
        assert _dropouts(create_model(name, 10, dropout=0.3)) == {0.3}


def test_model_args_come_from_the_config() -> None:
    config = build_config("smoke", ["model=wrn_40_2", "model_args.dropout=0.2"])
    assert config.model_args == {"dropout": 0.2}
    with torch.device("meta"):
        assert _dropouts(create_model(config.model, 10, **config.model_args)) == {0.2}


def test_empty_model_args_keep_the_hash_of_older_runs() -> None:
    config = build_config("smoke")
    assert config.model_args == {}
    with_args = build_config("smoke", ["model_args.dropout=0.0"])
    assert config_hash(with_args) != config_hash(config)
    assert config_hash(config) == SMOKE_CONFIG_HASH  # computed before model_args existed
    assert config_hash(build_config("smoke", ["model_args={}"])) == SMOKE_CONFIG_HASH


def test_an_argument_the_model_does_not_take_is_refused() -> None:
    with pytest.raises(ConfigError, match="model resnet20 takes no argument dropout"):
        create_model("resnet20", 10, dropout=0.1)
    with pytest.raises(ConfigError, match=r"takes no argument width \(it takes: dropout\)"):
        create_model("wrn_16_8", 10, width=3)
    with pytest.raises(ConfigError, match="dropout must be a number in"):
        create_model("wrn_40_2", 10, dropout=1.5)


def test_a_prefix_source_is_one_table_entry() -> None:
    built: list[tuple[str, int, int, dict[str, object]]] = []

    def create(name: str, num_classes: int, in_channels: int, **args: object) -> nn.Module:
        built.append((name, num_classes, in_channels, args))
        return create_model("tiny_cnn", num_classes, in_channels)

    source = PrefixSource("test:", create, lambda: ["small"], "test models")
    registry.register_prefix(source)
    try:
        assert source in prefix_sources()
        assert create_model("test:small", 4, 1, depth=2).fc.out_features == 4
        assert built == [("small", 4, 1, {"depth": 2})]
        with pytest.raises(ValueError, match="twice"):
            registry.register_prefix(source)
        with pytest.raises(ValueError, match="reserved"):
            register_model("test:other")(lambda num_classes, in_channels: nn.Identity())
    finally:
        registry._PREFIXES.pop("test:")


def test_kdgen_models_lists_every_source(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("timm")
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "resnet56" in lines
    assert any(line.startswith("tv:<name>") for line in lines)
    assert any(line.startswith("timm:<name>") for line in lines)
    assert main(["models", "--all"]) == 0
    every = capsys.readouterr().out.split()
    assert {"resnet56", "tv:resnet18", "timm:resnet18"} <= set(every)


def test_torchvision_weights_are_refused_naming_the_key_unless_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match=r"model_args.weights=DEFAULT: .* not on this machine"):
        create_model("tv:shufflenet_v2_x0_5", 10, weights="DEFAULT")
    with pytest.raises(ConfigError, match=r"model_args.weights=V9: .* has weights IMAGENET1K_V1"):
        create_model("tv:shufflenet_v2_x0_5", 10, weights="V9")


def test_cached_torchvision_weights_start_the_body_and_the_head_is_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision

    from kdgen.models.torchvision_models import cached_weights_file, local_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    imagenet = torchvision.models.get_model("shufflenet_v2_x0_5", weights=None)
    weights = torchvision.models.get_model_weights("shufflenet_v2_x0_5")["DEFAULT"]
    path = cached_weights_file(weights)
    path.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), path)  # stands in for the downloaded file
    assert local_weights("shufflenet_v2_x0_5", "ShuffleNet_V2_X0_5_Weights.DEFAULT") == weights
    model = create_model("tv:shufflenet_v2_x0_5", 10, weights="DEFAULT")
    body = model.body.state_dict()
    expected = {k: v for k, v in imagenet.state_dict().items() if not k.startswith("fc.")}
    assert body.keys() == expected.keys()
    assert all(torch.equal(body[k], v) for k, v in expected.items())
    assert model.fc.out_features == 10 and model.fc.in_features == imagenet.fc.in_features

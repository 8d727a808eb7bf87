"""A patriarch trained elsewhere: ``patriarch=`` a state_dict ``.pt``, a ``.safetensors``
file, or ``tv:<name>`` / ``timm:<name>`` pretrained weights from the libraries' caches. It is
read weights-only, loaded strictly, evaluated (not trained) and recorded with its SHA-256."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kdgen.cli import main
from kdgen.config import Config, build_config
from kdgen.data import ImageDataset, ImageSplit
from kdgen.errors import CheckpointError, ConfigError
from kdgen.generations import train_generations
from kdgen.models import create_model
from kdgen.patriarchs import load_patriarch
from kdgen.precision import Numerics
from kdgen.provenance import read_patriarch
from kdgen.runs import RunFolder, load_checkpoint
from tests.conftest import FAST

CPU = torch.device("cpu")
FP32 = Numerics("fp32", channels_last=False)


def _weights(num_classes: int = 100, seed: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return create_model("tiny_cnn", num_classes, 3).state_dict()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], expected[key]) for key in expected)


def _classes(count: int) -> ImageDataset:
    """A data set of ``count`` classes (two 3-channel images) for pretrained heads."""
    split = ImageSplit(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, count - 1]))
    names = [f"c{i}" for i in range(count)]
    return ImageDataset("many", split, split, names, (0.5,) * 3, (0.5,) * 3)


@pytest.mark.slow
def test_a_state_dict_patriarch_is_evaluated_not_trained(
    fast_config: Callable[..., Config], tmp_path: Path
) -> None:
    weights = tmp_path / "mine.pt"
    torch.save(_weights(), weights)
    run = train_generations(fast_config(f"patriarch={weights}", "schedule.epochs=1"))
    folder = RunFolder(run.path)
    assert not [r for r in folder.read_metrics() if r["generation"] == 0 and r["split"] == "train"]
    assert [r for r in folder.read_metrics() if r["generation"] == 1 and r["split"] == "train"]
    gen0 = run.summary["generations"][0]
    assert gen0["epochs"] == 0 and gen0["train"] is None and gen0["test"]["top1"] >= 0
    assert run.summary["patriarch"] == {
        "source": str(weights),
        "config_hash": None,  # no kdgen run trained it
        "sha256": _sha256(weights),
        "seeding": None,
        "kind": "weights",
    }
    _assert_same(load_checkpoint(folder.generation_checkpoint(0))["model"], _weights())


def test_a_safetensors_patriarch_is_loaded_strictly(
    fast_config: Callable[..., Config], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    weights = tmp_path / "mine.safetensors"
    save_file(_weights(), str(weights))
    config = fast_config(f"patriarch={weights}")
    patriarch = load_patriarch(config, _classes(100), CPU, FP32)
    _assert_same(patriarch.model.state_dict(), _weights())
    record = read_patriarch(config).record()
    assert (record["kind"], record["sha256"]) == ("weights", _sha256(weights))
    partial = {k: v for k, v in _weights().items() if not k.startswith("fc.")}
    save_file(partial, str(weights))
    with pytest.raises(CheckpointError, match=r"does not fit the model tiny_cnn: lacks fc\.weight"):
        load_patriarch(config, _classes(100), CPU, FP32)


def test_a_patriarch_of_another_class_count_is_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "ten.pt"
    torch.save(_weights(num_classes=10), weights)
    out = tmp_path / "run"
    assert main(["train", "smoke", *FAST, f"patriarch={weights}", "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert f"patriarch {weights} outputs 10 classes, but the data (synthetic) has 100" in message
    assert not out.exists()  # refused before the run folder is made


def test_a_pickle_that_needs_code_is_refused(
    fast_config: Callable[..., Config], tmp_path: Path
) -> None:
    whole = tmp_path / "model.pt"
    torch.save(create_model("tiny_cnn", 100, 3), whole)  # the module object, not its weights
    with pytest.raises(CheckpointError) as refused:
        load_patriarch(fast_config(f"patriarch={whole}"), _classes(100), CPU, FP32)
    message = str(refused.value)
    assert "is a pickle that needs code to load" in message and "\n" not in message


def test_a_pretrained_patriarch_names_the_model_too() -> None:
    refusal = r"set model=tv:resnet18 \(now model=tiny_cnn; the students' is student_model\)"
    with pytest.raises(ConfigError, match=refusal):
        build_config("smoke", ["patriarch=tv:resnet18"])
    # A smaller student of the pretrained patriarch is student_model's to say.
    config = build_config(
        "smoke", ["model=tv:resnet18", "patriarch=tv:resnet18", "student_model=tiny_cnn"]
    )
    assert config.student_model == "tiny_cnn"


TV_MODEL = "tv:shufflenet_v2_x0_5"  # a small torchvision classifier with a Linear head


def test_torchvision_weights_come_from_torch_hubs_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    config = build_config("smoke", [f"model={TV_MODEL}", f"patriarch={TV_MODEL}"])
    with pytest.raises(CheckpointError, match="not on this machine, and kdgen downloads nothing"):
        load_patriarch(config, _classes(1000), CPU, FP32)
    weights = torchvision.models.get_model_weights("shufflenet_v2_x0_5").DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    state = torchvision.models.get_model("shufflenet_v2_x0_5", weights=None).state_dict()
    torch.save(state, cached)
    with pytest.raises(CheckpointError, match="outputs 1000 classes, but the data"):
        load_patriarch(config, _classes(100), CPU, FP32)
    patriarch = load_patriarch(config, _classes(1000), CPU, FP32)
    loaded = patriarch.model.state_dict()
    assert torch.equal(loaded["fc.weight"], state["fc.weight"])
    assert torch.equal(loaded["body.conv1.0.weight"], state["conv1.0.weight"])
    record = read_patriarch(config).record()
    assert (record["source"], record["kind"], record["sha256"]) == (
        TV_MODEL,
        "torchvision",
        _sha256(cached),
    )


def test_timm_weights_come_from_the_hugging_face_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timm = pytest.importorskip("timm")
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    config = build_config("smoke", ["model=timm:test_resnet", "patriarch=timm:test_resnet"])
    with pytest.raises(CheckpointError, match=r"timm/test_resnet\.r160_in1k/model\.safetensors"):
        load_patriarch(config, _classes(1000), CPU, FP32)
    repo = tmp_path / "hf" / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    cached = repo / "snapshots" / "0123abcd" / "model.safetensors"
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    state = timm.create_model("test_resnet", pretrained=False).state_dict()
    save_file(state, str(cached))
    patriarch = load_patriarch(config, _classes(1000), CPU, FP32)
    loaded = patriarch.model.state_dict()
    assert all(torch.equal(loaded[f"model.{key}"], value) for key, value in state.items())
    record = read_patriarch(config).record()
    assert (record["kind"], record["sha256"]) == ("timm", _sha256(cached))

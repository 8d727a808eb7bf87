"""The user's own code from the command line: ``imports=[module, ...]`` registers models and
data sets through the public decorators, in ``kdgen train``, sweeps and evaluation."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kdgen import data
from kdgen.build import build_model, load_data
from kdgen.cli import main
from kdgen.config import Config, build_config
from kdgen.errors import CheckpointError, ConfigError
from kdgen.evaluation import evaluate_run
from kdgen.executors import TrainJob
from kdgen.generations import train_generations
from kdgen.models import registry
from kdgen.plugins import module_records
from kdgen.runs import load_checkpoint
from kdgen.sweep import plan_sweep
from kdgen.transfer import transfer_run
from tests.conftest import FAST

# What a user writes: a network of their own, registered under a name of their choice.
MY_MODELS = """
from torch import nn

import kdgen


class MyNet(nn.Module):
    def __init__(self, num_classes, in_channels, width=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.num_features = width
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x):
        return self.features(x)

    def forward(self, x):
        return self.fc(self.features(x))


@kdgen.register_model("my_net")
def my_net(num_classes, in_channels, **kwargs):
    return MyNet(num_classes, in_channels, **kwargs)
"""

# A data set of one's own: 2 classes of 1-channel 8x8 images, stripes or not.
MY_DATA = """
import torch

import kdgen
from kdgen.data import ImageSplit


@kdgen.register_dataset("plugin_stripes")
def plugin_stripes(request):
    images = torch.zeros(8, 1, 8, 8, dtype=torch.uint8)
    images[4:, :, ::2] = 200
    split = ImageSplit(images, torch.tensor([0] * 4 + [1] * 4))
    return kdgen.ImageDataset("plugin_stripes", split, split, ["flat", "striped"], (0.5,), (0.5,))


@kdgen.register_model("plugin_linear")
def plugin_linear(num_classes, in_channels):
    from kdgen.models import TinyCNN

    return TinyCNN(num_classes, in_channels)
"""

# A network that gives logits only: no forward_features, no fc (its classifier is head).
LOGITS_ONLY = """
from torch import nn

import kdgen


@kdgen.register_model("plugin_logits_only")
def plugin_logits_only(num_classes, in_channels):
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, num_classes),
    )
"""

ONE_EPOCH = (*FAST, "schedule.epochs=1", "data.val_size=0")


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for the user's modules; the registries and the modules it
    imports are left as they were afterwards."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(data, "_LOADERS", dict(data._LOADERS))
    yield folder
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(str(folder)):
            del sys.modules[name]


def _kdgen(*args: str, plugin_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The ``kdgen`` command as a user runs it, with ``plugin_dir`` on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": _with_path(plugin_dir), "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).with_name("kdgen")), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def _with_path(folder: Path) -> str:
    """PYTHONPATH with ``folder`` first (and what it held before after it)."""
    paths = [str(folder), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return os.pathsep.join(path for path in paths if path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_sweep_of_two_jobs_imports_the_module_in_every_run(plugins: Path, tmp_path: Path) -> None:
    """``kdgen sweep`` imports it to plan, and each ``kdgen train`` it starts imports it
    again; eval, in this process, imports it from the run's config."""
    module = plugins / "my_kdgen_models.py"
    module.write_text(MY_MODELS)
    out = tmp_path / "sweep"
    argv = ["sweep", "smoke", *ONE_EPOCH, "generations=0", "model=my_net", "model_args.width=8"]
    argv += ["imports=[my_kdgen_models]", "--processes", "D(1.0,0.0)", "D(0.6,0.6)"]
    done = _kdgen(*argv, "--jobs", "2", "--out", str(out), plugin_dir=plugins, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = sorted(out.glob("*/seed0"))
    assert len(runs) == 2
    for run in runs:
        state = json.loads((run / "run.json").read_text())
        assert state["status"] == "finished"
        assert state["imports"] == [
            {"module": "my_kdgen_models", "file": str(module), "sha256": _sha256(module)}
        ]
        payload = load_checkpoint(run / "checkpoints" / "gen0.pt")
        assert payload["model_name"] == "my_net" and payload["model"]["fc.weight"].shape == (100, 8)
    assert "my_kdgen_models" not in sys.modules
    summary = evaluate_run(runs[0], device="cpu")
    assert [g["generation"] for g in summary["generations"]] == [0]
    assert "my_kdgen_models" in sys.modules


@pytest.mark.parametrize(
    ("source", "error"),
    [
        (None, "ModuleNotFoundError: No module named 'absent_kdgen_plugin'"),
        ("raise RuntimeError('no licence here\\nsecond line')", "RuntimeError: no licence here"),
    ],
)
def test_a_module_that_fails_to_import_is_refused_with_exit_2(
    plugins: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    source: str | None,
    error: str,
) -> None:
    name = "absent_kdgen_plugin" if source is None else "failing_kdgen_plugin"
    if source is not None:
        (plugins / f"{name}.py").write_text(source)
    run = tmp_path / "run"
    assert main(["train", "smoke", *FAST, f"imports=[{name}]", "--out", str(run)]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert f"cannot import '{name}': {error}" in message
    assert not run.exists()


def test_a_module_registers_a_data_set_and_a_model(plugins: Path) -> None:
    module = plugins / "kdgen_stripes_plugin.py"
    module.write_text(MY_DATA)
    config = build_config(
        "smoke",
        ["data.name=plugin_stripes", "model=plugin_linear", "imports=[kdgen_stripes_plugin]"],
    )
    source = load_data(config)
    assert source.class_names == ["flat", "striped"] and source.in_channels == 1
    model = build_model(config, source, 0, torch.device("cpu"))
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 2)
    assert "plugin_stripes" in data.list_datasets()
    assert module_records(config.imports) == [
        {"module": "kdgen_stripes_plugin", "file": str(module), "sha256": _sha256(module)}
    ]


def test_imports_must_be_module_names() -> None:
    with pytest.raises(ConfigError, match=r"imports: 'my-models\.py' is not a Python module name"):
        build_config("smoke", ["imports=[my-models.py]"])
    assert build_config("smoke", ["imports=[pkg.sub_module]"]).imports == ["pkg.sub_module"]


@pytest.mark.slow
def test_a_slurm_job_imports_the_module_in_its_kdgen_train(
    plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a Slurm job runs (kdgen train in a child process, with the job's environment)."""
    module = plugins / "my_kdgen_models.py"
    module.write_text(MY_MODELS)
    overrides = (*ONE_EPOCH, "generations=0", "model=my_net", "imports=[my_kdgen_models]")
    (run,) = plan_sweep("smoke", ["D(1.0,0.0)"], [0], tmp_path / "sweep", overrides)
    monkeypatch.setenv("PYTHONPATH", _with_path(plugins))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert TrainJob("smoke", run, threads=1)() == "finished"
    state = json.loads((Path(run.path) / "run.json").read_text())
    assert state["status"] == "finished" and state["imports"][0]["sha256"] == _sha256(module)


def _logits_only_patriarch(plugins: Path, tmp_path: Path, classes: int, *overrides: str) -> Config:
    """A config whose patriarch is a weights file of the user's logits-only network with
    ``classes`` outputs (the module that registers it is imported, as kdgen imports it)."""
    (plugins / "kdgen_logits_plugin.py").write_text(LOGITS_ONLY)
    importlib.import_module("kdgen_logits_plugin")  # registers plugin_logits_only
    weights = tmp_path / f"weights{classes}.pt"
    torch.save(registry.get_factory("plugin_logits_only")(classes, 3).state_dict(), weights)
    return build_config(
        "smoke",
        [*FAST, "model=plugin_logits_only", "imports=[kdgen_logits_plugin]",
         f"patriarch={weights}", f"out_dir={tmp_path / 'run'}", *overrides],
    )  # fmt: skip


def test_a_logits_only_patriarch_of_another_class_count_names_both(
    plugins: Path, tmp_path: Path
) -> None:
    """A user's network without fc: its last Linear layer is the classifier checked."""
    config = _logits_only_patriarch(plugins, tmp_path, 10)
    refusal = r"outputs 10 classes, but the data \(synthetic\) has 100"
    with pytest.raises(CheckpointError, match=refusal):
        train_generations(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_transfer_probes_a_model_without_forward_features_at_its_classifier_input(
    plugins: Path, tmp_path: Path
) -> None:
    config = _logits_only_patriarch(plugins, tmp_path, 100, "generations=0")
    run = train_generations(config)  # M_0 is evaluated only: nothing is trained
    result = transfer_run(run.path, "synthetic", device="cpu", train_subset=100, test_subset=100)
    assert result["feature_dim"] == 4  # the input of nn.Linear(4, num_classes)
    assert [entry["model"] for entry in result["generations"]] == ["plugin_logits_only"]

"""Data-parallel runs: 2 gloo processes on CPU, launched by torchrun, against 1 process.

The 2-process run trains on the same global batches as the 1-process run (each rank takes
half of every batch), its BatchNorm layers use the global batch's statistics
(:class:`~kdgen.distributed.GlobalBatchNorm`, exact to float rounding) and DDP averages
the gradients, so one optimiser step agrees to ~1e-7. The runs are still not
bit-identical: the sums are added in another order, and 28 SGD steps at lr 0.1 on a
near-uniform tiny model amplify that rounding. Measured (smoke preset, FAST overrides):
test top-1 equal (0.0400 and 0.0350 both), test nll within 6e-5, weights within 5e-3.
The tolerances below (nll 2e-3, top-1 0.01 = 2 of 200 test images, train loss 1e-3
relative) leave a 20x margin on nll and would still catch a rank training on the wrong
data, an unreduced metric or a mis-ordered gather.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdgen.config import build_config, config_hash, effective_lr
from kdgen.distributed import SINGLE, Distributed, convert_batchnorm, interleave
from kdgen.errors import ConfigError
from kdgen.generations import train_generations
from kdgen.runs import RunFolder, load_checkpoint
from tests.conftest import FAST
from tests.stop_after_saves import THREADS_AT_EXIT

# An entry point that stops the writing rank after N state saves (0: never) and reports
# the gloo threads still alive at its end (see the script).
STOP_AFTER_SAVES = str(Path(__file__).with_name("stop_after_saves.py"))
KDGEN_REPORTING_THREADS = (STOP_AFTER_SAVES, "0")


def torchrun_command(args: list[str], entry: tuple[str, ...] = ("-m", "kdgen")) -> list[str]:
    """``torchrun --standalone --nproc_per_node=2 -m kdgen ARGS`` (or ``ENTRY ARGS``)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*command, "--nproc_per_node=2", *entry, *args]


def torchrun_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """On CPU (gloo), one thread a rank."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}


def torchrun(
    args: list[str], env: dict[str, str] | None = None, entry: tuple[str, ...] = ("-m", "kdgen")
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m kdgen ARGS`` on CPU (gloo)."""
    return subprocess.run(
        torchrun_command(args, entry),
        env=torchrun_env(env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "smoke", *FAST, "device=cpu", *extra, "--out", str(out)]


def assert_torn_down(stderr: str, ranks: tuple[int, ...] = (0, 1)) -> None:
    """Each of ``ranks`` ended with its process group destroyed and its gloo threads
    joined, and no process aborted at exit ("terminate called ...": a gloo worker that
    outlives the group and takes the GIL while the interpreter shuts down)."""
    for rank in ranks:
        assert f"rank {rank} {THREADS_AT_EXIT} []" in stderr, stderr[-3000:]
    assert "outlived destroy_process_group" not in stderr, stderr[-3000:]
    assert "terminate called" not in stderr, stderr[-3000:]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    done = torchrun(train_args(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run folder:" in done.stdout and done.stdout.count("run folder:") == 1  # rank 0 only
    return out


@pytest.mark.slow
def test_two_processes_match_one(two_process_run: Path, tmp_path: Path) -> None:
    single = train_generations(build_config("smoke", [*FAST, "device=cpu", f"out_dir={tmp_path}"]))
    multi = json.loads((two_process_run / "summary.json").read_text())
    assert len(multi["generations"]) == len(single.summary["generations"]) == 2
    for one, two in zip(single.summary["generations"], multi["generations"], strict=True):
        assert two["test"]["top1"] == pytest.approx(one["test"]["top1"], abs=0.01)
        assert two["test"]["nll"] == pytest.approx(one["test"]["nll"], abs=2e-3)
        assert two["val"]["nll"] == pytest.approx(one["val"]["nll"], abs=2e-3)
        assert two["train"]["loss"] == pytest.approx(one["train"]["loss"], rel=1e-3)
    assert multi["ensembles"] and multi["config_hash"] == single.summary["config_hash"]
    state = json.loads((two_process_run / "run.json").read_text())
    assert (state["status"], state["world_size"], state["global_batch_size"]) == ("finished", 2, 50)
    # The gathered logits come back in the single-process order, labels identical.
    for generation in (0, 1):
        ours = RunFolder(two_process_run).load_logits(generation)
        theirs = RunFolder(tmp_path).load_logits(generation)
        for split, (logits, labels) in theirs.items():
            assert torch.equal(ours[split][1], labels)
            assert (ours[split][0].float() - logits.float()).abs().max() < 0.05


@pytest.mark.slow
def test_checkpoints_hold_the_plain_module(two_process_run: Path) -> None:
    payload = load_checkpoint(two_process_run / "checkpoints" / "gen1.pt")
    assert not any(key.startswith("module.") for key in payload["model"])
    assert not any(
        key.startswith("module.")
        for key in load_checkpoint(two_process_run / "checkpoints" / "last.pt")["model"]
    )
    lines = (two_process_run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == 2 * 2 * 4  # one writer: generations x epochs x splits


@pytest.mark.slow
def test_resume_of_an_interrupted_distributed_run(two_process_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    stopped = torchrun(train_args(out), entry=(STOP_AFTER_SAVES, "3"))  # gen0 done, gen1 epoch 1
    assert stopped.returncode != 0
    assert_torn_down(stopped.stderr, ranks=(0,))  # rank 1 may end in a broken collective
    assert not (out / "checkpoints" / "gen1.pt").exists()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = torchrun(["train", "--resume", str(out)], entry=KDGEN_REPORTING_THREADS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_torn_down(resumed.stderr)
    ours = json.loads((out / "summary.json").read_text())["generations"]
    reference = json.loads((two_process_run / "summary.json").read_text())["generations"]
    for a, b in zip(ours, reference, strict=True):
        for split in ("val", "test"):
            assert a[split]["top1"] == b[split]["top1"]
            assert a[split]["nll"] == pytest.approx(b[split]["nll"], abs=1e-6)


@pytest.mark.slow
def test_sigterm_under_torchrun_saves_mid_epoch_and_resumes_exactly(tmp_path: Path) -> None:
    """torchrun passes a SIGTERM on to both ranks; they agree on one step, rank 0 saves a
    mid-epoch state with both ranks' sums, and the resumed run ends as an uninterrupted one."""
    args = ["generations=0", "schedule.epochs=2", "data.batch_size=4"]  # 175 steps an epoch
    run, ref = tmp_path / "run", tmp_path / "ref"
    process = subprocess.Popen(
        torchrun_command(train_args(run, *args), KDGEN_REPORTING_THREADS),
        env=torchrun_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    state = run / "run.json"
    while time.monotonic() < deadline and process.poll() is None:  # wait for epoch 1's save
        if state.exists() and json.loads(state.read_text()).get("epoch", 0) >= 1:
            break
        time.sleep(0.02)
    # Into epoch 2 by 40% of epoch 1's duration, so the signal lands mid-epoch however
    # fast or loaded the machine is.
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first_epoch = next(r["seconds"] for r in records if r["split"] == "train" and r["epoch"] == 1)
    time.sleep(0.4 * first_epoch)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0, err[-3000:]
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["step"] > 0) == (1, True), (saved["epoch"], saved["step"])
    assert len(saved["partial"]["ranks"]) == 2
    assert json.loads(state.read_text())["status"] == "interrupted"
    assert "interrupted by SIGTERM at generation 0, epoch 2" in err
    assert_torn_down(err)

    resumed = torchrun(["train", "--resume", str(run)], entry=KDGEN_REPORTING_THREADS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_torn_down(resumed.stderr)
    reference = torchrun(train_args(ref, *args))
    assert reference.returncode == 0, reference.stderr[-3000:]
    ours = json.loads((run / "summary.json").read_text())["generations"]
    assert ours == json.loads((ref / "summary.json").read_text())["generations"]


def test_batch_must_divide_by_the_ranks(tmp_path: Path) -> None:
    """Refused before any collective or file: rank 0 of 2, no process group needed."""
    config = build_config("smoke", [*FAST, "data.batch_size=49", f"out_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="must divide by the 2 processes"):
        train_generations(config, dist=Distributed(0, 2, 0))
    assert not (tmp_path / "run").exists()


def test_interleave_restores_the_order() -> None:
    """Eval shards of 11 rows, 2 per rank per step over 3 ranks, glued back in order."""
    rows, batch, world = torch.arange(11), 2, 3
    chunks = []
    for rank in range(world):
        steps = range(0, 11, batch * world)
        chunks.append(torch.cat([rows[s + rank * batch : s + (rank + 1) * batch] for s in steps]))
    assert torch.equal(interleave(chunks, batch), rows)
    assert SINGLE.gather_shards(rows, batch) is rows


def test_convert_batchnorm_keeps_weights_and_keys() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    weight = model[1].weight
    convert_batchnorm(model, "cpu")
    assert type(model[1]).__name__ == "GlobalBatchNorm" and model[1].weight is weight
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[key], before[key]) for key in before)
    images = torch.randn(5, 3, 6, 6)
    reference = torch.nn.functional.batch_norm(
        model[0](images), None, None, model[1].weight, model[1].bias, training=True
    )
    assert torch.allclose(model(images), reference, atol=1e-6)  # one process: plain BN


def test_lr_scaling() -> None:
    config = build_config(
        "smoke", ["schedule.lr_scaling=linear", "schedule.base_batch_size=32", "data.batch_size=64"]
    )
    assert effective_lr(config.schedule, 64) == pytest.approx(2 * config.schedule.lr)
    default = build_config("smoke")
    assert effective_lr(default.schedule, 1024) == default.schedule.lr
    assert config_hash(config) != config_hash(build_config("smoke", ["data.batch_size=64"]))
    with pytest.raises(ConfigError, match="lr_scaling"):
        build_config("smoke", ["schedule.lr_scaling=sqrt"])
    with pytest.raises(ConfigError, match="base_batch_size"):
        build_config("smoke", ["schedule.base_batch_size=0"])


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs (NCCL)"
)
def test_two_gpus_with_nccl(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "-m", "kdgen", "train", "smoke", *FAST]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"

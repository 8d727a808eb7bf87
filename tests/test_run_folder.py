"""The run folder's schema: what holds a run, its config read back, finished generations
and the checkpoint identity check (``kdgen.runs``)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from kdgen.config import build_config, config_from_yaml, config_hash, to_yaml
from kdgen.data.download import download_file
from kdgen.errors import CheckpointError, ConfigError, RunDirError
from kdgen.runs import (
    RunFolder,
    atomic_write_text,
    check_identity,
    choose_run_folder,
    save_checkpoint,
)


def test_a_folder_without_config_holds_no_run(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "empty")
    with pytest.raises(RunDirError, match=r"^cannot resume: .*empty holds no run"):
        folder.require_run("cannot resume: ")
    with pytest.raises(RunDirError, match="holds no run"):
        folder.read_config()
    with pytest.raises(RunDirError, match="holds no run"):
        folder.require_generations()


def test_the_config_reads_back_identically(tmp_path: Path) -> None:
    config = build_config("smoke", ["process=D(0.6,0.6)", "regularizer=lsr", "seed=3"])
    folder = RunFolder(tmp_path)
    folder.write_text(folder.config_path, to_yaml(config))
    again = folder.read_config()
    assert again == config and config_hash(again) == config_hash(config)
    assert config_from_yaml(to_yaml(config)) == config


def test_a_bad_saved_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        config_from_yaml("nope: 1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_yaml("- a\n- b\n", "x.yaml")


def test_finished_generations_are_the_saved_ones_from_zero(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.write_text(folder.config_path, to_yaml(build_config("smoke")))
    with pytest.raises(RunDirError, match="has no generation checkpoints yet"):
        folder.require_generations()
    for generation in (0, 1, 3):  # 3 is not reachable: generation 2 is missing
        save_checkpoint(folder.generation_checkpoint(generation), {"generation": generation})
    assert folder.finished_generations() == folder.require_generations() == [0, 1]


def test_check_identity_names_every_differing_key() -> None:
    payload = {"model_name": "tiny_cnn", "num_classes": 10, "in_channels": 3}
    check_identity(payload, {"model_name": "tiny_cnn", "num_classes": 10}, "checkpoint", Path("a"))
    with pytest.raises(CheckpointError) as info:
        check_identity(
            payload,
            {"model_name": "resnet20", "num_classes": 10, "in_channels": 1},
            "patriarch",
            Path("gen0.pt"),
        )
    message = str(info.value)
    assert message.startswith("patriarch gen0.pt does not match this run: ")
    assert "model_name='tiny_cnn' where this run needs 'resnet20'" in message
    assert "in_channels=3 where this run needs 1" in message
    assert "num_classes" not in message


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_files_get_the_mode_a_plain_open_gives(tmp_path: Path, umask: int) -> None:
    """Atomic writes go through a temporary file, yet the file gets the umask's mode (not
    mkstemp's 0600), or the mode of the file it replaces."""
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}")
        save_checkpoint(tmp_path / "checkpoints" / "gen0.pt", {"generation": 0})
        with (tmp_path / "plain.txt").open("w") as file:
            file.write("x")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    for name in ("summary.json", "checkpoints/gen0.pt", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
    (tmp_path / "summary.json").chmod(0o640)
    atomic_write_text(tmp_path / "summary.json", "{}\n")
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o640


def test_a_downloaded_file_gets_the_mode_a_plain_open_gives(tmp_path: Path) -> None:
    source = tmp_path / "cifar.tar.gz"
    source.write_bytes(b"data")
    previous = os.umask(0o022)
    try:
        path = download_file(source.as_uri(), tmp_path / "data" / "cifar.tar.gz")
    finally:
        os.umask(previous)
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_one_writer_at_a_time_holds_the_run_folder(tmp_path: Path) -> None:
    """The first writer's lock names it; a second is refused in one line; once the first
    closes the folder (or dies: the OS drops an flock), the next writer gets it."""
    config = build_config("smoke", [f"out_dir={tmp_path / 'run'}"])
    first = choose_run_folder(config, resume=False, force_new=False)
    first.open(config, resume=False)
    second = RunFolder(tmp_path / "run")
    holder = f"kdgen pid {os.getpid()} on host {socket.gethostname()}"
    with pytest.raises(RunDirError, match=f"is being written by {holder}; wait for"):
        second.open(config, resume=False)
    first.close()
    second.open(config, resume=False)
    second.close()

"""Bad input, one row per case: exit status 2, one line 'kdgen: error: ...' naming the
problem and the fix, no traceback, and no existing file changed or deleted."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kdgen import runs
from kdgen.cli import main
from kdgen.data.fashion_mnist import FILES
from kdgen.runs import RunFolder, load_checkpoint
from tests.conftest import FAST
from tests.helpers import idx_images, rewrite_cifar100_train, write_cifar100, write_fashion_mnist

Setup = Callable[[Path, Path], list[str]]  # (tmp folder, a finished run) -> argv


def _train(*overrides: str) -> Setup:
    return lambda tmp, run: ["train", "smoke", *FAST, *overrides, "--out", str(tmp / "new")]


def _cifar(change: Callable[[Path], None]) -> Setup:
    def setup(tmp: Path, run: Path) -> list[str]:
        change(write_cifar100(tmp / "data" / "cifar-100-python"))
        return _train("data.name=cifar100", f"data.root={tmp / 'data'}")(tmp, run)

    return setup


def _truncate(folder: Path) -> None:
    raw = (folder / "train").read_bytes()
    (folder / "train").write_bytes(raw[: len(raw) // 2])


def _truncated_idx(tmp: Path, run: Path) -> list[str]:
    folder = write_fashion_mnist(tmp / "fm")
    (folder / FILES["test_images"]).write_bytes(idx_images(10, 1)[:-100])
    return _train("data.name=fashion-mnist", f"data.root={folder}")(tmp, run)


def _corrupt_tarball(tmp: Path, run: Path) -> list[str]:
    (tmp / "data").mkdir()
    (tmp / "data" / "cifar-100-python.tar.gz").write_bytes(b"not a tarball")
    return _train("data.name=cifar100", f"data.root={tmp / 'data'}")(tmp, run)


def _copy_run(tmp: Path, run: Path) -> Path:
    return Path(shutil.copytree(run, tmp / "copy"))


def _corrupt_checkpoint(tmp: Path, run: Path) -> list[str]:
    path = _copy_run(tmp, run) / "checkpoints" / "gen0.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    return ["eval", str(path.parent.parent), "--device", "cpu"]


def _other_architecture(tmp: Path, run: Path) -> list[str]:
    config = _copy_run(tmp, run) / "config.yaml"
    config.write_text(config.read_text().replace("model: tiny_cnn", "model: resnet8"))
    return ["eval", str(config.parent), "--device", "cpu"]


def _a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("not a folder")
    return tmp / "afile"


def _unwritable(tmp: Path) -> Path:
    """A folder that refuses new files: read-only permissions, or for root (whom they do
    not stop) a sysfs folder."""
    folder = tmp / "readonly"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys/kernel")):
        try:
            (candidate / "probe").touch()
        except OSError:
            return candidate
        (candidate / "probe").unlink()
    pytest.skip("no folder here refuses new files")


def _out(command: str, where: Callable[[Path], Path]) -> Setup:
    """``kdgen train``, ``export`` or ``report`` with ``--out`` at ``where(tmp)``."""

    def setup(tmp: Path, run: Path) -> list[str]:
        head = ["train", "smoke", *FAST] if command == "train" else [command, str(run)]
        return [*head, "--out", str(where(tmp))]

    return setup


CASES: dict[str, tuple[Setup, tuple[str, ...]]] = {
    "unknown key": (_train("data.colour=red"), ("data.colour",)),
    "wrong type": (_train("lam=abc"), ("lam",)),
    "eta out of range": (_train("eta=1.5"), ("eta=1.5 must lie in (0, 1]",)),
    "lam out of range": (_train("lam=2"), ("lam=2",)),
    "k out of range": (_train("k=1"), ("k=1 must be >= 2",)),
    "temperature out of range": (_train("temperature=0"), ("temperature=0.0 must be > 0",)),
    "epochs out of range": (_train("schedule.epochs=0"), ("schedule.epochs=0",)),
    "lr out of range": (_train("schedule.lr=-1"), ("lr=-1.0 must be > 0",)),
    "misspelt preset": (lambda tmp, run: ["train", "smok"], ("did you mean: smoke",)),
    "misspelt model": (_train("model=resnet21"), ("did you mean",)),
    "missing data path": (
        lambda tmp, run: _train("data.name=cifar100", f"data.root={tmp / 'none'}")(tmp, run),
        ("data.download=true",),
    ),
    "truncated cifar pickle": (_cifar(_truncate), ("train",)),
    "labels out of range": (
        _cifar(lambda f: rewrite_cifar100_train(f, fine_labels=[100] * 200)),
        ("[0, 99]",),
    ),
    "wrong image shape": (
        _cifar(lambda f: rewrite_cifar100_train(f, data=np.zeros(3072 * 200 - 5, dtype=np.uint8))),
        ("multiple of 3072",),
    ),
    "truncated idx file": (_truncated_idx, ("t10k-images-idx3-ubyte",)),
    "corrupt tarball": (_corrupt_tarball, ("cifar-100-python.tar.gz",)),
    "finished run folder": (
        lambda tmp, run: ["train", "smoke", *FAST, "generations=0", "--out", str(run)],
        ("already holds a run", "--force-new"),
    ),
    "resume with another config": (
        lambda tmp, run: ["train", "--resume", str(run), "eta=0.7"],
        ("config differs", "eta: 0.6 -> 0.7", "--force-new"),
    ),
    "train --out a file": (_out("train", _a_file), ("afile is a file, not a folder",)),
    "export --out a file": (_out("export", _a_file), ("afile is a file, not a folder",)),
    "report --out a file": (_out("report", _a_file), ("afile is a file, not a folder",)),
    "train --out below a file": (
        _out("train", lambda tmp: _a_file(tmp) / "run"),
        ("cannot create --out", "a part of the path is a file"),
    ),
    "train --out unwritable": (_out("train", _unwritable), ("cannot write into",)),
    "export --out unwritable": (_out("export", _unwritable), ("cannot write", "gen0")),
    "report --out unwritable": (_out("report", _unwritable), ("cannot write",)),
    "corrupt checkpoint": (_corrupt_checkpoint, ("gen0.pt", "corrupt")),
    "checkpoint of another architecture": (_other_architecture, ("tiny_cnn", "resnet8")),
}


# The cases that need a trained run folder (slow: the run is trained once, when first needed).
ON_A_FINISHED_RUN = {
    "finished run folder",
    "resume with another config",
    "corrupt checkpoint",
    "checkpoint of another architecture",
    "export --out a file",
    "report --out a file",
    "export --out unwritable",
    "report --out unwritable",
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "smoke", *FAST, "generations=0", "--out", str(run)]) == 0
    return run


def _snapshot(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for f in folders for p in f.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.slow) if c in ON_A_FINISHED_RUN else c for c in CASES],
)
def test_bad_input(
    case: str, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    setup, expected = CASES[case]
    needs_run = case in ON_A_FINISHED_RUN
    finished_run = request.getfixturevalue("finished_run") if needs_run else tmp_path / "no-run"
    argv = setup(tmp_path, finished_run)
    capsys.readouterr()
    before = _snapshot(tmp_path, finished_run)
    code = main(argv)
    _, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdgen: error:"), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    after = _snapshot(tmp_path, finished_run)
    assert {p: after.get(p) for p in before} == before, "an existing file changed"


@pytest.mark.slow
def test_disk_full_while_saving_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC in a checkpoint save: the previous checkpoint stays, no temp file is left,
    and the error is one line."""
    real_write = runs.os.fdopen
    saved: dict[str, bytes] = {}
    run = tmp_path / "run"

    def fdopen(fd: int, mode: str = "r", *args, **kwargs):  # type: ignore[no-untyped-def]
        file = real_write(fd, mode, *args, **kwargs)
        last = run / "checkpoints" / "last.pt"
        target = os.readlink(f"/proc/self/fd/{fd}")  # the temp file of this atomic write
        if last.exists() and not saved and ".last.pt." in target:
            saved["last"] = last.read_bytes()

            def write(data: bytes) -> int:
                raise OSError(errno.ENOSPC, "No space left on device")

            file.write = write
        return file

    monkeypatch.setattr(runs.os, "fdopen", fdopen)
    code = main(["train", "smoke", *FAST, "--out", str(run)])
    monkeypatch.undo()
    _, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdgen: error: disk full while writing")
    assert "free some space" in lines[0] and "last.pt" in lines[0]
    assert (run / "checkpoints" / "last.pt").read_bytes() == saved["last"]
    load_checkpoint(run / "checkpoints" / "last.pt")
    assert not list(run.rglob(".*.tmp"))
    assert RunFolder(run).read_state()["status"] == "failed"


def test_a_slurm_sweep_where_there_is_no_slurm_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no srun, no sbatch
    argv = ["sweep", "smoke", *FAST, "--processes", "D(1.0,0.0)", "--executor", "slurm"]
    code = main([*argv, "--out", str(tmp_path / "sweep")])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (
        "kdgen: error: --executor slurm needs Slurm, and this machine has none (no srun on "
        "PATH): run the sweep on a Slurm login node, or use --executor local"
    )
    assert not (tmp_path / "sweep").exists()

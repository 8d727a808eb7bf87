"""How a run's numbers were made, recorded beside its config in ``run.json`` and
``summary.json``: the torch and kdgen versions, the device and its thread count, the
seeding scheme, the students' loss, and the patriarch it loaded (the ``patriarch=`` source
as given, its kind, its run's config hash, the sha256 of the file read, its seeding scheme;
a patriarch trained elsewhere has no config hash or seeding scheme: null).

A run's config hash is decided here too (:func:`run_digest`): a loaded patriarch enters it
by what it is, not by where it lies. A resume must draw the streams its first epochs drew,
so a run folder recorded under another seeding scheme is refused; one written before the
record (no scheme) resumes with a warning, as does one trained with another thread count
(it only reorders float sums on the CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from kdgen.config import PRETRAINED_PREFIXES, Config, config_hash, legacy_config_hash
from kdgen.errors import CheckpointError, RunDirError
from kdgen.models import pretrained_weights
from kdgen.runs import RunFolder, file_sha256, load_checkpoint
from kdgen.seeding import SEEDING_SCHEME

log = logging.getLogger("kdgen")


@dataclass(frozen=True)
class PatriarchSource:
    """A loaded patriarch (``patriarch=``): where it was found, and what it is."""

    source: str  # the patriarch= source, as given
    config_hash: str | None  # its run's, as its gen0 checkpoint records it; None: no run
    sha256: str  # of the file read: its gen0 checkpoint, or the weights file
    seeding: int | None  # the seeding scheme its run recorded; None: none (older kdgen)
    kind: str | None = None  # run, weights, torchvision or timm (None: recorded before)

    def identity(self) -> dict[str, str]:
        """What enters the config hash of a run that loads it."""
        return {"config_hash": self.config_hash, "sha256": self.sha256}

    def record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PatriarchSource:
        return cls(**{item.name: record.get(item.name) for item in fields(cls)})


@dataclass(frozen=True)
class Provenance:
    """A run's config hash and its record: the fields ``run.json`` and ``summary.json`` hold."""

    digest: str
    record: dict[str, Any]


def patriarch_paths(config: Config) -> tuple[Path, Path]:
    """(run folder, gen0 checkpoint) of ``patriarch=PATH`` (a run folder or its gen0.pt)."""
    path = Path(config.patriarch or "")
    if path.is_dir():
        return path, path / "checkpoints" / "gen0.pt"
    return path.parent.parent, path


def patriarch_file(config: Config) -> tuple[str, Path]:
    """What ``patriarch=`` names and the file it is read from: ("run", a kdgen run's gen0
    checkpoint), ("weights", a state_dict ``.pt`` or ``.safetensors`` file), or
    ("torchvision" / "timm", the library's pretrained weights in its cache on this machine)."""
    source = config.patriarch or ""
    if source.startswith(PRETRAINED_PREFIXES):
        weights = pretrained_weights(config.model)
        if weights.file is None:
            raise CheckpointError(
                f"patriarch={source}: its pretrained weights are not on this machine, and kdgen "
                f"downloads nothing; it looks for {weights.expected}"
            )
        return weights.kind, weights.file
    path = Path(source)
    in_run = path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file()
    if path.is_dir() or (path.is_file() and in_run):
        return "run", patriarch_paths(config)[1]
    if not path.is_file():
        raise CheckpointError(
            f"patriarch={source} does not exist; it takes a kdgen run folder, a weights file "
            "(.pt state_dict or .safetensors), tv:<name> or timm:<name>"
        )
    return "weights", path


def read_patriarch(config: Config) -> PatriarchSource:
    """What ``patriarch=`` is: for a kdgen run, its config hash (from its verified gen0
    checkpoint), the sha256 of that file and the seeding scheme its run recorded; for
    weights trained elsewhere, the sha256 of the file read."""
    kind, file = patriarch_file(config)
    if kind != "run":
        return PatriarchSource(str(config.patriarch), None, file_sha256(file), None, kind)
    run_dir, checkpoint = patriarch_paths(config)
    payload = load_checkpoint(checkpoint)
    return PatriarchSource(
        source=str(config.patriarch),
        config_hash=str(payload.get("config_hash")),
        sha256=file_sha256(checkpoint),
        seeding=RunFolder(run_dir).read_state().get("seeding"),
        kind=kind,
    )


def run_digest(config: Config, recorded: Mapping[str, Any]) -> str:
    """The config hash that a run folder's checkpoints carry, from its config and its
    ``run.json`` (``recorded``): a loaded patriarch enters by the identity recorded when the
    run began; a folder written before that record hashes by its ``patriarch=`` path, as
    kdgen did when it wrote the folder."""
    if not config.patriarch:
        return config_hash(config)
    record = recorded.get("patriarch")
    if isinstance(record, Mapping):
        return config_hash(config, PatriarchSource.from_record(record).identity())
    return legacy_config_hash(config)


def begin_run(config: Config, device: torch.device, recorded: Mapping[str, Any]) -> Provenance:
    """The config hash and record of a run that starts (``recorded`` empty) or resumes
    (``recorded``: its ``run.json``, which holds its patriarch's identity from its start).

    A resume keeps the seeding scheme and patriarch its run began with (a folder written
    before the record keeps none, and its hash: :func:`run_digest`); under another recorded
    seeding scheme it is refused (:func:`check_seeding`). Another thread count is reported
    (:func:`warn_threads`) and recorded."""
    threads = torch.get_num_threads()
    used = list(recorded.get("threads") or [])
    if recorded:
        check_seeding(recorded, str(config.out_dir))
        warn_threads(recorded, device, f"run {config.out_dir} trained")
        digest = run_digest(config, recorded)
        began = {key: recorded[key] for key in ("seeding", "patriarch") if key in recorded}
    else:
        source = read_patriarch(config) if config.patriarch else None
        digest = config_hash(config, source.identity() if source else None)
        began = {"seeding": SEEDING_SCHEME, "patriarch": source.record() if source else None}
    record = {
        "torch": torch.__version__,
        "kdgen": metadata.version("kdgen"),
        "device": str(device),
        "threads": used if threads in used else [*used, threads],
        "student_loss": config.student_loss,
        **began,
    }
    return Provenance(digest, record)


def check_seeding(recorded: Mapping[str, Any], run_dir: str) -> None:
    """Refuse to resume ``run_dir`` when its ``run.json`` records another seeding scheme
    than this kdgen's; warn when it records none (written before the record: by scheme 2
    since 38b3c8f, by scheme 1 before)."""
    scheme = recorded.get("seeding")
    if scheme == SEEDING_SCHEME:
        return
    if scheme is None:
        log.warning(
            f"run {run_dir} records no seeding scheme (kdgen before the record): it resumes "
            f"by scheme {SEEDING_SCHEME}; if it was trained before 38b3c8f (scheme 1), its "
            "remaining epochs draw other streams than its first ones"
        )
        return
    raise RunDirError(
        f"cannot resume {run_dir}: it was trained under seeding scheme {scheme}, this kdgen "
        f"derives seeds by scheme {SEEDING_SCHEME}, so its remaining epochs would draw other "
        "streams than its first ones; train it anew with --force-new"
    )


def warn_threads(recorded: Mapping[str, Any], device: torch.device, what: str) -> None:
    """One warning line when ``recorded`` (a ``run.json``) trained on the CPU with other
    thread counts than this process uses on the CPU: the thread count orders float sums,
    so the numbers can differ slightly (not refused: a sweep may resume with other --jobs)."""
    theirs = recorded.get("threads") or []
    threads = torch.get_num_threads()
    on_cpu = device.type == "cpu" and str(recorded.get("device", "")).startswith("cpu")
    if on_cpu and theirs and set(theirs) != {threads}:
        counts = ", ".join(str(count) for count in theirs)
        log.warning(
            f"{what} with {counts} torch thread(s), this process uses {threads}: float sums "
            "are ordered by the thread count, so the numbers can differ slightly"
        )


def warn_patriarch(run_dir: Path, recorded: Mapping[str, Any], device: torch.device) -> None:
    """Warnings, not refusals, about a patriarch's ``run.json``: another thread count, or
    another seeding scheme (it loads as the trained model it is; the loading run's record
    holds its scheme)."""
    warn_threads(recorded, device, f"patriarch {run_dir} trained")
    scheme = recorded.get("seeding")
    if scheme != SEEDING_SCHEME:
        log.warning(
            f"patriarch {run_dir} was trained under seeding scheme {scheme or 'unrecorded'}, "
            f"this run draws by scheme {SEEDING_SCHEME}: its training subset, validation "
            "split and streams were drawn otherwise than this run's"
        )

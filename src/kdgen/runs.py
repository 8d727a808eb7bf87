"""The run folder: atomic writes, checkpoints with checksums, metrics logs and the summary.

Layout (timm-style, one folder per run)::

    RUN/
      config.yaml          the resolved config
      run.json             state: running | interrupted | finished | failed, with progress
      metrics.jsonl        one line per evaluation (generation, epoch, split, metrics)
      metrics.csv          the same, as a table (rewritten after each generation)
      summary.json         final metrics per generation, and the method's settings
      checkpoints/gen{g}.pt  final model of generation g
      checkpoints/last.pt  latest resumable state of the generation in progress
      logits/gen{g}.pt     generation g's validation and test logits (float32) and labels
      tb/                  TensorBoard scalars, when tensorboard is installed
      mlflow.db, wandb/    the MLflow store and W&B files, when ``loggers`` selects them
      train.log            the run's output, when a sweep executor started it
      resources.json       what that executor gave it: threads, GPU, pid or Slurm job
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from kdgen.config import (
    Config,
    config_diff,
    config_from_yaml,
    cycle_epochs,
    flatten_config,
    not_recorded,
    to_dict,
    to_yaml,
)
from kdgen.errors import CheckpointError, ConfigError, RunDirError
from kdgen.files import check_folder_path, create_beside, make_folder
from kdgen.trackers import FINAL_STATES, Tracker, open_trackers, selected_loggers

if TYPE_CHECKING:
    from kdgen.data import DataSource
    from kdgen.engine import EvalSettings
    from kdgen.precision import Numerics

CHECKPOINT_FORMAT = 1
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
LOCK_FILE = ".lock"
LOG_TAIL_BYTES = 8192  # enough for the last line of a train.log
# What a run leaves before its first checkpoint (see RunFolder.clear_attempt).
ATTEMPT_FILES = ("config.yaml", "run.json", "classes.json", "metrics.jsonl", "metrics.csv", "tb")

log = logging.getLogger("kdgen")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync it, then rename it into place.

    A crash or a full disk leaves either the old file or the new one, never a mix. The
    file gets the mode a plain ``open()`` would give it (see :mod:`kdgen.files`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = create_beside(path, ".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in _DISK_FULL and not error.filename:
            raise OSError(error.errno, os.strerror(error.errno), str(path)) from error
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks (weights files may be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Save ``payload`` with a SHA-256 checksum of its serialised bytes, atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    envelope = {
        "format": CHECKPOINT_FORMAT,
        "sha256": hashlib.sha256(body).hexdigest(),
        "payload": body,
    }
    out = io.BytesIO()
    torch.save(envelope, out)
    atomic_write_bytes(path, out.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and verify a checkpoint written by :func:`save_checkpoint` (weights only)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        envelope = torch.load(path, map_location="cpu", weights_only=True)
        body = envelope["payload"]
        expected = envelope["sha256"]
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a kdgen checkpoint ({type(error).__name__}); "
            "delete it to retrain from the previous one"
        ) from None
    if hashlib.sha256(body).hexdigest() != expected:
        raise CheckpointError(f"checkpoint {path} fails its checksum; it is corrupt")
    try:
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(error).__name__})"
        ) from None


class RunLock:
    """The writer lock of a run folder: an exclusive ``fcntl.flock`` on ``RUN/.lock``,
    which the OS releases when the holding process ends, however it ends (so a Slurm
    requeue or a rerun after a crash finds it free). The file names its holder (pid and
    host) for the one line a second writer gets."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Hold the lock, or raise RunDirError naming the process that holds it. Where the
        file system has no locks, warn and go on without one."""
        if self._file is not None:
            return
        try:
            file = self.path.open("a+")  # "a+": the holder's line is read before it changes
        except OSError as error:
            raise RunDirError(
                f"cannot write into {self.path.parent} ({os.strerror(error.errno)}); "
                "choose a folder you can write"
            ) from None
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise RunDirError(
                f"{self.path.parent} is being written by {holder}; wait for that run to end "
                f"or stop it, then resume with: kdgen train --resume {self.path.parent}"
            ) from None
        except OSError as error:
            log.warning(
                "cannot lock %s (%s): nothing stops a second process from writing this run",
                self.path,
                os.strerror(error.errno) if error.errno else error,
            )
        file.truncate(0)
        file.write(f"kdgen pid {os.getpid()} on host {socket.gethostname()}\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is None:
            return
        self._file.truncate(0)
        self._file.close()  # closing the file releases the flock
        self._file = None


class RunFolder:
    """Reads and writes one run folder. Only the process that owns the run writes: with
    ``writable=False`` (the other ranks of a distributed run) every write is skipped."""

    def __init__(self, path: str | Path, writable: bool = True) -> None:
        self.path = Path(path)
        self.writable = writable
        self.checkpoints = self.path / "checkpoints"
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.state_path = self.path / "run.json"
        self.log_path = self.path / "train.log"
        self.resources_path = self.path / "resources.json"
        self._trackers: dict[str, Tracker] = {}
        self._status: str | None = None
        self._lock = RunLock(self.path)

    def logits_path(self, generation: int) -> Path:
        return self.path / "logits" / f"gen{generation}.pt"

    def save_logits(
        self, generation: int, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Save a generation's (logits, labels) per split; logits in float32, as computed,
        so that ensembles and per-class views lose nothing to rounding."""
        if not self.writable:
            return
        payload = {
            name: {"logits": logits.detach().to("cpu", torch.float32), "labels": labels.cpu()}
            for name, (logits, labels) in splits.items()
        }
        save_checkpoint(self.logits_path(generation), {"generation": generation, "splits": payload})

    def load_logits(self, generation: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """A generation's saved {split: (logits float32, labels)} (older runs' float16 logits
        are widened to float32)."""
        splits = load_checkpoint(self.logits_path(generation))["splits"]
        return {name: (value["logits"].float(), value["labels"]) for name, value in splits.items()}

    def save(self, path: Path, payload: dict[str, Any]) -> None:
        """:func:`save_checkpoint`, when this process writes."""
        if self.writable:
            save_checkpoint(path, payload)

    def write_text(self, path: Path, text: str) -> None:
        """:func:`atomic_write_text`, when this process writes."""
        if self.writable:
            atomic_write_text(path, text)

    def write_json(self, path: Path, value: Any) -> None:
        """:func:`atomic_write_json`, when this process writes."""
        if self.writable:
            atomic_write_json(path, value)

    def generation_checkpoint(self, generation: int, ema: bool = False) -> Path:
        """The final model of a generation, ``gen{g}.pt``; with ``ema`` the final EMA of
        its weights, ``gen{g}-ema.pt`` (config ``ema.decay`` > 0)."""
        return self.checkpoints / f"gen{generation}{'-ema' if ema else ''}.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    def remove_stale_temp_files(self) -> None:
        """Delete the temporary files of atomic writes that a killed process left behind."""
        if not self.writable:
            return
        for temp in [*self.path.glob(".*.tmp"), *self.path.glob("*/.*.tmp")]:
            temp.unlink(missing_ok=True)

    def has_results(self) -> bool:
        """Whether a new run must not write here: the folder holds a checkpoint, saved
        logits or a summary, or a ``config.yaml`` without the ``run.json`` a kdgen run
        writes beside it. (A run that failed before its first checkpoint holds none of
        these: :meth:`clear_attempt` makes room for the corrected run.)"""
        saved = [self.summary_path, *self.checkpoints.glob("*.pt"), *self.path.glob("logits/*.pt")]
        foreign_config = self.config_path.exists() and not self.state_path.exists()
        return any(path.exists() for path in saved) or foreign_config

    def failed_without_results(self) -> bool:
        """Whether the run here failed before it saved anything (a new run may replace it)."""
        try:
            failed = self.read_state().get("status") == "failed"
        except RunDirError:
            return False
        return failed and not self.has_results()

    def clear_attempt(self) -> None:
        """Remove what a run that saved no checkpoint left behind (its config, state,
        metrics and TensorBoard files), saying so: the new run takes its place. The
        folder's other files (a sweep's ``train.log`` and ``resources.json``) stay."""
        left = [self.path / name for name in ATTEMPT_FILES if (self.path / name).exists()]
        if not left:
            return
        try:
            before = self.read_state().get("status", "unknown")
        except RunDirError:
            before = "unreadable"
        log.warning(
            "%s held a run that saved no checkpoint (status: %s); this run replaces it",
            self.path,
            before,
        )
        for path in left:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        self.remove_stale_temp_files()

    def open(self, config: Config, resume: bool) -> None:
        """Create the folder of :func:`choose_run_folder` and take its writer lock
        (:class:`RunLock`, released by :meth:`close` or the process's end), then check it
        again under the lock: another process may have written it meanwhile. A new run
        takes the place of one that saved no checkpoint (:meth:`clear_attempt`)."""
        if not self.writable:
            return
        make_folder(self.path)
        self._lock.acquire()
        try:
            choose_run_folder(config, resume, force_new=False)
            if not resume:
                self.clear_attempt()
        except BaseException:
            self.close()
            raise

    # --- what the folder holds -----------------------------------------------------------
    def require_run(self, doing: str = "") -> None:
        """Raise RunDirError unless the folder holds a run (its ``config.yaml``); ``doing``
        prefixes the message, e.g. ``"cannot resume: "``."""
        if not self.config_path.exists():
            raise RunDirError(f"{doing}{self.path} holds no run (no config.yaml)")

    def read_config(self) -> Config:
        """The run's resolved config, read back from its ``config.yaml``."""
        self.require_run()
        return config_from_yaml(self.config_path.read_text(), str(self.config_path))

    def finished_generations(self) -> list[int]:
        """The generations 0, 1, ... whose final checkpoint is saved, in order."""
        count = 0
        while self.generation_checkpoint(count).exists():
            count += 1
        return list(range(count))

    def require_generations(self) -> list[int]:
        """:meth:`finished_generations`; RunDirError when the run holds none yet."""
        self.require_run()
        generations = self.finished_generations()
        if not generations:
            raise RunDirError(f"{self.path} has no generation checkpoints yet")
        return generations

    def resume_state(
        self, generation: int, digest: str, config: Config | None = None
    ) -> dict[str, Any] | None:
        """The resumable state of ``generation`` (None if the saved one is of another
        generation, or there is none), after :func:`check_resume_state`."""
        if not self.last_checkpoint.exists():
            return None
        state = load_checkpoint(self.last_checkpoint)
        check_resume_state(state, self.last_checkpoint, digest, config)
        return state if state["generation"] == generation else None

    # --- state --------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        return self._read_json(self.state_path) or {}

    def write_state(self, status: str, **fields: Any) -> None:
        if not self.writable:
            return
        self._status = status
        state = {**self.read_state(), "status": status, "updated": time.time(), **fields}
        if status in ("running", "finished") and "reason" not in fields:
            state.pop("reason", None)  # the reason of an earlier stop no longer holds
        atomic_write_json(self.state_path, state)

    def last_log_line(self) -> str | None:
        """The last line of ``train.log`` (for a run that failed: its one-line error, or
        the last line of its traceback); None without a log."""
        try:
            with self.log_path.open("rb") as file:
                file.seek(max(0, file.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
                tail = file.read().decode(errors="replace")
        except FileNotFoundError:
            return None
        lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
        return lines[-1] if lines else None

    def read_resources(self) -> dict[str, Any]:
        return self._read_json(self.resources_path) or {}

    # --- summary ------------------------------------------------------------------------
    def read_summary(self) -> dict[str, Any] | None:
        return self._read_json(self.summary_path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        if not self.writable:
            return
        atomic_write_json(self.summary_path, summary)

    def _read_json(self, path: Path) -> Any:
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise RunDirError(f"{path} is unreadable ({type(error).__name__})") from None

    # --- a run's life: begin, one save per stage, finish -------------------------------
    def begin(
        self,
        config: Config,
        dataset: DataSource,
        evaluation: EvalSettings,
        numerics: Numerics,
        resume: bool,
        digest: str,
        record: dict[str, Any],
        **state: Any,
    ) -> dict[str, Any]:
        """Start (or resume) the run: write its config, its classes and ``run.json``
        ("running", with its provenance ``record`` and ``state``: world size, lr, ...);
        return its summary so far, a fresh header unless a resume finds one of the same
        config (``digest``, :func:`kdgen.provenance.run_digest`)."""
        summary = self.read_summary() if resume else None
        if not summary or summary.get("config_hash") != digest:
            summary = summary_header(config, dataset, digest, numerics, record)
        summary["threads"] = record["threads"]
        if not resume:
            self.write_text(self.config_path, to_yaml(config))
        if not resume or not (self.path / "classes.json").exists():  # a kill may fall between
            self.write_json(self.path / "classes.json", classes_record(evaluation, dataset))
        if resume:
            self.remove_stale_temp_files()
        self.write_state("running", started=time.time(), **state, **numerics.record(), **record)
        self.open_trackers(config)
        return summary

    def resume_stage(
        self, index: int, digest: str, config: Config | None = None
    ) -> dict[str, Any] | None:
        """The saved state to continue stage ``index`` from (None: start it afresh). The
        records logged after that state are dropped: the resume logs them again."""
        state = self.resume_state(index, digest, config)
        self.truncate_metrics(index, state["epoch"] if state else 0)
        return state

    def stage_end_state(
        self, index: int, epochs: int, digest: str, config: Config | None = None
    ) -> dict[str, Any]:
        """The saved state at the end of finished stage ``index`` (after its ``epochs``),
        which the next snapshot cycle carries on: the run's last state, until that cycle
        saves one of its own."""
        if not self.last_checkpoint.exists():
            raise CheckpointError(
                f"{self.last_checkpoint} is missing: cycle {index + 1} cannot carry on the "
                f"optimiser state of cycle {index}; start the run again with --force-new"
            )
        state = load_checkpoint(self.last_checkpoint)
        check_resume_state(state, self.last_checkpoint, digest, config)
        where = (state["generation"], state["epoch"], state.get("step", 0))
        if where != (index, epochs, 0):
            raise CheckpointError(
                f"{self.last_checkpoint} holds generation {where[0]}, epoch {where[1]}, step "
                f"{where[2]}, not the end of cycle {index} that cycle {index + 1} carries on; "
                "start the run again with --force-new"
            )
        return state

    def save_stage(
        self,
        summary: dict[str, Any],
        entry: dict[str, Any],
        checkpoint: dict[str, Any],
        outputs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        """Save a finished stage: its logits, its final model (``checkpoints/gen{i}.pt``),
        its ``entry`` in ``summary`` (written to summary.json) and metrics.csv."""
        index = entry["generation"]
        self.save_logits(index, outputs)
        self.save(self.generation_checkpoint(index), checkpoint)
        summary["generations"] = [e for e in summary["generations"] if e["generation"] != index]
        summary["generations"].append(entry)
        self.write_summary(summary)
        self.write_metrics_csv()

    def finish(self, summary: dict[str, Any], last: int) -> None:
        """Write the final summary and metrics.csv, and mark the run finished at stage
        ``last``."""
        self.write_summary(summary)
        self.write_metrics_csv()
        self.write_state("finished", generation=last)

    # --- metrics ------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """Append one evaluation record to metrics.jsonl, and give it to the trackers."""
        if not self.writable:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as file:
            file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())
        for tracker in self._trackers.values():
            tracker.log_metrics(record)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a crash ends the log
        return records

    def truncate_metrics(self, generation: int, epoch: int) -> None:
        """Keep only records up to (generation, epoch): a resume replays what came after."""
        if not self.writable:
            return
        kept = [
            r for r in self.read_metrics() if (r["generation"], r["epoch"]) <= (generation, epoch)
        ]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_metrics_csv(self) -> None:
        if not self.writable:
            return
        records = self.read_metrics()
        if not records:
            return
        columns = list(dict.fromkeys(key for record in records for key in record))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        atomic_write_text(self.path / "metrics.csv", buffer.getvalue())

    def open_trackers(self, config: Config) -> None:
        """Open the experiment trackers that ``config`` selects (:mod:`kdgen.trackers`),
        give them the resolved config, and record them in run.json; a resumed run continues
        the tracked runs recorded there."""
        if not self.writable:
            return
        sweep = Path(config.sweep_dir) if config.sweep_dir else None
        name = self.path.name
        if sweep is not None and self.path.resolve().is_relative_to(sweep.resolve()):
            name = str(self.path.resolve().relative_to(sweep.resolve()))
        previous = self.read_state().get("trackers", {})
        self._trackers = open_trackers(selected_loggers(config), self.path, name, sweep, previous)
        params = flatten_config(to_dict(config))
        for tracker in self._trackers.values():
            tracker.log_params(params)
        records = {logger: tracker.record for logger, tracker in self._trackers.items()}
        atomic_write_json(self.state_path, {**self.read_state(), "trackers": records})

    def close(self) -> None:
        """Close the trackers with the run's state (failed or interrupted where run.json
        says so by now, else finished) and release the writer lock."""
        status = self._status if self._status in FINAL_STATES else "finished"
        trackers, self._trackers = self._trackers, {}
        for tracker in trackers.values():
            tracker.close(status)
        self._lock.release()


def choose_run_folder(config: Config, resume: bool, force_new: bool) -> RunFolder:
    """The run folder ``config`` would train into (``out_dir``, or ``runs/<time>-<name>``
    when unset; with ``force_new``, a free folder beside one that holds results), or a
    RunDirError saying why it may not. Creates nothing, and ``config`` is not changed: the
    caller records the folder's path as the run's ``out_dir``."""
    path = Path(config.out_dir or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.name}")
    check_folder_path(path)
    folder = RunFolder(path)
    if resume:
        folder.require_run("cannot resume: ")
        diff = config_diff(folder.read_config(), config)
        if diff:
            raise RunDirError(
                f"cannot resume {path}: its config differs ({'; '.join(diff)}); "
                "resume without overrides, or use --force-new to start a new run"
            )
        return folder
    if folder.has_results():
        if not force_new:
            raise RunDirError(
                f"{path} already holds a run; resume it with --resume {path}, "
                "or pass --force-new to write into a new folder"
            )
        folder = RunFolder(unique_folder(path))
    return folder


def snapshot_record(config: Config) -> dict[str, Any]:
    """A snapshot run's cycles, the cycle students' temperature and each cycle's epochs."""
    return {
        "cycles": config.snapshot.cycles,
        "temperature": config.snapshot.temperature,
        "cycle_epochs": cycle_epochs(config),
    }


def summary_header(
    config: Config,
    dataset: DataSource,
    digest: str,
    numerics: Numerics | None = None,
    record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``summary.json`` before any generation: the method's settings and the run's, its
    provenance ``record`` (kdgen.provenance: versions, device, threads, seeding, patriarch),
    and ``not_recorded`` naming the caller's Python objects that stand in for the model or
    the data (:func:`kdgen.config.not_recorded`), when there are any."""
    unrecorded = not_recorded(config)
    return {
        "name": config.name,
        "process": config.process,
        "eta": config.eta,
        "lam": config.lam,
        "regularizer": config.regularizer,
        "k": config.k,
        "regularizer_form": config.regularizer_form,
        "regularize_all_teachers": config.regularize_all_teachers,
        "temperature": config.temperature,
        "model": config.model,
        "data": config.data.name,
        **({"not_recorded": unrecorded} if unrecorded else {}),
        "num_classes": dataset.num_classes,
        "seed": config.seed,
        **({"snapshot": snapshot_record(config)} if config.snapshot.cycles else {}),
        **({"auto": asdict(config.auto)} if config.generations == "auto" else {}),
        **(numerics.record() if numerics else {}),
        **(record or {}),
        "config_hash": digest,
        "generations": [],
    }


def generation_entry(
    generation: int,
    final: dict[str, Any],
    epochs: int,
    stage: str = "generation",
    teacher: int | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """A finished stage's entry in ``summary.json``: its index (``generation``, also for
    a snapshot cycle), its kind (``"generation"`` or ``"cycle"``), its model, the stage that
    taught it (None: none), its epochs and its final metrics per split, and those of the EMA
    of its weights on the same splits (``"ema": {"val": ..., "test": ..., "train_eval": ...}``)
    when it has one."""
    entry = {
        "generation": generation,
        "stage": stage,
        "model": model,
        "teacher": teacher,
        "epochs": epochs,
        "train": final.get("train"),
        "train_eval": final.get("train_eval"),
        "val": final.get("val"),
        "test": final.get("test"),
    }
    if final.get("ema") is not None:
        entry["ema"] = final["ema"]
    return entry


def classes_record(evaluation: EvalSettings, source: DataSource) -> dict[str, Any]:
    """``classes.json``: class names and the coarse groups used by Dist^C."""
    coarse = evaluation.coarse_of_fine
    return {
        "class_names": source.class_names,
        "coarse_of_fine": None if coarse is None else coarse.tolist(),
    }


def check_identity(
    payload: Mapping[str, Any], expected: Mapping[str, Any], what: str, path: Path
) -> None:
    """Raise CheckpointError naming every key whose value in a checkpoint's ``payload``
    differs from ``expected`` (e.g. the model name and the number of classes)."""
    differing = [
        f"{key}={payload.get(key)!r} where this run needs {value!r}"
        for key, value in expected.items()
        if payload.get(key) != value
    ]
    if differing:
        raise CheckpointError(f"{what} {path} does not match this run: {'; '.join(differing)}")


# What a resumable state must hold (older checkpoints may lack the NumPy/Python RNGs).
RESUME_KEYS = (
    "config_hash",
    "generation",
    "epoch",
    "train_metrics",
    "model",
    "optimizer",
    "scheduler",
    "torch_rng",
)


def _config_mismatch(state: Mapping[str, Any], config: Config | None) -> str:
    """What differs between the config saved in a checkpoint and ``config``."""
    saved_yaml = state.get("config")
    if config is None or not isinstance(saved_yaml, str) or not saved_yaml:
        return "its config hash differs"
    try:
        diff = config_diff(config_from_yaml(saved_yaml), config)
    except ConfigError:
        return "its config hash differs"
    return "; ".join(diff) if diff else "its config hash differs"


def check_resume_state(
    state: Mapping[str, Any], path: Path, digest: str, config: Config | None = None
) -> None:
    """Refuse a resumable state that is incomplete or belongs to another config."""
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a resumable state (it lacks {', '.join(missing)}); "
            "delete it to restart the generation"
        )
    if state["config_hash"] != digest:
        raise CheckpointError(
            f"{path} belongs to another config ({_config_mismatch(state, config)}); "
            "resume with the run's own config, or delete it to restart the generation"
        )
    step = state.get("step", 0)
    if not isinstance(step, int) or step < 0 or (step > 0 and "partial" not in state):
        raise CheckpointError(f"{path} holds an invalid step ({step!r}); delete it to restart")


def unique_folder(path: Path) -> Path:
    """``path`` itself if free, else ``path-1``, ``path-2``, ...: never an existing folder."""
    if not path.exists():
        return path
    index = 1
    while path.with_name(f"{path.name}-{index}").exists():
        index += 1
    return path.with_name(f"{path.name}-{index}")

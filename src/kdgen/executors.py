"""Executors of a sweep's runs: here in parallel processes, or on Slurm.

Both take the plan of :mod:`kdgen.sweep` and run each run as ``kdgen train`` in its own
process, so a run is trained exactly as its ``kdgen sweep --print`` command would train
it. A run that shares another run's patriarch waits for that patriarch (``gen0.pt`` and
its summary entry) and starts as soon as it exists. A finished run is skipped; a run
with a ``config.yaml`` is resumed from its checkpoints (``kdgen train --resume``).

Each run's folder receives ``train.log`` (its output) and ``resources.json`` (the
executor, threads and devices it was given).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from kdgen.errors import ConfigError
from kdgen.runs import RunFolder, atomic_write_json
from kdgen.sweep import SweepRun, last_test_top1, patriarch_ready, run_status

EXIT_RUNS_FAILED = 1
PR_SET_PDEATHSIG = 1  # prctl option, from <linux/prctl.h>


@dataclass
class RunOutcome:
    """What became of one run: finished, failed, interrupted or skipped (already done)."""

    run: SweepRun
    state: str
    seconds: float = 0.0
    top1: float | None = None
    detail: str = ""
    error: str = ""  # a failed run's error: the last line of its train.log

    @property
    def log(self) -> Path:
        return RunFolder(self.run.path).log_path


class Executor(Protocol):
    """Runs (or submits) every run of a sweep and says what became of each."""

    def execute(self, preset: str, runs: list[SweepRun]) -> list[RunOutcome]: ...


def launch_order(runs: list[SweepRun]) -> list[SweepRun]:
    """The order to start runs in: first those whose patriarch other runs load, then the
    independent ones, then the runs that wait for a patriarch (each group in plan order).
    Starting the patriarchs first lets their dependents start as soon as possible and
    leaves short dependent runs, not long waits, at the end of a sweep."""
    owners = {run.shares_patriarch_of for run in runs}

    def rank(run: SweepRun) -> int:
        if run.path in owners:
            return 0
        return 2 if run.shares_patriarch_of is not None else 1

    return sorted(runs, key=rank)


def train_argv(preset: str, run: SweepRun) -> list[str]:
    """The ``kdgen train`` arguments of a run: fresh, or resumed when it has a config.

    The resumed form repeats the preset and overrides, so that a changed sweep is refused
    (its config differs) instead of silently resumed with the old settings.
    """
    words = ["train", preset, *run.overrides, "progress=false"]
    if RunFolder(run.path).config_path.exists():
        return [*words, "--resume", run.path]
    return [*words, "--out", run.path]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def _threads_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@dataclass
class _Job:
    run: SweepRun
    process: subprocess.Popen[bytes]
    slot: int
    started: float
    log: Any


@dataclass
class LocalExecutor:
    """Up to ``jobs`` trainings at once on this machine, each in its own process.

    CPU: each job's torch uses ``cores // jobs`` threads (at least 1). GPUs: job slot i
    gets ``gpus[i % len(gpus)]`` alone through ``CUDA_VISIBLE_DEVICES``; more jobs than
    GPUs only with ``share_gpus``. ``gpus=None`` looks for them (none for a CPU sweep).
    """

    jobs: int = 1
    gpus: list[str] | None = None
    share_gpus: bool = False
    cores: int = field(default_factory=available_cores)
    poll_seconds: float = 0.2
    print_fn: Any = print

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"--jobs={self.jobs} must be >= 1")
        if self.gpus and self.jobs > len(self.gpus) and not self.share_gpus:
            raise ConfigError(
                f"--jobs={self.jobs} exceeds the {len(self.gpus)} visible GPU(s); "
                "pass --share-gpus to put several jobs on one GPU"
            )
        self.threads = max(1, self.cores // self.jobs)

    def execute(self, preset: str, runs: list[SweepRun]) -> list[RunOutcome]:
        outcomes: dict[str, RunOutcome] = {}
        pending: list[SweepRun] = []
        for run in runs:
            if run_status(run.path) == "finished":
                outcomes[run.path] = RunOutcome(run, "skipped", top1=last_test_top1(run.path))
                self._say(f"[skip] {_name(run)}: finished earlier")
            else:
                pending.append(run)
        pending = launch_order(pending)
        running: dict[str, _Job] = {}
        stop = _StopForwarder(running)
        try:
            with stop:
                while pending or running:
                    self._reap(running, outcomes, total=len(runs))
                    if not stop.requested:
                        self._launch(preset, pending, running, outcomes)
                    elif not running:
                        break
                    time.sleep(self.poll_seconds)
        except KeyboardInterrupt:  # Ctrl-C: every job stops gracefully (a resumable state)
            _signal_all(running, signal.SIGINT)
            self._wait_all(running, outcomes, total=len(runs))
        for run in pending:
            outcomes.setdefault(run.path, RunOutcome(run, "interrupted", detail="not started"))
        return [outcomes[run.path] for run in runs]

    def _launch(
        self,
        preset: str,
        pending: list[SweepRun],
        running: dict[str, _Job],
        outcomes: dict[str, RunOutcome],
    ) -> None:
        for run in list(pending):
            if len(running) >= self.jobs:
                return
            owner = run.shares_patriarch_of
            if owner is not None and not patriarch_ready(owner):
                if owner in outcomes or owner not in {r.path for r in pending} | set(running):
                    pending.remove(run)
                    outcomes[run.path] = RunOutcome(
                        run, "failed", detail=f"its patriarch run {owner} produced no gen0"
                    )
                    self._say(f"[fail] {_name(run)}: its patriarch run {owner} failed")
                continue
            pending.remove(run)
            slot = min(set(range(self.jobs)) - {job.slot for job in running.values()})
            running[run.path] = self._start(preset, run, slot)

    def _start(self, preset: str, run: SweepRun, slot: int) -> _Job:
        folder = RunFolder(run.path)
        folder.path.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **_threads_env(self.threads)}
        resources: dict[str, Any] = {
            "executor": "local",
            "jobs": self.jobs,
            "cores": self.cores,
            "threads": self.threads,
            "host": socket.gethostname(),
            "started": time.time(),
        }
        if self.gpus:
            device = self.gpus[slot % len(self.gpus)]
            env["CUDA_VISIBLE_DEVICES"] = device
            resources["cuda_visible_devices"] = device
        argv = [sys.executable, "-m", "kdgen", *train_argv(preset, run)]
        resumed = "--resume" in argv
        log = folder.log_path.open("ab")
        log.write(f"\n$ {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            process_group=0,  # signals to the sweep's group reach the sweep alone
            preexec_fn=_die_with_parent(),
        )
        atomic_write_json(folder.resources_path, {**resources, "pid": process.pid})
        where = f", GPU {resources['cuda_visible_devices']}" if self.gpus else ""
        verb = "resume" if resumed else "start"
        self._say(f"[{verb}] {_name(run)} ({self.threads} threads{where}), log: {folder.log_path}")
        return _Job(run, process, slot, time.monotonic(), log)

    def _reap(self, running: dict[str, _Job], outcomes: dict[str, RunOutcome], total: int) -> None:
        for path, job in list(running.items()):
            code = job.process.poll()
            if code is None:
                continue
            del running[path]
            job.log.close()
            outcome = _outcome(job, code)
            outcomes[path] = outcome
            self._say(f"[{len(outcomes)}/{total}] {_finish_line(outcome)}")

    def _wait_all(
        self, running: dict[str, _Job], outcomes: dict[str, RunOutcome], total: int
    ) -> None:
        while running:
            try:
                for job in running.values():
                    job.process.wait()
            except KeyboardInterrupt:  # a second Ctrl-C: the jobs exit at once
                _signal_all(running, signal.SIGINT)
                continue
            self._reap(running, outcomes, total)

    def _say(self, line: str) -> None:
        self.print_fn(line, flush=True)


class _StopForwarder:
    """While active, SIGTERM to the sweep asks every job to stop gracefully (they save a
    resumable checkpoint); the sweep starts nothing more and waits for them. The jobs run
    in their own process groups, so each receives the signal once."""

    def __init__(self, running: dict[str, _Job]) -> None:
        self.running = running
        self.requested = False
        self.previous: Any = None

    def __enter__(self) -> _StopForwarder:
        self.previous = signal.signal(signal.SIGTERM, self._forward)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self.previous)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        _signal_all(self.running, signum)


def _signal_all(running: dict[str, _Job], signum: int) -> None:
    for job in running.values():
        if job.process.poll() is None:
            job.process.send_signal(signum)


def _die_with_parent() -> Any:
    """A ``preexec_fn`` that has Linux SIGKILL the job when the sweep dies (a SIGKILL of
    the sweep ends every training it started; the rerun resumes them). None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the sweep died before the line above
            os.kill(os.getpid(), signal.SIGKILL)

    return set_death_signal


def _name(run: SweepRun) -> str:
    return f"{run.label} seed {run.seed}"


def _outcome(job: _Job, code: int) -> RunOutcome:
    seconds = time.monotonic() - job.started
    top1 = last_test_top1(job.run.path)
    if code == 0:
        return RunOutcome(job.run, "finished", seconds, top1)
    state = "interrupted" if code in (130, 143, -signal.SIGINT, -signal.SIGTERM) else "failed"
    error = (RunFolder(job.run.path).last_log_line() or "") if state == "failed" else ""
    return RunOutcome(job.run, state, seconds, top1, detail=f"exit status {code}", error=error)


def _finish_line(outcome: RunOutcome) -> str:
    top1 = "" if outcome.top1 is None else f", test top-1 {outcome.top1:.4f}"
    error = f": {outcome.error}" if outcome.error else ""
    detail = f" ({outcome.detail}, log: {outcome.log})" if outcome.state != "finished" else ""
    return f"{_name(outcome.run)}: {outcome.state} in {outcome.seconds:.1f}s{top1}{error}{detail}"


def outcomes_table(outcomes: list[RunOutcome]) -> str:
    """One row per run: process, seed, state, seconds, test top-1, log."""
    header = ("process", "seed", "state", "seconds", "test top-1", "log")
    rows = [
        (
            o.run.label,
            str(o.run.seed),
            o.state,
            f"{o.seconds:.1f}" if o.seconds else "-",
            "-" if o.top1 is None else f"{o.top1:.4f}",
            str(o.log),
        )
        for o in outcomes
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def exit_status(outcomes: list[RunOutcome]) -> int:
    """0 when every run finished (or had finished), else 1 (130 when interrupted)."""
    if any(o.state == "failed" for o in outcomes):
        return EXIT_RUNS_FAILED
    if any(o.state == "interrupted" for o in outcomes):
        return 130
    return 0


# --- Slurm ------------------------------------------------------------------------------
SLURM_FOLDER = "slurm"
ACTIVE_SLURM_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "SUSPENDED", "RESIZING")
STOP_GRACE_SECONDS = 60


def parse_minutes(text: str) -> int:
    """Slurm's time formats as minutes: ``90``, ``1:30:00``, ``2-00:00:00``, ``2-12``."""
    days, _, clock = text.rpartition("-") if "-" in text else ("0", "", text)
    try:
        parts = [int(p) for p in clock.split(":")]
        if "-" in text and len(parts) == 1:
            hours, minutes, seconds = parts[0], 0, 0
        elif len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        else:
            hours, minutes, seconds = ([0] * (3 - len(parts)) + parts)[-3:]
        total = int(days) * 1440 + hours * 60 + minutes + (seconds > 0)
    except ValueError:
        raise ConfigError(f"--time={text} must be minutes, HH:MM:SS or D-HH:MM:SS") from None
    if total < 1:
        raise ConfigError(f"--time={text} must be at least one minute")
    return total


@dataclass
class SlurmSettings:
    """The resources of every job; ``options`` go to sbatch as ``--key=value``."""

    partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int = 1
    mem: str | None = None
    time: str = "24:00:00"
    options: dict[str, str] = field(default_factory=dict)


class TrainJob:
    """What one Slurm job runs: ``kdgen train`` for one run, in a child process whose
    output goes to the run's ``train.log``. A submitit checkpointable: when Slurm warns of
    preemption or the time limit, the training is asked to stop (it saves a resumable
    state), and submitit requeues the job, which then resumes the run."""

    def __init__(self, preset: str, run: SweepRun, threads: int) -> None:
        self.preset, self.run, self.threads = preset, run, threads
        self._process: subprocess.Popen[bytes] | None = None

    def __call__(self) -> str:
        folder = RunFolder(self.run.path)
        folder.path.mkdir(parents=True, exist_ok=True)
        if run_status(folder.path) == "finished":
            return "finished earlier"
        argv = [sys.executable, "-m", "kdgen", *train_argv(self.preset, self.run)]
        atomic_write_json(
            folder.resources_path,
            {
                "executor": "slurm",
                "job_id": os.environ.get("SLURM_JOB_ID"),
                "threads": self.threads,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "host": socket.gethostname(),
                "started": time.time(),
            },
        )
        with folder.log_path.open("ab") as log:
            log.write(f"\n$ {' '.join(argv)}\n".encode())
            log.flush()
            env = {**os.environ, **_threads_env(self.threads)}
            self._process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_ignore_warning_signal,
            )
            code = self._process.wait()
        if code != 0:
            raise RuntimeError(f"kdgen train exited with status {code}; see {folder.log_path}")
        return "finished"

    def checkpoint(self) -> Any:
        """Stop the training gracefully, then resubmit this same job (it will resume)."""
        import submitit

        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_GRACE_SECONDS)
        return submitit.helpers.DelayedSubmission(TrainJob(self.preset, self.run, self.threads))

    def __getstate__(self) -> dict[str, Any]:
        return {"preset": self.preset, "run": self.run, "threads": self.threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["preset"], state["run"], state["threads"])  # type: ignore[misc]


def _ignore_warning_signal() -> None:
    """Slurm may send its time-limit warning (USR2) to every process of the job: only
    submitit's handler in the job process acts on it, by stopping the training."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


@dataclass
class SlurmExecutor:
    """One Slurm job per run through submitit; a run that shares a patriarch depends on
    its owner's job (``afterok``). Submission files and Slurm logs go to ``RUN/slurm/``.
    A run whose earlier job is still queued or running is not submitted again."""

    settings: SlurmSettings
    print_fn: Any = print

    def __post_init__(self) -> None:
        _submitit()  # no Slurm here: one line before the sweep writes anything

    def execute(self, preset: str, runs: list[SweepRun]) -> list[RunOutcome]:
        job_ids: dict[str, str] = {}
        outcomes = []
        for run in runs:
            if run_status(run.path) == "finished":
                outcomes.append(RunOutcome(run, "skipped", top1=last_test_top1(run.path)))
                self._say(f"[skip] {_name(run)}: finished earlier")
                continue
            queued = _active_job(RunFolder(run.path))
            if queued is not None:
                job_ids[run.path] = queued
                outcomes.append(RunOutcome(run, "queued", detail=f"Slurm job {queued}"))
                self._say(f"[queued] {_name(run)}: already Slurm job {queued}")
                continue
            owner = run.shares_patriarch_of
            after = job_ids.get(owner) if owner and not patriarch_ready(owner) else None
            job_ids[run.path] = self._submit(preset, run, after)
            outcomes.append(RunOutcome(run, "submitted", detail=f"Slurm job {job_ids[run.path]}"))
            needs = f", after job {after}" if after else ""
            self._say(f"[submit] {_name(run)}: Slurm job {job_ids[run.path]}{needs}")
        return outcomes

    def _submit(self, preset: str, run: SweepRun, after: str | None) -> str:
        submitit = _submitit()
        folder = RunFolder(run.path)
        slurm = folder.path / SLURM_FOLDER
        executor = submitit.SlurmExecutor(folder=slurm / "%j")
        settings = self.settings
        parameters: dict[str, Any] = {
            "job_name": f"kdgen-{Path(run.path).parent.name}-seed{run.seed}",
            "time": parse_minutes(settings.time),
            "cpus_per_task": settings.cpus_per_job,
            "stderr_to_stdout": True,
            "additional_parameters": dict(settings.options),
        }
        if settings.partition:
            parameters["partition"] = settings.partition
        if settings.gpus_per_job:
            parameters["gpus_per_node"] = settings.gpus_per_job
        if settings.mem:
            parameters["mem"] = settings.mem
        if after is not None:
            parameters["dependency"] = f"afterok:{after}"
        executor.update_parameters(**parameters)
        try:
            job = executor.submit(TrainJob(preset, run, max(1, settings.cpus_per_job)))
        except submitit.core.utils.FailedJobError as error:  # sbatch refused it
            reason = (str(error).strip().splitlines() or ["no reason given"])[-1]
            raise ConfigError(
                f"sbatch refused the job of {run.path}: {reason}; check --partition, "
                "--time, --mem and --slurm-opt"
            ) from None
        atomic_write_json(slurm / "job.json", {"job_id": job.job_id, "after": after})
        return str(job.job_id)

    def _say(self, line: str) -> None:
        self.print_fn(line, flush=True)


def _submitit() -> Any:
    """The submitit module, once it is known to be installed and to see Slurm (its own
    test: ``srun`` on PATH); else a one-line ConfigError."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor slurm needs submitit: pip install 'kdgen[slurm]'") from None
    if submitit.SlurmExecutor.affinity() <= 0:
        raise ConfigError(
            "--executor slurm needs Slurm, and this machine has none (no srun on PATH): "
            "run the sweep on a Slurm login node, or use --executor local"
        )
    return submitit


def _active_job(folder: RunFolder) -> str | None:
    """The id of the run's last submitted Slurm job, if squeue still lists it as active."""
    record = folder.path / SLURM_FOLDER / "job.json"
    if not record.exists():
        return None
    job_id = str(json.loads(record.read_text())["job_id"])
    try:
        answer = subprocess.run(
            ["squeue", "--noheader", "--jobs", job_id, "--format", "%T"],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    return job_id if answer.stdout.strip() in ACTIVE_SLURM_STATES else None

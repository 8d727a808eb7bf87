"""The ``kdgen`` command line: subcommands that call the Python API.

Every user error (a :class:`KdgenError`) becomes one line on stderr and exit status 2;
``--debug`` shows the traceback instead. ``torchrun ... -m kdgen train ...`` trains
data-parallel (see :mod:`kdgen.distributed`); only rank 0 prints.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdgen.errors import ERROR_PREFIX, KdgenError, KdgenWarning, one_line
from kdgen.preemption import TrainingStopped

if TYPE_CHECKING:
    from kdgen.config import Config
    from kdgen.executors import Executor
    from kdgen.policy import Stage
    from kdgen.sweep import SweepRun

EXIT_USAGE = 2


def _split_overrides(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """A first positional that looks like key=value is an override, not a config."""
    if config is not None and "=" in config and not Path(config).exists():
        return None, [config, *overrides]
    return config, overrides


def cmd_train(args: argparse.Namespace) -> int:
    from kdgen import distributed
    from kdgen.config import build_config
    from kdgen.generations import train_generations
    from kdgen.report import chosen_line, generations_table
    from kdgen.runs import RunFolder

    source, overrides = _split_overrides(args.config, args.overrides)
    if args.resume:
        folder = RunFolder(args.resume)
        folder.require_run("cannot resume: ")
        config = build_config(
            source or str(folder.config_path), [*overrides, f"out_dir={args.resume}"]
        )
    else:
        if source is None:
            raise KdgenError("kdgen train needs a config file or preset (see: kdgen presets)")
        if args.out:
            overrides = [*overrides, f"out_dir={args.out}"]
        config = build_config(source, overrides)
    if args.dry_run:
        print(describe_run(config, resume=bool(args.resume), force_new=args.force_new))
        return 0
    try:
        with _stop_signals(), distributed.launch(config.device) as dist:
            result = train_generations(
                config, resume=bool(args.resume), force_new=args.force_new, dist=dist
            )
    except KdgenError as error:
        error.args = (f"{error}{_reuse_note(config.out_dir)}",)
        raise
    if not dist.is_main():
        return 0
    print(generations_table([result.summary]))
    chosen = chosen_line(result.summary)
    if chosen:
        print(chosen)
    print(f"run folder: {result.path}")
    return 0


def describe_run(config: Config, resume: bool = False, force_new: bool = False) -> str:
    """What ``kdgen train`` would do with ``config``, after every check it makes before
    writing (:func:`kdgen.preflight.preflight`): the resolved config, the model and data,
    each stage's schedule and loss, the numerics and the run folder. Writes nothing."""
    from dataclasses import replace

    from kdgen.build import resolve_device, run_numerics
    from kdgen.config import model_of, to_yaml
    from kdgen.policy import plan_stages
    from kdgen.preflight import preflight
    from kdgen.provenance import begin_run
    from kdgen.runs import choose_run_folder

    folder = choose_run_folder(config, resume, force_new)
    config = replace(config, out_dir=str(folder.path))
    device = resolve_device(config.device)
    recorded = folder.read_state() if resume else {}
    numerics = run_numerics(config, device, recorded)
    checked = preflight(config, device, numerics)
    begin_run(config, device, recorded)  # a resume under another seeding scheme is refused
    data = checked.dataset
    stages = plan_stages(config)
    saved = folder.finished_generations() if resume else []
    last = stages[-1].index
    what = f"cycles 0 ... {last}" if stages[0].kind == "cycle" else f"M_0 ... M_{last}"
    if config.generations == "auto":
        what += " at most (generations=auto)"
    lines = [
        "# the resolved config (a valid input to kdgen train)",
        to_yaml(config).rstrip(),
        "",
        f"would train {what} of {config.model} "
        f"({checked.parameters:,} parameters) on {config.data.name} ({data.num_classes} "
        f"classes, {data.in_channels} channels), {checked.steps_per_epoch} steps an epoch "
        f"of {config.data.batch_size} images",
    ]
    for stage in stages:
        lines.append(f"  {stage.kind} {stage.index}: {_stage_plan(config, stage, saved)}")
        if model_of(config, stage.index) != config.model:
            lines[-1] += f" (model {model_of(config, stage.index)})"
    lines.append(f"device {device}, precision {numerics.precision}, {numerics.layout} layout")
    state = "resumed" if resume else "reused" if folder.path.exists() else "new"
    lines.append(f"run folder: {folder.path} ({state}); nothing was written (--dry-run)")
    return "\n".join(lines)


def _stage_plan(config: Config, stage: Stage, saved: list[int]) -> str:
    """One stage in ``kdgen train --dry-run``: saved, loaded, or its schedule and loss."""
    if stage.index in saved:
        return "saved already"
    if stage.index == 0 and config.patriarch:
        return f"loaded from patriarch={config.patriarch}"
    schedule, loss = stage.schedule, stage.loss.settings
    how = ", ".join(f"{key}={value}" for key, value in loss.items() if key != "generation_role")
    role = loss.get("generation_role", stage.kind)
    return (
        f"{schedule.epochs} epochs, lr {schedule.lr:g} ({schedule.scheduler}), {role} loss: {how}"
    )


def _reuse_note(out_dir: str | None) -> str:
    """For a run folder whose run failed before its first checkpoint: that the corrected
    command may write into it (see RunFolder.clear_attempt)."""
    from kdgen.runs import RunFolder

    if out_dir is None or not RunFolder(out_dir).failed_without_results():
        return ""
    return f"; {out_dir} holds no checkpoint yet: the corrected command may reuse it"


def _stop_signals() -> contextlib.AbstractContextManager[None]:
    """SIGTERM/SIGINT handlers that stop training gracefully after a resumable save; under
    torchrun (which passes its SIGTERM on to every rank) the ranks agree on the step."""
    from kdgen import preemption

    return preemption.handle_signals()


def _report_stop(stopped: TrainingStopped) -> int:
    """One line saying where training stopped and how to resume; 143 (SIGTERM) / 130."""
    from kdgen import preemption

    if _prints():
        print(
            f"kdgen: {stopped}; resume with: kdgen train --resume {stopped.run_dir}",
            file=sys.stderr,
        )
    return preemption.exit_status()


# A path that cannot be written (read-only file system, permissions, a file in the way).
_PATH_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST)


def _os_error_line(error: OSError) -> str | None:
    """A one-line message for a full disk or exceeded quota, or for a path that cannot
    be written; None for other OS errors (a traceback: they are kdgen's to fix)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" {error.filename}" if error.filename else ""
        return (
            f"disk full while writing{where} ({os.strerror(error.errno)}); "
            "free some space, then resume with: kdgen train --resume RUN_DIR"
        )
    if error.errno in _PATH_ERRNOS and error.filename:
        return (
            f"cannot write {error.filename} ({os.strerror(error.errno)}); "
            "choose another --out, or make the folder writable"
        )
    return None


def cmd_eval(args: argparse.Namespace) -> int:
    from kdgen.evaluation import evaluate_run
    from kdgen.report import generations_table

    summary = evaluate_run(args.run_dir, device=args.device)
    print(generations_table([summary]))
    print(f"wrote {Path(args.run_dir) / 'eval.json'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kdgen.export import export_run

    for path in export_run(args.run_dir, args.out):
        print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kdgen.demo import run_demo

    table, results = run_demo(args.out, tuple(args.overrides))
    print()
    print("Test metrics per process and generation (synthetic data, one seed):")
    print(table)
    print(f"\nrun folders: {results[0].path.parent}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from kdgen.executors import exit_status, outcomes_table
    from kdgen.sweep import format_commands, plan_sweep, prepare_trackers, read_plan, write_plan

    if args.jobs is not None and args.jobs < 1:
        raise KdgenError(f"--jobs {args.jobs} must be at least 1 (trainings at once)")
    if args.resume:
        out = Path(args.resume)
        preset, runs, saved = read_plan(out)
    else:
        if args.preset is None or not args.processes:
            raise KdgenError("kdgen sweep needs a preset and --processes (or --resume DIR)")
        out = Path(args.out or _default_sweep_folder(args.preset))
        if not args.print:  # run folders and patriarch paths that work from any directory
            out = out.resolve()
        preset, saved = args.preset, {}
        runs = plan_sweep(preset, args.processes, args.seeds, out, tuple(args.overrides))
    if args.print:
        print(format_commands(preset, runs))
        return 0
    settings = _executor_settings(args, saved)
    executor = _make_executor(settings, on_cpu=_runs_on_cpu(preset, runs))
    write_plan(out, preset, runs, settings)
    prepare_trackers(preset, runs)
    outcomes = executor.execute(preset, runs)
    print()
    print(outcomes_table(outcomes))
    failed = [o for o in outcomes if o.state == "failed"]
    for outcome in failed:
        error = f": {outcome.error}" if outcome.error else ""
        print(f"kdgen: run failed: {outcome.run.path}{error} (log: {outcome.log})", file=sys.stderr)
    print(f"sweep folder: {out}  (tables and figures: kdgen report {out})")
    return exit_status(outcomes)


def _default_sweep_folder(preset: str) -> Path:
    import time

    return Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{Path(preset).stem}"


SLURM_SETTINGS = ("partition", "gpus_per_job", "cpus_per_job", "mem", "time", "slurm_opt")


def _executor_settings(args: argparse.Namespace, saved: dict[str, Any]) -> dict[str, Any]:
    """How to execute the sweep: the options given, else those saved in sweep.json."""
    names = ("executor", "jobs", "share_gpus", *SLURM_SETTINGS)
    settings = {name: saved.get(name) for name in names}
    given = {name: getattr(args, name) for name in names}
    settings.update({n: v for n, v in given.items() if v is not None and v is not False})
    settings["executor"] = settings["executor"] or "local"
    settings["jobs"] = 1 if settings["jobs"] is None else settings["jobs"]
    settings["share_gpus"] = bool(settings["share_gpus"])
    return {key: value for key, value in settings.items() if value is not None}


def _runs_on_cpu(preset: str, runs: list[SweepRun]) -> bool:
    """Whether the sweep's config asks for the CPU (then GPUs play no part)."""
    from kdgen.config import build_config

    return bool(runs) and build_config(preset, list(runs[0].overrides)).device == "cpu"


def _make_executor(settings: dict[str, Any], on_cpu: bool = False) -> Executor:
    from kdgen.executors import LocalExecutor, SlurmExecutor, SlurmSettings, visible_gpus

    if settings["executor"] == "slurm":
        return SlurmExecutor(
            SlurmSettings(
                partition=settings.get("partition"),
                gpus_per_job=int(settings.get("gpus_per_job", 0)),
                cpus_per_job=int(settings.get("cpus_per_job", 1)),
                mem=settings.get("mem"),
                time=str(settings.get("time", SlurmSettings.time)),
                options=_slurm_options(settings.get("slurm_opt", [])),
            )
        )
    return LocalExecutor(
        jobs=int(settings["jobs"]),
        gpus=[] if on_cpu else visible_gpus(),
        share_gpus=settings["share_gpus"],
    )


def _slurm_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not key or not equals:
            raise KdgenError(f"--slurm-opt {pair} must look like key=value, e.g. account=proj")
        options[key.lstrip("-")] = value
    return options


def cmd_report(args: argparse.Namespace) -> int:
    from kdgen.report import write_report

    out = Path(args.out) if args.out else Path(args.dirs[0]) / "report"
    path = write_report(
        [Path(d) for d in args.dirs], out, per_class_examples=args.classes, baseline=args.baseline
    )
    print(
        f"wrote {path}, {path.with_suffix('.html')}, {out / 'accuracy.png'}, "
        f"{out / 'secondary.png'}"
    )
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from kdgen.transfer import format_transfer_table, transfer_path, transfer_run

    result = transfer_run(
        args.run_dir,
        args.data,
        root=args.root,
        download=args.download,
        device=args.device,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        C=args.C,
        seed=args.seed,
    )
    print(format_transfer_table(result))
    print(f"wrote {transfer_path(args.run_dir, args.data)}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from kdgen.config import list_presets, preset_description

    for name in list_presets():
        print(f"{name:24s} {preset_description(name)}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from kdgen.models import list_models, prefix_sources

    print("\n".join(list_models()))
    for source in prefix_sources():
        if not source.available():
            print(f"{source.prefix}<name>  {source.description} (needs: {source.install})")
        elif args.all:
            print("\n".join(source.prefix + name for name in source.names()))
        else:
            print(f"{source.prefix}<name>  {source.description} ({len(source.names())} models)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from kdgen.runs import RunFolder
    from kdgen.sweep import folder_status, format_status, is_sweep_folder, sweep_status

    path = Path(args.run_dir)
    if is_sweep_folder(path):
        print(format_status(sweep_status(path)))
        return 0
    if not RunFolder(path).state_path.exists():
        raise KdgenError(f"{args.run_dir} holds no run (no run.json)")
    print(format_status([folder_status(path)]))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from kdgen.config import build_config, to_yaml

    print(to_yaml(build_config(args.preset, args.overrides)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdgen",
        description="Train deep networks in generations with tolerant teachers.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a patriarch and its student generations")
    train.add_argument("config", nargs="?", help="a preset name or a YAML config file")
    train.add_argument("overrides", nargs="*", help="key=value config overrides")
    train.add_argument("--out", help="the run folder (default: runs/<time>-<name>)")
    train.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR")
    train.add_argument(
        "--force-new",
        action="store_true",
        help="if the run folder holds results, write into a new folder beside it",
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything, print the resolved config and what would run; write nothing",
    )
    train.set_defaults(func=cmd_train)

    config = sub.add_parser("config", help="print the resolved config of a preset and overrides")
    config.add_argument("preset", help="a preset name or a YAML config file")
    config.add_argument("overrides", nargs="*", help="key=value config overrides")
    config.set_defaults(func=cmd_config)

    evaluate = sub.add_parser("eval", help="recompute test metrics from a run's checkpoints")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=cmd_eval)

    export = sub.add_parser("export", help="write each generation's weights as safetensors")
    export.add_argument("run_dir")
    export.add_argument("--out", help="where to write (default: RUN_DIR/export)")
    export.set_defaults(func=cmd_export)

    demo = sub.add_parser("demo", help="the built-in demo: three processes on synthetic data")
    demo.add_argument("overrides", nargs="*", help="key=value overrides of the demo preset")
    demo.add_argument("--out", help="the demo folder (default: runs/demo-<time>)")
    demo.set_defaults(func=cmd_demo)

    sweep = sub.add_parser("sweep", help="run a grid of processes x seeds from one preset")
    sweep.add_argument("preset", nargs="?", help="a preset name or a YAML config file")
    sweep.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    sweep.add_argument(
        "--processes",
        nargs="+",
        metavar="SPEC",
        help="D(eta,lam), or D(eta,lam):REG to set the regulariser (lsr, cp)",
    )
    sweep.add_argument("--seeds", nargs="+", type=int, default=[0])
    sweep.add_argument("--out", help="the sweep folder (default: runs/sweep-<time>-<preset>)")
    sweep.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the sweep in DIR (its plan is in DIR/sweep.json): finished runs "
        "are skipped, unfinished ones resumed from their checkpoints",
    )
    sweep.add_argument(
        "--print",
        action="store_true",
        help="print one kdgen train command per run instead of running them",
    )
    sweep.add_argument(
        "--executor",
        choices=("local", "slurm"),
        help="local: processes on this machine (default); slurm: one Slurm job per run",
    )
    sweep.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="local: trainings at once (default 1); each gets cores/N threads, or a GPU",
    )
    sweep.add_argument(
        "--share-gpus",
        action="store_true",
        help="local: allow more jobs than visible GPUs (round robin over them)",
    )
    slurm = sweep.add_argument_group("Slurm (--executor slurm): the resources of each job")
    slurm.add_argument("--partition")
    slurm.add_argument("--gpus-per-job", type=int, metavar="N")
    slurm.add_argument("--cpus-per-job", type=int, metavar="N", help="also its torch threads")
    slurm.add_argument("--mem", help="memory per job, e.g. 32G")
    slurm.add_argument("--time", help="time limit per job: minutes, HH:MM:SS or D-HH:MM:SS")
    slurm.add_argument(
        "--slurm-opt",
        action="append",
        metavar="KEY=VALUE",
        help="any other sbatch option, e.g. --slurm-opt account=proj (repeatable)",
    )
    sweep.set_defaults(func=cmd_sweep)

    report = sub.add_parser("report", help="tables and figures from run or sweep folders")
    report.add_argument("dirs", nargs="+", help="run folders or sweep folders")
    report.add_argument("--out", help="where to write (default: FIRST_DIR/report)")
    report.add_argument(
        "--classes", type=int, default=6, help="classes shown in the per-class secondary view"
    )
    report.add_argument(
        "--baseline",
        default="D(1.0,0.0)",
        help="the process every other is paired with, by seed (default: D(1.0,0.0))",
    )
    report.set_defaults(func=cmd_report)

    transfer = sub.add_parser(
        "transfer", help="linear probe on each generation's features on another data set"
    )
    transfer.add_argument("run_dir")
    transfer.add_argument("--data", required=True, help="the second data set, e.g. fashion-mnist")
    transfer.add_argument("--root", help="where that data set lives")
    transfer.add_argument("--download", action="store_true")
    transfer.add_argument("--train-subset", type=int, help="stratified subset of its train split")
    transfer.add_argument("--test-subset", type=int, help="stratified subset of its test split")
    transfer.add_argument("--C", type=float, default=1.0, help="inverse L2 strength")
    transfer.add_argument("--seed", type=int, default=0)
    transfer.add_argument("--device", default="auto")
    transfer.set_defaults(func=cmd_transfer)

    sub.add_parser("presets", help="list the shipped presets").set_defaults(func=cmd_presets)
    models = sub.add_parser("models", help="list the model names")
    models.add_argument(
        "--all", action="store_true", help="also list every tv:<name> and timm:<name> model"
    )
    models.set_defaults(func=cmd_models)
    status = sub.add_parser(
        "status", help="a run folder's state and progress, or a table of a sweep's runs"
    )
    status.add_argument("run_dir", help="a run folder or a sweep folder")
    status.set_defaults(func=cmd_status)
    for command_parser in sub.choices.values():
        command_parser.set_defaults(command_parser=command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            return int(args.func(args))
    except KdgenError as error:
        if args.debug:
            raise
        if _prints():
            print(f"{ERROR_PREFIX} {one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingStopped as stopped:
        return _report_stop(stopped)
    except OSError as error:
        message = _os_error_line(error)
        if message is None or args.debug:
            raise
        if _prints():
            print(f"{ERROR_PREFIX} {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if _prints():
            print("kdgen: interrupted; resume with: kdgen train --resume RUN_DIR", file=sys.stderr)
        return 130


def _one_line_warnings(show: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints kdgen's own warnings as one line on stderr
    (``kdgen: warning: ...``) and hands the others to ``show``."""

    def show_warning(
        message: Warning | str, category: type[Warning], *where: Any, **more: Any
    ) -> None:
        if not issubclass(category, KdgenWarning):
            show(message, category, *where, **more)
        elif _prints():
            print(f"kdgen: warning: {one_line(message)}", file=sys.stderr)

    return show_warning


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``, letting each subcommand's key=value overrides come before or after
    its options (``kdgen train smoke --out runs/x seed=5``): argparse's intermixed parsing
    of the subcommand's own arguments."""
    args, extras = parser.parse_known_args(argv)
    if not extras:
        return args
    command = argv.index(args.command)
    own = args.command_parser.parse_intermixed_args(argv[command + 1 :])
    return argparse.Namespace(**{**vars(args), **vars(own)})


def _prints() -> bool:
    """Whether this process reports errors: always, except on ranks > 0 of torchrun."""
    from kdgen import distributed

    return distributed.launched_rank() == 0


if __name__ == "__main__":
    sys.exit(main())

"""Training throughput of kdgen against the loop a user would write by hand.

Every mode runs in this one process, interleaved (A B C ... A B C ...), after warm-up
rounds that are not counted; each mode's time is the median over the repeats. One
measurement is one whole epoch over the same training subset, data loading included.

Modes (``--modes`` picks some of them):

- ``reference``: a torchvision ``Dataset`` of PIL images with per-image transforms
  (``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``) in
  a ``DataLoader`` with persistent workers (started once, in the warm-up), ``pin_memory``
  on CUDA, ``shuffle=True``, cross-entropy and ``torch.optim.SGD``, with per-step
  ``loss.item()`` meters: the loop of published KD code bases, written carefully. float32,
  default memory format, no autocast.
- ``bare``: kdgen's model, optimiser, loss and ``DeviceLoader`` in a bare loop: forward,
  loss, backward, step; no scheduler, metrics or logging.
- ``kdgen-ce``: ``kdgen.engine.train_generation`` for one epoch, cross-entropy (eta = 1).
- ``kdgen-kd``: the same for a student (lam = 0.6) with a frozen teacher's forward.
- ``kdgen-student0``: a lam = 0 student: no teacher is frozen or run (``uses_teacher``).
- ``teacher-fwd``: the frozen teacher's forward alone, over pre-materialised batches.
- ``kdgen-eval``: ``kdgen.engine.predict`` over an evaluation ``DeviceLoader``.
- ``kdgen-data``: the training ``DeviceLoader`` alone (sampling, crop, flip, normalise).

Run ``python benchmarks/throughput.py --help`` for the options; benchmarks/README.md
explains each printed number.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from kdgen.build import build_model, prepare_data
from kdgen.config import Config, build_config, precision_setting
from kdgen.data import ImageDataset, ImageSplit, load_dataset
from kdgen.data.tensors import DeviceLoader
from kdgen.engine import freeze, make_optimizer, predict, train_generation
from kdgen.models import create_model
from kdgen.policy import make_loss, uses_teacher
from kdgen.precision import autocast, choose_numerics, resolve_precision

MODES = (
    "reference",
    "bare",
    "kdgen-ce",
    "kdgen-kd",
    "kdgen-student0",
    "teacher-fwd",
    "kdgen-eval",
    "kdgen-data",
)
# Forward passes' worth of FLOPs per image: a training step is ~3 forwards (forward,
# backward to activations, backward to weights); the KD step adds the teacher's forward.
FORWARDS_PER_IMAGE = {
    "reference": 3,
    "bare": 3,
    "kdgen-ce": 3,
    "kdgen-kd": 4,
    "kdgen-student0": 3,
    "teacher-fwd": 1,
    "kdgen-eval": 1,
    "kdgen-data": 0,
}
TARGET_KD_COST = 1.35
TARGET_OVERHEAD = 0.05
TARGET_STUDENT0_COST = 1.05
TARGET_SPEEDUP = 2.4
NUM_CLASSES = 100


# ----------------------------------------------------------------------------- options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--model", default="resnet20", help="a kdgen model name")
    parser.add_argument("--batch", type=int, default=128, help="training batch size")
    parser.add_argument("--eval-batch", type=int, default=500, help="evaluation batch size")
    parser.add_argument(
        "--train-images", type=int, default=5000, help="images in the training subset"
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=None,
        help="training batches per epoch (sets --train-images to BATCHES * BATCH)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    parser.add_argument(
        "--workers", type=int, default=None, help="reference DataLoader workers (2 CPU, 8 CUDA)"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="kdgen's precision (auto: bf16 where the device computes it natively)",
    )
    parser.add_argument(
        "--channels-last",
        choices=("auto", "true", "false"),
        default="auto",
        help="kdgen's memory layout (auto: kdgen's rule for the device)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile kdgen's models")
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="cudnn.benchmark for every mode (default: only the reference loop sets it)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", default=None, help="append one JSON line of results")
    parser.add_argument(
        "--summary", default=None, metavar="FILE", help="print a table of FILE's JSON lines, exit"
    )
    args = parser.parse_args(argv)
    if args.batches is not None:
        args.train_images = args.batches * args.batch
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    if args.train_images < args.batch:
        parser.error("--train-images must hold at least one batch")
    if args.compile and args.warmup < 1:
        parser.error("--compile needs --warmup >= 1 (the first round compiles)")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")
    return torch.device(name)


# ----------------------------------------------------------------------------- data


def make_data(images: int, seed: int) -> ImageDataset:
    """kdgen's synthetic CIFAR-shaped data, cut to ``images`` training images; the same
    images serve as the evaluation split (only the throughput matters here)."""
    per_class = -(-images // NUM_CLASSES)
    dataset = load_dataset("synthetic", train_per_class=per_class, test_per_class=1, seed=seed)
    train = dataset.train.subset(torch.arange(images))
    return dataclasses.replace(dataset, train=train, test=train)


class PILImageDataset(Dataset):
    """A ``torchvision.datasets.CIFAR100`` look-alike: HWC uint8 arrays, PIL per image."""

    def __init__(self, split: ImageSplit, transform: Callable[[Image.Image], torch.Tensor]):
        self.data = split.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(np.asarray(self.data[index]))
        return self.transform(image), self.targets[index]


def reference_loader(
    dataset: ImageDataset, batch: int, workers: int, pin_memory: bool
) -> DataLoader:
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(dataset.mean, dataset.std),
        ]
    )
    return DataLoader(
        PILImageDataset(dataset.train, transform),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
    )


# ----------------------------------------------------------------------------- modes


@dataclass
class Mode:
    """One benchmarked epoch: ``run()`` does it and returns the images it processed."""

    name: str
    run: Callable[[], int]
    seconds: list[float] = field(default_factory=list)
    images: int = 0
    warmup_seconds: list[float] = field(default_factory=list)


def kdgen_config(args: argparse.Namespace, device: torch.device, lam: float) -> Config:
    return build_config(
        None,
        [
            f"model={args.model}",
            f"device={device.type}",
            f"seed={args.seed}",
            "eta=1.0",
            f"lam={lam}",
            "progress=false",
            "tensorboard=false",
            "data.val_size=0",
            f"data.batch_size={args.batch}",
            f"data.eval_batch_size={args.eval_batch}",
            "schedule.epochs=1",
            "schedule.scheduler=constant",
            "schedule.milestones=[]",
            f"precision={args.precision}",
            f"channels_last={'null' if args.channels_last == 'auto' else args.channels_last}",
        ],
    )


def precision_of(config: Config, device: torch.device) -> str:
    """The precision kdgen trains ``config`` in on ``device``: "fp32" or "bf16"."""
    return resolve_precision(precision_setting(config), device)


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    return torch.compile(model) if enabled else model


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """Switch cudnn.benchmark on inside the block (it stays on if it already was)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or before
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def reference_mode(args: argparse.Namespace, dataset: ImageDataset, device: torch.device) -> Mode:
    workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 2)
    loader = reference_loader(dataset, args.batch, workers, pin_memory=device.type == "cuda")
    torch.manual_seed(args.seed)
    model = create_model(args.model, NUM_CLASSES).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def run() -> int:
        model.train()
        seen, loss_sum, correct = 0, 0.0, 0
        with cudnn_benchmark(True):  # published CIFAR training scripts switch it on
            for images, targets in loader:
                images = images.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                logits = model(images)
                loss = criterion(logits, targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * targets.shape[0]  # the usual AverageMeter
                correct += (logits.argmax(dim=1) == targets).sum().item()
                seen += targets.shape[0]
        return seen

    return Mode("reference", run)


def bare_mode(config: Config, loader: DeviceLoader, model: nn.Module) -> Mode:
    optimizer = make_optimizer(model, config.schedule)
    loss_fn = make_loss(config, 0)

    def run() -> int:
        model.train()
        for images, targets in loader:
            with autocast(loader.device, precision_of(config, loader.device)):
                loss = loss_fn(model(images), targets, None)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return len(loader) * loader.batch_size

    return Mode("bare", run)


def engine_mode(
    name: str,
    config: Config,
    loader: DeviceLoader,
    model: nn.Module,
    teacher: nn.Module | None,
    generation: int,
) -> Mode:
    loss_fn = make_loss(config, generation)

    def run() -> int:
        train_generation(
            model,
            loader,
            {},
            config.schedule,
            loss_fn,
            teacher=teacher,
            generation=generation,
            precision=precision_of(config, loader.device),
        )
        return len(loader) * loader.batch_size

    return Mode(name, run)


def teacher_forward_mode(config: Config, loader: DeviceLoader, teacher: nn.Module) -> Mode:
    batches = [images for images, _ in loader]

    def run() -> int:
        with torch.inference_mode(), autocast(loader.device, precision_of(config, loader.device)):
            for images in batches:
                teacher(images)
        return sum(images.shape[0] for images in batches)

    return Mode("teacher-fwd", run)


def eval_mode(config: Config, loader: DeviceLoader, model: nn.Module) -> Mode:
    def run() -> int:
        logits, _ = predict(model, loader, precision_of(config, loader.device))
        return logits.shape[0]

    return Mode("kdgen-eval", run)


def data_mode(loader: DeviceLoader) -> Mode:
    def run() -> int:
        seen = 0
        for _, targets in loader:
            seen += targets.shape[0]
        return seen

    return Mode("kdgen-data", run)


def build_modes(
    args: argparse.Namespace, dataset: ImageDataset, device: torch.device
) -> list[Mode]:
    ce_config = kdgen_config(args, device, lam=0.0)
    kd_config = kdgen_config(args, device, lam=0.6)
    data = prepare_data(ce_config, device, dataset)
    train_loader, eval_loader = data.train_loader, data.eval_loaders["test"]

    def model(generation: int) -> nn.Module:
        return build_model(ce_config, dataset, generation, device)

    teacher = maybe_compile(freeze(model(0)), args.compile)
    makers: dict[str, Callable[[], Mode]] = {
        "reference": lambda: reference_mode(args, dataset, device),
        "bare": lambda: bare_mode(ce_config, train_loader, maybe_compile(model(0), args.compile)),
        "kdgen-ce": lambda: engine_mode(
            "kdgen-ce", ce_config, train_loader, maybe_compile(model(0), args.compile), None, 0
        ),
        "kdgen-kd": lambda: engine_mode(
            "kdgen-kd", kd_config, train_loader, maybe_compile(model(1), args.compile), teacher, 1
        ),
        "kdgen-student0": lambda: engine_mode(
            "kdgen-student0",
            ce_config,
            train_loader,
            maybe_compile(model(1), args.compile),
            teacher if uses_teacher(ce_config, 1) else None,
            1,
        ),
        "teacher-fwd": lambda: teacher_forward_mode(ce_config, train_loader, teacher),
        "kdgen-eval": lambda: eval_mode(
            ce_config, eval_loader, maybe_compile(model(0), args.compile)
        ),
        "kdgen-data": lambda: data_mode(train_loader),
    }
    return [makers[name]() for name in args.modes]


# ----------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epoch(mode: Mode, device: torch.device) -> tuple[float, int]:
    synchronize(device)
    start = time.perf_counter()
    images = mode.run()
    synchronize(device)
    return time.perf_counter() - start, images


def run_interleaved(modes: list[Mode], warmup: int, repeats: int, device: torch.device) -> None:
    """Rounds of every mode in turn; the first ``warmup`` rounds are not counted."""
    for round_index in range(warmup + repeats):
        counted = round_index >= warmup
        for mode in modes:
            seconds, mode.images = time_epoch(mode, device)
            (mode.seconds if counted else mode.warmup_seconds).append(seconds)
        label = "round" if counted else "warm-up"
        times = "  ".join(f"{m.name} {(m.seconds or m.warmup_seconds)[-1]:.2f}s" for m in modes)
        print(f"  {label} {round_index + 1}/{warmup + repeats}: {times}", flush=True)


def forward_flops(model_name: str) -> float:
    """FLOPs of one image's forward pass (a multiply-add counts 2), on a CPU copy."""
    model = create_model(model_name, NUM_CLASSES).eval()
    images = torch.zeros(2, 3, 32, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    return counter.get_total_flops() / images.shape[0]


# ----------------------------------------------------------------------------- results


def mode_stats(mode: Mode, flops_forward: float) -> dict[str, Any]:
    rates = [mode.images / s for s in mode.seconds]
    median_rate = mode.images / statistics.median(mode.seconds)
    flops = FORWARDS_PER_IMAGE[mode.name] * flops_forward
    stats = {
        "images": mode.images,
        "seconds": [round(s, 4) for s in mode.seconds],
        "epoch_s_median": round(statistics.median(mode.seconds), 4),
        "img_per_s": {
            "median": round(median_rate, 1),
            "min": round(min(rates), 1),
            "max": round(max(rates), 1),
        },
        "gflop_per_s": round(median_rate * flops / 1e9, 2),
    }
    if mode.warmup_seconds:
        first = mode.warmup_seconds[0]
        stats["first_epoch_s"] = round(first, 3)
        stats["first_minus_median_s"] = round(first - statistics.median(mode.seconds), 3)
    return stats


def paired_ratio(modes: dict[str, Mode], numerator: str, denominator: str) -> float | None:
    """Median over rounds of time-per-image(numerator) / time-per-image(denominator)."""
    if numerator not in modes or denominator not in modes:
        return None
    a, b = modes[numerator], modes[denominator]
    ratios = [
        (ta / a.images) / (tb / b.images) for ta, tb in zip(a.seconds, b.seconds, strict=True)
    ]
    return round(statistics.median(ratios), 4)


def compute_ratios(modes: dict[str, Mode]) -> dict[str, float | None]:
    """Time ratios per image (> 1: the numerator is slower), paired by round."""
    ratios = {
        "reference_over_kdgen_ce": paired_ratio(modes, "reference", "kdgen-ce"),
        "kd_cost": paired_ratio(modes, "kdgen-kd", "kdgen-ce"),
        "student0_cost": paired_ratio(modes, "kdgen-student0", "kdgen-ce"),
        "ideal_kd_cost": None,
        "engine_overhead": None,
    }
    forward_share = paired_ratio(modes, "teacher-fwd", "kdgen-ce")
    if forward_share is not None:
        ratios["ideal_kd_cost"] = round(1 + forward_share, 4)
    ce_over_bare = paired_ratio(modes, "kdgen-ce", "bare")
    if ce_over_bare is not None:
        ratios["engine_overhead"] = round(ce_over_bare - 1, 4)
    return ratios


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": device.type,
        "device_name": cpu_name(),
        "cpu_bf16": torch.cpu.get_capabilities().get("avx512_bf16", False)
        or torch.cpu.get_capabilities().get("amx_bf16", False),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def print_report(
    results: dict[str, Any], ratios: dict[str, float | None], flops_forward: float
) -> None:
    print(f"\nforward FLOPs per image: {flops_forward / 1e6:.1f} M (training step ~3x)")
    print(
        f"| {'mode':<14} | {'img/s median':>12} | {'min':>9} | {'max':>9} "
        f"| {'epoch s':>8} | {'GFLOP/s':>8} |"
    )
    print(f"|{'-' * 16}|{'-' * 13}:|{'-' * 10}:|{'-' * 10}:|{'-' * 9}:|{'-' * 9}:|")
    for name, stats in results.items():
        rate = stats["img_per_s"]
        print(
            f"| {name:<14} | {rate['median']:>12.1f} | {rate['min']:>9.1f} | {rate['max']:>9.1f} "
            f"| {stats['epoch_s_median']:>8.3f} | {stats['gflop_per_s']:>8.2f} |"
        )

    def show(label: str, value: float | None, note: str) -> None:
        if value is not None:
            print(f"{label:<46} {value:>7.3f}   {note}")

    print()
    ref = ratios["reference_over_kdgen_ce"]
    show("speed-up of kdgen-ce over reference", ref, f"target >= {TARGET_SPEEDUP}")
    show(
        "KD step cost (kdgen-kd / kdgen-ce time)", ratios["kd_cost"], f"target <= {TARGET_KD_COST}"
    )
    show(
        "lam=0 student cost (kdgen-student0 / ce time)",
        ratios["student0_cost"],
        f"target <= {TARGET_STUDENT0_COST}",
    )
    ideal = ratios["ideal_kd_cost"]
    show("ideal KD step cost (1 + teacher-fwd / ce)", ideal, "(1.33 if forward = 1/3 step)")
    overhead = ratios["engine_overhead"]
    if overhead is not None:
        print(
            f"{'engine overhead (kdgen-ce / bare - 1)':<46} {overhead * 100:>6.1f}%   "
            f"target <= {TARGET_OVERHEAD * 100:.0f}%"
        )
    compile_times = {
        n: s["first_minus_median_s"] for n, s in results.items() if "first_minus_median_s" in s
    }
    if compile_times:
        print("first epoch minus median epoch (compile, warm-up), s:", compile_times)


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_summary(path: str) -> None:
    """One row per JSON line of ``path``: the headline numbers of each run."""
    print(
        "| model | device | kdgen numerics | images | compile | reference img/s | kdgen-ce img/s "
        "| kdgen-kd img/s | kdgen-eval img/s | ce speed-up | KD cost | ideal | lam=0 cost "
        "| overhead | kd epoch s |"
    )
    print("|---|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    with open(path) as lines:
        for line in lines:
            record = json.loads(line)
            options, modes, ratios = record["options"], record["modes"], record["ratios"]

            def rate(name: str, modes: dict[str, Any] = modes) -> float | None:
                return modes[name]["img_per_s"]["median"] if name in modes else None

            overhead = ratios["engine_overhead"]
            kd_epoch = modes.get("kdgen-kd", {}).get("epoch_s_median")
            cells = [
                options["model"],
                record["machine"]["device_name"],
                " ".join(record.get("kdgen_numerics", {}).values()) or "-",
                str(options["train_images"]),
                "yes" if options["compile"] else "no",
                _cell(rate("reference"), ".0f"),
                _cell(rate("kdgen-ce"), ".0f"),
                _cell(rate("kdgen-kd"), ".0f"),
                _cell(rate("kdgen-eval"), ".0f"),
                _cell(ratios["reference_over_kdgen_ce"], ".2f"),
                _cell(ratios["kd_cost"], ".3f"),
                _cell(ratios["ideal_kd_cost"], ".3f"),
                _cell(ratios.get("student0_cost"), ".3f"),
                "-" if overhead is None else f"{overhead * 100:.1f}%",
                _cell(kd_epoch, ".3f"),
            ]
            print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.summary:
        print_summary(args.summary)
        return
    device = resolve_device(args.device)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    machine = machine_info(device)
    layout = None if args.channels_last == "auto" else args.channels_last == "true"
    numerics = choose_numerics(args.precision, layout, device).record()
    print(
        f"{args.model} on {machine['device_name']} ({device.type}), torch {torch.__version__}, "
        f"{machine['torch_threads']} threads; batch {args.batch}, {args.train_images} "
        f"training images, {args.warmup} warm-up + {args.repeats} rounds; kdgen in "
        f"{numerics['precision']}, {numerics['layout']}",
        flush=True,
    )
    dataset = make_data(args.train_images, args.seed)
    flops_forward = forward_flops(args.model)
    modes = build_modes(args, dataset, device)
    run_interleaved(modes, args.warmup, args.repeats, device)
    results = {mode.name: mode_stats(mode, flops_forward) for mode in modes}
    ratios = compute_ratios({mode.name: mode for mode in modes})
    print_report(results, ratios, flops_forward)
    if args.json_out:
        options = {k: v for k, v in vars(args).items() if k != "json_out"}
        record = {
            "benchmark": "throughput",
            "machine": machine,
            "options": options,
            "forward_flops_per_image": flops_forward,
            "kdgen_numerics": numerics,
            "modes": results,
            "ratios": ratios,
        }
        with open(args.json_out, "a") as out:
            out.write(json.dumps(record) + "\n")
        print(f"appended results to {args.json_out}")


if __name__ == "__main__":
    main()

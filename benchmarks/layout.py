"""Training-step speed of a model in each precision and memory layout, interleaved.

For each model and input shape, four variants of one training step (forward, float32
cross-entropy, backward, SGD step) on one fixed batch: fp32 or bf16 autocast, contiguous
or channels_last. The variants run in turn, the order reversed every other round
(A B C D, D C B A, ...), so that the machine's load and any drift within a round hit
them alike; the rate is the median over the rounds, and each speed-up is the median of
the per-round ratios with their min-max spread. This is the measurement behind
``channels_last=null``'s rule (kdgen.precision.auto_channels_last) and ``precision=auto``.

Usage: python benchmarks/layout.py [--threads 1] [--rounds 5] [--steps 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from kdgen.models import create_model

# (model, classes, channels, side): the study's tiny CNN on Fashion-MNIST and on
# CIFAR-shaped input, ResNet-8 on Fashion-MNIST, ResNet-20 on CIFAR.
CASES = (
    ("tiny_cnn", 10, 1, 28),
    ("tiny_cnn", 10, 3, 32),
    ("resnet8", 10, 1, 28),
    ("resnet20", 100, 3, 32),
)
Variant = tuple[str, str]  # (precision, layout)
VARIANTS = tuple(
    (precision, layout)
    for layout in ("contiguous", "channels_last")
    for precision in ("fp32", "bf16")
)


def training_step(
    name: str, classes: int, channels: int, side: int, precision: str, layout: str, batch: int
) -> Callable[[], None]:
    torch.manual_seed(0)
    model = create_model(name, classes, channels)
    images = torch.randn(batch, channels, side, side)
    targets = torch.randint(0, classes, (batch,))
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            logits = model(images)
        loss = nn.functional.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (1 warm-up more)")
    parser.add_argument("--steps", type=int, default=5, help="training steps per measurement")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", default=None, help="comma-separated subset of the models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, CPU")
    print("speed-ups: median of the per-round ratios (min-max over the rounds)")
    print(
        "| model | input | fp32 contiguous img/s | bf16 speed-up "
        "| channels_last speed-up (fp32) | (bf16) |"
    )
    print("|---|---|--:|--:|--:|--:|")
    for name, classes, channels, side in CASES:
        if args.models and name not in args.models.split(","):
            continue
        steps = {
            variant: training_step(name, classes, channels, side, *variant, args.batch)
            for variant in VARIANTS
        }
        seconds: dict[Variant, list[float]] = {variant: [] for variant in VARIANTS}
        for round_index in range(args.rounds + 1):
            order = list(steps.items())
            for variant, step in order if round_index % 2 == 0 else reversed(order):
                step()
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                if round_index:
                    seconds[variant].append((time.perf_counter() - start) / args.steps)

        def ratio(
            a: tuple[str, str], b: tuple[str, str], seconds: dict[Variant, list[float]] = seconds
        ) -> str:
            """How many times faster ``a`` is than ``b``: the median of the per-round
            ratios and their min-max."""
            ratios = [x / y for x, y in zip(seconds[b], seconds[a], strict=True)]
            return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"

        base = ("fp32", "contiguous")
        rate = args.batch / statistics.median(seconds[base])
        print(
            f"| {name} | {channels}x{side}x{side} | {rate:.0f} | "
            f"{ratio(('bf16', 'contiguous'), base)} | "
            f"{ratio(('fp32', 'channels_last'), base)} | "
            f"{ratio(('bf16', 'channels_last'), ('bf16', 'contiguous'))} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

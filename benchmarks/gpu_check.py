"""Correctness of kdgen's GPU training step against the float32 CPU step.

For each model and loss (cross-entropy patriarch, KD student with lam = 0.6) one training
step of ``kdgen.engine.train_generation`` runs on the same batch from the same initial
weights: on the CPU in float32, on CUDA in float32 (TF32 off) and on CUDA as kdgen trains
there (bf16 autocast, channels_last). Printed per case: the batch difference, the loss
difference and the gradient and weight-update differences, with PASS/FAIL against the
tolerances below.

The float32 comparison is the test of the GPU code path (loader, layout, step): only
summation order differs. bf16 rounding alone moves a freshly initialised network's
gradient by several percent (more for cross-entropy at initialisation, whose gradient is
small), so the bf16 tolerance is calibrated on the same step run under CPU bf16 autocast:
the GPU may differ from float32 by at most CALIBRATION_FACTOR times that, plus a margin.
Last, it counts the host-device synchronisations of one training epoch
(``torch.cuda.set_sync_debug_mode``); each one stalls the CPU until the GPU catches up.

Usage: python benchmarks/gpu_check.py [--models resnet20,densenet_bc_100_12]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from dataclasses import dataclass

import torch

from kdgen.build import build_model, prepare_data
from kdgen.config import Config, build_config
from kdgen.data import ImageDataset, load_dataset
from kdgen.engine import freeze, train_generation
from kdgen.policy import make_loss

BATCH = 128
# Tolerances on the relative loss error and on the relative L2 error of the whole gradient
# (and of the whole weight update). float32: fixed. bf16: CALIBRATION_FACTOR times the
# error of CPU bf16 autocast on the same step, plus CALIBRATION_MARGIN.
FP32_TOLERANCE = {"loss": 1e-4, "grad": 1e-3}
CALIBRATION_FACTOR, CALIBRATION_MARGIN = 1.5, 0.01


@dataclass
class Step:
    batch: torch.Tensor
    loss: float
    grads: dict[str, torch.Tensor]
    updates: dict[str, torch.Tensor]


def make_config(model: str, device: torch.device, lam: float, precision: str) -> Config:
    return build_config(
        None,
        [
            f"model={model}",
            f"device={device.type}",
            f"lam={lam}",
            f"precision={precision}",
            "progress=false",
            "tensorboard=false",
            "data.val_size=0",
            f"data.batch_size={BATCH}",
            "schedule.epochs=1",
            "schedule.scheduler=constant",
            "schedule.milestones=[]",
        ],
    )


def one_batch_dataset() -> ImageDataset:
    """Synthetic images cut to exactly one training batch."""
    dataset = load_dataset("synthetic", train_per_class=2, test_per_class=1)
    train = dataset.train.subset(torch.arange(BATCH))
    return dataclasses.replace(dataset, train=train)


def training_step(config: Config, dataset: ImageDataset, generation: int) -> Step:
    """One optimiser step of the engine (an epoch of one batch), results on the CPU."""
    device = torch.device(config.device)
    loader = prepare_data(config, device, dataset).train_loader
    batch = next(iter(loader))[0].float().cpu()
    model = build_model(config, dataset, generation, device)
    teacher = freeze(build_model(config, dataset, 0, device)) if generation else None
    before = {name: p.detach().float().cpu().clone() for name, p in model.named_parameters()}
    result = train_generation(
        model,
        loader,
        {},
        config.schedule,
        make_loss(config, generation),
        teacher=teacher,
        generation=generation,
        precision=config.precision,
    )
    grads, updates = {}, {}
    for name, parameter in model.named_parameters():
        grads[name] = parameter.grad.detach().float().cpu()
        updates[name] = parameter.detach().float().cpu() - before[name]
    return Step(batch, result.final["train"]["loss"], grads, updates)


def relative_l2(test: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    diff = torch.cat([(test[k] - ref[k]).flatten() for k in ref])
    norm = torch.cat([ref[k].flatten() for k in ref])
    return float(diff.norm() / norm.norm())


def worst_tensor(test: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> tuple[str, float]:
    errors = {k: float((test[k] - ref[k]).norm() / ref[k].norm().clamp_min(1e-12)) for k in ref}
    name = max(errors, key=errors.__getitem__)
    return name, errors[name]


def max_abs(test: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    return max(float((test[k] - ref[k]).abs().max()) for k in ref)


def errors(test: Step, ref: Step) -> dict[str, float]:
    """Relative loss error and relative L2 errors of the gradient and the update."""
    return {
        "loss": abs(test.loss - ref.loss) / abs(ref.loss),
        "grad": relative_l2(test.grads, ref.grads),
        "update": relative_l2(test.updates, ref.updates),
    }


def calibrated_tolerance(calibration: Step, ref: Step) -> dict[str, float]:
    """bf16 tolerances from CPU bf16 autocast's own error on the same step."""
    error = errors(calibration, ref)
    grad = max(error["grad"], error["update"])
    return {
        "loss": CALIBRATION_FACTOR * error["loss"] + CALIBRATION_MARGIN,
        "grad": CALIBRATION_FACTOR * grad + CALIBRATION_MARGIN,
    }


def compare(label: str, test: Step, ref: Step, tolerance: dict[str, float]) -> bool:
    """Print one case's differences; True when it is within the tolerances."""
    error = errors(test, ref)
    loss_rel, grad_rel, update_rel = error["loss"], error["grad"], error["update"]
    worst_name, worst = worst_tensor(test.grads, ref.grads)
    batch_diff = float((test.batch - ref.batch).abs().max())
    ok = loss_rel <= tolerance["loss"] and max(grad_rel, update_rel) <= tolerance["grad"]
    print(
        f"{label:<40} {'PASS' if ok else 'FAIL'}  batch max|d| {batch_diff:.1e}  "
        f"loss {ref.loss:.5f} vs {test.loss:.5f} (rel {loss_rel:.1e} <= {tolerance['loss']:.1e})"
    )
    print(
        f"{'':<46} grad max|d| {max_abs(test.grads, ref.grads):.2e} "
        f"(max|g| {max(float(g.abs().max()) for g in ref.grads.values()):.2e}), "
        f"rel L2 {grad_rel:.2e}; update rel L2 {update_rel:.2e} (<= {tolerance['grad']:.1e}); "
        f"worst tensor {worst_name} {worst:.2e}"
    )
    return ok


def disable_tf32() -> None:
    """float32 matmuls and convolutions in full precision (TF32 is cuDNN's default)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def count_syncs(model: str, batches: int = 10) -> int:
    """Host-device synchronisations in one training epoch of ``batches`` batches."""
    cuda = torch.device("cuda")
    config = make_config(model, cuda, lam=0.6, precision="bf16")
    dataset = load_dataset("synthetic", train_per_class=-(-batches * BATCH // 100))
    dataset = dataclasses.replace(
        dataset, train=dataset.train.subset(torch.arange(batches * BATCH))
    )
    loader = prepare_data(config, cuda, dataset).train_loader
    student = build_model(config, dataset, 1, cuda)
    teacher = freeze(build_model(config, dataset, 0, cuda))
    loss_fn = make_loss(config, 1)
    train_generation(
        student,
        loader,
        {},
        config.schedule,
        loss_fn,
        teacher=teacher,
        generation=1,
        precision="bf16",
    )
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_generation(
                student,
                loader,
                {},
                config.schedule,
                loss_fn,
                teacher=teacher,
                generation=1,
                precision="bf16",
            )
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    places = sorted({f"{w.filename.rsplit('/', 1)[-1]}:{w.lineno}" for w in syncs})
    print(
        f"host-device syncs in one {batches}-batch KD epoch: {len(syncs)} "
        f"(1 is the end-of-epoch metrics read); at {', '.join(places) or '-'}"
    )
    return len(syncs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet20,densenet_bc_100_12")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check.py needs CUDA")
    disable_tf32()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    dataset = one_batch_dataset()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    results = []
    for model in args.models.split(","):
        for generation, lam, loss_name in ((0, 0.0, "CE"), (1, 0.6, "KD lam=0.6")):
            ref = training_step(make_config(model, cpu, lam, "fp32"), dataset, generation)
            calibration = training_step(make_config(model, cpu, lam, "bf16"), dataset, generation)
            bf16_tolerance = calibrated_tolerance(calibration, ref)
            compare(f"{model} {loss_name} cpu bf16 (calibration)", calibration, ref, bf16_tolerance)
            for precision, tolerance in (("fp32", FP32_TOLERANCE), ("bf16", bf16_tolerance)):
                test = training_step(make_config(model, cuda, lam, precision), dataset, generation)
                label = f"{model} {loss_name} cuda {precision} vs cpu fp32"
                results.append(compare(label, test, ref, tolerance))
    count_syncs(args.models.split(",")[0])
    passed = all(results)
    print(f"correctness: {'PASS' if passed else 'FAIL'} ({sum(results)}/{len(results)} cases)")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()

"""Data-parallel training across processes: torch.distributed, launched by ``torchrun``.

``torchrun --nproc_per_node=N -m kdgen train CONFIG`` starts N processes (ranks). Each
rank holds a full copy of the model, trains on its slice of every global batch, and
:class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients, so the ranks'
weights stay identical. Rank 0 alone writes the run folder. Without torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) nothing here starts a process group
and every helper is the identity of a single process (:data:`SINGLE`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from kdgen.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger("kdgen")


@dataclass(frozen=True)
class Distributed:
    """This process's place among the ranks; every method is a no-op for one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """Whether there is more than one rank (and so a process group)."""
        return self.world_size > 1

    @property
    def shard(self) -> tuple[int, int]:
        """``(rank, world_size)``, as the loaders' ``shard`` argument takes it."""
        return self.rank, self.world_size

    def is_main(self) -> bool:
        """Rank 0: the one that writes files and shows progress."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place; returns it."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        """Wait until every rank gets here (after rank 0 writes what others then read)."""
        if self.active:
            dist.barrier()

    def broadcast_object(self, value: T) -> T:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, value: T) -> list[T]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def agreed(self, predicate: Callable[[], bool]) -> Callable[[], bool]:
        """``predicate`` made collective: true on every rank once it is true on any, for a
        stop signal that reaches the ranks at different moments. Every rank must call the
        result at the same points. Each call is one all-reduce of one number on the CPU
        (through gloo, a group of its own under NCCL), so it never waits for the device;
        with one process it is ``predicate`` itself."""
        if not self.active:
            return predicate
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        flag = torch.zeros(1)

        def any_rank() -> bool:
            flag.fill_(1.0 if predicate() else 0.0)
            dist.all_reduce(flag, op=dist.ReduceOp.SUM, group=group)
            return bool(flag.item() > 0)

        return any_rank

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and return its result on every rank; an exception it raises
        is raised on every rank, so no rank is left waiting for the others."""
        outcome: tuple[bool, Any] = (True, None)
        if self.is_main():
            try:
                outcome = (True, fn())
            except Exception as error:
                outcome = (False, error)
        ok, value = self.broadcast_object(outcome)
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then on the others (e.g. a download that others then read)."""
        if self.is_main():
            result = fn()
            self.barrier()
            return result
        self.barrier()
        return fn()

    def local_batch(self, global_batch: int, what: str = "data.batch_size") -> int:
        """This rank's share of a global batch; it must divide evenly."""
        if global_batch % self.world_size:
            raise ConfigError(
                f"{what}={global_batch} is the global batch: it must divide by the "
                f"{self.world_size} processes (ranks)"
            )
        return global_batch // self.world_size

    def wrap(self, model: nn.Module, sync_batchnorm: bool = True) -> nn.Module:
        """The module to train: ``model`` itself, or (with several ranks) ``model`` with its
        BatchNorm layers made global-batch (``sync_batchnorm``) inside DDP. The
        conversion is in place and keeps every parameter, buffer and state_dict key."""
        if not self.active:
            return model
        if sync_batchnorm:
            convert_batchnorm(model, next(model.parameters()).device.type)
        device_ids = [model_device(model)] if model_device(model).type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) to every rank."""
        if self.active:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def gather_shards(self, tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The whole split from each rank's non-shuffled shard (``batch_size`` per rank per
        step, as the loaders cut them), in the single-process order, on every rank."""
        if not self.active:
            return tensor
        sizes = torch.tensor([tensor.shape[0], *tensor.shape[1:]], device=tensor.device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(self.world_size)]
        dist.all_gather(all_sizes, sizes)
        counts = [int(size[0]) for size in all_sizes]
        trailing = torch.stack(all_sizes).amax(dim=0)[1:].tolist()
        padded = tensor.new_zeros((max(counts), *trailing))
        padded[: tensor.shape[0]] = tensor.reshape(-1, *trailing)
        chunks = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(chunks, padded.contiguous())
        return interleave([chunk[:n] for chunk, n in zip(chunks, counts, strict=True)], batch_size)

    def check_identical(self, model: nn.Module, what: str) -> None:
        """Raise unless every rank holds bit-identical weights and buffers (a cheap
        fingerprint: per-tensor sums and sums of squares, compared with rank 0's)."""
        if not self.active:
            return
        fingerprint = model_fingerprint(model)
        copies = [torch.empty_like(fingerprint) for _ in range(self.world_size)]
        dist.all_gather(copies, fingerprint)
        if not all(torch.equal(copy, copies[0]) for copy in copies):
            raise RuntimeError(f"{what} differs between ranks: the ranks went out of step")


SINGLE = Distributed()
_current: Distributed = SINGLE


def current() -> Distributed:
    """The context :func:`launch` set up in this process, or :data:`SINGLE`."""
    return _current


def interleave(chunks: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    """Undo the sharding of a non-shuffled split: step by step, rank by rank, take each
    rank's next ``batch_size`` rows (a rank's last piece may be short or empty)."""
    steps = max(-(-len(chunk) // batch_size) for chunk in chunks)
    pieces = [
        chunk[step * batch_size : (step + 1) * batch_size]
        for step in range(steps)
        for chunk in chunks
    ]
    return torch.cat(pieces)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_fingerprint(model: nn.Module) -> torch.Tensor:
    """Sums and sums of squares of every parameter and buffer, in float64."""
    values = [t.detach().double() for t in (*model.parameters(), *model.buffers())]
    return torch.stack([v for t in values for v in (t.sum(), (t * t).sum())])


class _AllReduceSum(torch.autograd.Function):
    """A sum over the ranks that autograd goes through: the gradient is summed as well."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def differentiable_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, differentiably."""
    return _AllReduceSum.apply(tensor)  # type: ignore[no-any-return]


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (every rank's).

    The per-channel sums are all-reduced with autograd, so it
    works on any backend, gloo on CPU included, where ``nn.SyncBatchNorm`` does not run.
    With one rank, or in eval mode, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        synced = self.training and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        count = torch.full((1,), input.numel() // channels, dtype=input.dtype, device=input.device)
        local = torch.cat([input.sum(dims), (input * input).sum(dims), count])
        total = differentiable_all_reduce(local)
        n = total[-1]
        mean = total[:channels] / n
        var = total[channels : 2 * channels] / n - mean * mean
        self._update_running_stats(mean.detach(), var.detach(), n.detach())
        shape = (1, channels) + (1,) * (input.dim() - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        if not self.track_running_stats or self.running_mean is None:
            return
        assert self.running_var is not None and self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        momentum = self.momentum
        if momentum is None:  # cumulative moving average, as BatchNorm does
            momentum = 1.0 / float(self.num_batches_tracked)
        unbiased = var * n / (n - 1).clamp(min=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


def convert_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """Replace every BatchNorm layer of ``model`` in place by its global-batch version
    (``nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` elsewhere), sharing its
    parameters and buffers; returns ``model``."""
    kind = nn.SyncBatchNorm if device_type == "cuda" else GlobalBatchNorm
    for name, child in model.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(
            child, nn.SyncBatchNorm | GlobalBatchNorm
        ):
            setattr(model, name, _converted(child, kind))
        else:
            convert_batchnorm(child, device_type)
    return model


def _converted(layer: _BatchNorm, kind: type[_BatchNorm]) -> _BatchNorm:
    new = kind(
        layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats
    )
    if layer.affine:
        new.weight, new.bias = layer.weight, layer.bias
    new.running_mean, new.running_var = layer.running_mean, layer.running_var
    new.num_batches_tracked = layer.num_batches_tracked
    new.train(layer.training)
    return new


def from_environment() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when launched by torchrun, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return (
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def launched_rank() -> int:
    """This process's rank in a torchrun launch; 0 without torchrun."""
    found = from_environment()
    return 0 if found is None else found[0]


def launched_world_size() -> int:
    """The number of processes of a torchrun launch; 1 without torchrun."""
    found = from_environment()
    return 1 if found is None else found[1]


def _uses_cuda(device: str) -> bool:
    if device == "auto":
        return torch.cuda.is_available()
    if device == "mps":
        raise ConfigError("device=mps cannot run distributed; use device=cpu or cuda")
    if device.startswith("cuda:"):
        raise ConfigError(
            f"device={device} pins one GPU; under torchrun use device=auto or cuda "
            "(each rank takes cuda:LOCAL_RANK)"
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but CUDA is not available here; use device=cpu")
    return device == "cuda"


def device_for(context: Distributed, device: str) -> str:
    """The device name a rank uses: ``cuda:LOCAL_RANK`` under torchrun with CUDA."""
    if not context.active:
        return device
    return f"cuda:{context.local_rank}" if _uses_cuda(device) else "cpu"


@contextlib.contextmanager
def launch(device: str = "auto") -> Iterator[Distributed]:
    """The process group of a torchrun launch (NCCL on CUDA, gloo on CPU), destroyed on
    exit and on errors, its threads joined before the interpreter shuts down (see
    :func:`_destroy_groups`); :data:`SINGLE` without torchrun (or with one process)."""
    global _current
    found = from_environment()
    if found is None or found[1] <= 1:
        yield SINGLE
        return
    rank, world_size, local_rank = found
    cuda = _uses_cuda(device)
    if cuda:
        torch.cuda.set_device(local_rank)
    # DDP's first construction imports torch._dynamo, which imports modules whose
    # functions take ``group=dist.group.WORLD`` as a default argument (e.g.
    # torch.distributed.nn.functional): imported after init_process_group, they would
    # hold the process group for the life of the interpreter. Imported first, they hold
    # None.
    importlib.import_module("torch._dynamo")
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    _current = Distributed(rank, world_size, local_rank)
    if rank != 0:
        log.setLevel(logging.WARNING)
    try:
        yield _current
    except BaseException as error:
        _release_frames(error)
        raise
    finally:
        _current = SINGLE
        _destroy_groups()


def _release_frames(error: BaseException | None) -> None:
    """Drop the local variables of the finished frames that ``error`` (and the exceptions
    it was raised from or during) carries in its traceback: they hold the DDP module, and
    through it the process group, until the exception is forgotten, often only at exit."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def _destroy_groups() -> None:
    """Destroy every process group, joining their threads now.

    ``destroy_process_group`` only forgets the groups; a gloo group's worker threads
    stop when its last reference goes. If anything still holds it, the threads run on
    into the interpreter's shutdown, and a worker that drops the last reference to a
    collective's tensor then has to take the GIL for its Python object. A finalizing
    interpreter ends such a thread with ``pthread_exit``, whose unwinding through a
    noexcept C++ destructor calls ``std::terminate``: the process aborts with
    "terminate called without an active exception" after a run that went well. Rarely,
    as the worker must still hold the work when the main thread reaches shutdown, so
    most often on a loaded machine.
    """
    world = dist.group.WORLD
    dist.destroy_process_group()
    holders = sys.getrefcount(world) - 2  # minus ``world`` and getrefcount's argument
    if holders > 0:
        log.warning(
            "kdgen: the process group outlived destroy_process_group (%d references); "
            "its threads run on to interpreter exit",
            holders,
        )
    del world  # the last reference: the group's destructor joins its threads here

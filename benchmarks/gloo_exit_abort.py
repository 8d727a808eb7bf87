"""The torchrun abort in 20 lines: a gloo group that outlives destroy_process_group.

    torchrun --standalone --nproc_per_node=2 benchmarks/gloo_exit_abort.py held|released

``held``: a module imported after init_process_group takes ``group.WORLD`` as a default
argument (torch.distributed.nn.functional, which DDP's first construction imports through
torch._dynamo), so destroy_process_group leaves the group and its worker threads alive.
A worker that still holds the last reference to a finished all-reduce's tensor when the
interpreter is finalizing must take the GIL to drop the tensor's Python object; Python
ends it with pthread_exit, whose unwinding through a noexcept destructor calls
std::terminate: "terminate called without an active exception", SIGABRT. ``released``:
the same module imported first, so destroy_process_group drops the last reference and
joins the workers (what kdgen.distributed.launch does). Run it several times on a busy
machine and count the aborts (measured: RESULTS.md).
"""

import sys

import torch
import torch.distributed as dist

held = sys.argv[1] == "held"
if not held:
    import torch.distributed.nn.functional
dist.init_process_group("gloo")
if held:
    import torch.distributed.nn.functional
for _ in range(20):
    dist.all_reduce(torch.zeros(1))  # a temporary: its worker may drop the last reference
dist.destroy_process_group()

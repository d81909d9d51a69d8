"""Process-group helpers: rank/world queries and collectives that work without a group.

Every function here is a no-op (or identity) when ``torch.distributed`` is not initialised, so the
same code path serves one process and ``torchrun``. Embeddings are gathered *with* gradient
(:func:`gather_with_grad`, whose backward sums the gradients over ranks), so a
loss computed on local anchors against the global batch gives, after DDP's gradient averaging,
exactly the gradient of the global-batch loss (see :func:`debiascl.objectives.base`).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a default process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


def init_from_env(backend: str = "auto", timeout_s: float = 600.0) -> bool:
    """Initialise the default group from ``torchrun``'s environment variables.

    Returns True if a group was created. ``backend='auto'`` picks NCCL when CUDA is available and
    gloo otherwise.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if dist.is_initialized():
        return True
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


# torch >= 2.10 renames the single-tensor collectives (same semantics); older versions lack them.
all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient for the local slice.

    NCCL uses one reduce-scatter; gloo (no reduce-scatter) sums the whole gradient with an
    all-reduce and keeps the local slice.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))
        all_gather_single(out, x.contiguous())
        ctx.rows = x.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        if dist.get_backend() == dist.Backend.NCCL:
            local = grad.new_empty((ctx.rows, *grad.shape[1:]))
            reduce_scatter_single(local, grad, op=dist.ReduceOp.SUM)
            return local
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return total[start : start + ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (n, ...) from every rank along dim 0, keeping the autograd graph.

    Every rank must pass the same ``n``. The backward pass gives each rank the sum over ranks of
    the gradients for its own rows. Returns ``x`` itself in a single process.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (n, ...) from every rank along dim 0 without gradient (ids, labels)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks (returns a new tensor; identity in one process)."""
    if not is_distributed():
        return x.clone()
    y = x.clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(x) / world_size()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from ``src`` to every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]

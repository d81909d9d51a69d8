"""Gradient caching: a large contrastive batch on small memory, with the exact full-batch gradient.

Gao, Zhang, Han and Callan, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup" (RepL4NLP 2021). A contrastive loss couples every pair of the batch, so it cannot be
accumulated over micro-batches like a per-sample loss; but its gradient factors through the
embeddings. :func:`cached_backward`:

1. embeds the batch micro-batch by micro-batch **without** a graph (memory of one micro-batch),
2. evaluates the objective once on the whole batch's embeddings and back-propagates to them
   (the per-sample tables update here, once per global batch, as in a full-batch step),
3. re-embeds each micro-batch **with** a graph and back-propagates the cached embedding
   gradient through it, accumulating the parameters' gradients.

The result equals ``objective(encode(all)).loss.backward()`` up to float rounding, provided each
micro-batch's forward is the same in both passes: the random state is replayed per micro-batch
(dropout, stochastic depth), but batch normalisation sees micro-batch statistics (and updates its
running statistics twice) -- use it without batch norm, with frozen or group norm, or accept that
difference. Under DDP, wrap all but the last re-embedding in ``model.no_sync()`` (``no_sync``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from debiascl.errors import ConfigError
from debiascl.objectives.objective import ContrastiveObjective, ObjectiveOutput

Encoder = Callable[[Any], torch.Tensor]


def _slice(x: Any, start: int, stop: int) -> Any:
    if isinstance(x, Mapping):  # tokenizer output
        return {k: _slice(v, start, stop) for k, v in x.items()}
    return x[start:stop]


def _length(x: Any) -> int:
    if isinstance(x, Mapping):
        return _length(next(iter(x.values())))
    return len(x)


@contextlib.contextmanager
def _replay(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> Iterator[None]:
    """Run the block from a saved CPU (+ CUDA) random state."""
    devices = list(range(torch.cuda.device_count())) if state[1] is not None else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state_all(state[1])
        yield


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def cached_backward(
    objective: ContrastiveObjective,
    encode_a: Encoder,
    encode_b: Encoder,
    inputs_a: Any,
    inputs_b: Any,
    ids: torch.Tensor,
    micro_batch_size: int,
    labels: torch.Tensor | None = None,
    logit_scale: torch.Tensor | float | None = None,
    ctx: Any = None,
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ObjectiveOutput:
    """Accumulate the full-batch gradient of ``objective`` into the encoders' parameters.

    Args:
        objective: the contrastive objective (tables update once, on the whole batch).
        encode_a, encode_b: map a micro-batch of inputs to (m, D) embeddings (for SimCLR both
            are the image encoder; for CLIP the image and the text encoder).
        reference: optional stable embeddings ``(a_ref, b_ref)`` of the whole local batch, for
            ``stable_glofnd`` (see :meth:`ContrastiveObjective.forward`).
        inputs_a, inputs_b: the local batch (tensors indexed on dim 0, or mappings of them).
        ids, labels, logit_scale, ctx: as for :meth:`ContrastiveObjective.forward`.
        micro_batch_size: rows embedded at once (the memory knob); >= 1.
        no_sync: optional context factory (DDP's ``model.no_sync``) entered for every
            re-embedding but the last, so gradients are all-reduced once.

    Returns:
        The objective's output on the whole batch (``loss`` already back-propagated: use its
        value for logging; call ``optimizer.step()`` next).
    """
    if micro_batch_size < 1:
        raise ConfigError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    n = _length(inputs_a)
    spans = [(s, min(s + micro_batch_size, n)) for s in range(0, n, micro_batch_size)]
    states, parts_a, parts_b = [], [], []
    with torch.no_grad():
        for start, stop in spans:
            states.append(_rng_state())
            parts_a.append(encode_a(_slice(inputs_a, start, stop)))
            parts_b.append(encode_b(_slice(inputs_b, start, stop)))
    a = torch.cat(parts_a).requires_grad_()
    b = torch.cat(parts_b).requires_grad_()
    out = objective(a, b, ids, labels=labels, logit_scale=logit_scale, ctx=ctx, reference=reference)
    out.loss.backward()
    grad_a = a.grad if a.grad is not None else torch.zeros_like(a)
    grad_b = b.grad if b.grad is not None else torch.zeros_like(b)
    for k, ((start, stop), state) in enumerate(zip(spans, states, strict=True)):
        last = k == len(spans) - 1
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync, _replay(state):
            ea = encode_a(_slice(inputs_a, start, stop))
            eb = encode_b(_slice(inputs_b, start, stop))
            surrogate = (ea * grad_a[start:stop]).sum() + (eb * grad_b[start:stop]).sum()
            surrogate.backward()
    out.loss = out.loss.detach()
    return out

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


PairEncoder = Callable[[Any], tuple[torch.Tensor, torch.Tensor]]


class GradCache:
    """The two passes of :func:`cached_backward` for a caller that evaluates the objective itself.

    The trainer scales the loss for AMP, checks it for non-finite values and steps the
    optimiser between the passes, and its model is one (DDP) module that encodes both sides of
    a micro-batch in one forward (two forwards before one backward would break DDP's gradient
    hooks). Usage::

        cache = GradCache(encode, inputs, micro_batch_size, no_sync=ddp_model.no_sync)
        a, b = cache.embed()                     # (n, D) leaves, no encoder graph
        out = objective(a, b, ids, ...)          # once per global batch: tables update here
        scaler.scale(out.loss).backward()        # fills a.grad, b.grad (scaled like the loss)
        cache.backward(a.grad, b.grad)           # encoder parameters get the same gradient

    Args:
        encode: maps a micro-batch of ``inputs`` to its ``(a, b)`` (m, D) embeddings.
        inputs: the local batch: a tensor, a list, a mapping (tokenizer output) or a tuple of
            these, each indexed on its first dimension, all of length n.
        micro_batch_size: rows encoded at once (>= 1; the last micro-batch may be shorter).
        no_sync: optional context factory (DDP's ``model.no_sync``) entered for every
            re-encoding but the last, so gradients are all-reduced once per step.

    Raises:
        ConfigError: ``micro_batch_size`` < 1.
    """

    def __init__(
        self,
        encode: PairEncoder,
        inputs: Any,
        micro_batch_size: int,
        no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        if micro_batch_size < 1:
            raise ConfigError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        self.encode = encode
        self.inputs = inputs
        self.no_sync = no_sync
        n = _length(inputs[0]) if isinstance(inputs, tuple) else _length(inputs)
        self.spans = [(s, min(s + micro_batch_size, n)) for s in range(0, n, micro_batch_size)]
        self._states: list[tuple[torch.Tensor, list[torch.Tensor] | None]] = []

    def micro_batches(self) -> Iterator[Any]:
        """The inputs of each micro-batch, in order."""
        for start, stop in self.spans:
            yield _slice_all(self.inputs, start, stop)

    def embed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """First pass: (n, D) embeddings without an encoder graph, as leaves requiring grad."""
        self._states = []
        parts_a, parts_b = [], []
        with torch.no_grad():
            for chunk in self.micro_batches():
                self._states.append(_rng_state())
                a, b = self.encode(chunk)
                parts_a.append(a)
                parts_b.append(b)
        return torch.cat(parts_a).requires_grad_(), torch.cat(parts_b).requires_grad_()

    def backward(self, grad_a: torch.Tensor | None, grad_b: torch.Tensor | None) -> None:
        """Second pass: re-encode each micro-batch (same random state) with a graph and
        back-propagate the cached (n, D) embedding gradients (None: zero) into the encoder."""
        if len(self._states) != len(self.spans):
            raise RuntimeError("GradCache.backward needs GradCache.embed first")
        for k, ((start, stop), state) in enumerate(zip(self.spans, self._states, strict=True)):
            last = k == len(self.spans) - 1
            sync = contextlib.nullcontext() if last or self.no_sync is None else self.no_sync()
            with sync, _replay(state):
                ea, eb = self.encode(_slice_all(self.inputs, start, stop))
                ga = torch.zeros_like(ea) if grad_a is None else grad_a[start:stop]
                gb = torch.zeros_like(eb) if grad_b is None else grad_b[start:stop]
                ((ea * ga).sum() + (eb * gb).sum()).backward()
        self._states = []


def _slice_all(x: Any, start: int, stop: int) -> Any:
    if isinstance(x, tuple):
        return tuple(_slice(v, start, stop) for v in x)
    return _slice(x, start, stop)

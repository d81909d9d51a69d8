"""The contrastive objective: layout + false-negative detector + pair loss, DDP-aware.

This is the one object a training loop needs (the built-in trainer or your own)::

    objective = ContrastiveObjective("image_image", InfoNCELoss(0.2), detector, num_samples=N)
    out = objective(z1, z2, ids, ctx=StepContext(epoch=e, step=s))
    out.loss.backward()

Gradient scaling under DDP: each rank sums the loss over its local anchors, multiplies by the
world size and divides by the global anchor count. Candidates are gathered with gradient, so
after DDP averages the gradients every rank holds exactly the gradient of the global-batch mean
loss (tested against one process in ``tests/test_distributed_objective.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from debiascl import distributed as dist_utils
from debiascl.errors import ConfigError, DataError, check
from debiascl.negatives.context import StepContext
from debiascl.negatives.diagnostics import DetectionStats
from debiascl.objectives.base import (
    FalseNegativeDetector,
    LossTerms,
    NoDetector,
    PairLoss,
    keep_at_least_one,
)
from debiascl.pairs import PairwiseBatch, clip_pairs, clip_pairs_stacked, simclr_pairs

Mode = Literal["image_image", "image_text"]

#: Local batch sizes b (a multiple of this) at which both CLIP directions run stacked.
STACK_MULTIPLE = 64

#: Scale used when neither the loss owns a temperature nor the caller passes one (t = 0.1).
DEFAULT_LOGIT_SCALE = 10.0


@dataclass
class ObjectiveOutput:
    """Result of one objective evaluation.

    Attributes:
        loss: scalar to call ``backward`` on (DDP-scaled, see module docstring).
        value: detached global-batch mean of the true objective (same on every rank).
        logs: scalar diagnostics for this step.
        keep_masks: the keep-mask used for each direction (for inspection and tests).
    """

    loss: torch.Tensor
    value: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    keep_masks: dict[str, torch.Tensor] = field(default_factory=dict)


def validate_sample_ids(ids: torch.Tensor, num_samples: int) -> None:
    """Check that ``ids`` is an int tensor of distinct values in [0, num_samples) globally.

    One fused check (range and duplicates) read back with a single host synchronisation.
    """
    check(
        not ids.is_floating_point() and not ids.is_complex(),
        f"sample ids must be an integer tensor, got {ids.dtype}",
        DataError,
    )
    all_ids = dist_utils.gather_no_grad(ids.long()) if dist_utils.is_distributed() else ids
    if all_ids.numel() == 0:
        return
    if all_ids.device.type == "cpu":  # a few Python passes over the ids beat tensor ops here
        values = all_ids.reshape(-1).tolist()
        lo_v, hi_v, dup_v = min(values), max(values), len(set(values)) != len(values)
    else:
        srt = all_ids.reshape(-1).sort().values
        dup = (
            (srt[1:] == srt[:-1]).any() if srt.numel() > 1 else srt.new_zeros((), dtype=torch.bool)
        )
        lo_v, hi_v, dup_v = torch.stack([srt[0], srt[-1], dup.to(srt.dtype)]).tolist()
    if lo_v < 0 or hi_v >= num_samples:
        bad = lo_v if lo_v < 0 else hi_v
        raise DataError(
            f"sample id {bad} is outside [0, {num_samples}); the dataset must return stable ids "
            f"in [0, num_samples) (set num_samples to the size of the id space)"
        )
    if dup_v:
        raise DataError(
            "duplicate sample ids in one global batch; each sample may appear once per step "
            "(use a sampler without replacement, e.g. DistributedSampler with drop_last=True)"
        )


def _accumulate(
    total: torch.Tensor, value: torch.Tensor, terms: LossTerms, weight: float, anchors: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add one direction's share to the DDP-scaled loss and to the global objective value."""
    total = total + weight * terms.loss.sum() * dist_utils.world_size() / anchors
    value = value + weight * terms.objective.double().sum() / anchors
    return total, value


class ContrastiveObjective(nn.Module):
    """SimCLR- or CLIP-style contrastive objective with false-negative handling.

    Args:
        mode: ``"image_image"`` (two views of each image) or ``"image_text"`` (image and caption).
        loss: the per-anchor :class:`PairLoss` (InfoNCE, SogCLR, DCL/HCL/SSD, ...).
        detector: false-negative detector; ``None`` keeps every negative.
        num_samples: size of the sample-id space N (ids must lie in [0, N)).
        directions: for image_text, which anchors contribute: both (symmetric CLIP), or only
            ``image_to_text`` / ``text_to_image``.
    """

    def __init__(
        self,
        mode: Mode,
        loss: PairLoss,
        detector: FalseNegativeDetector | None = None,
        num_samples: int | None = None,
        directions: tuple[str, ...] = ("image_to_text", "text_to_image"),
    ) -> None:
        super().__init__()
        check(mode in ("image_image", "image_text"), f"unknown mode {mode!r}")
        self.mode = mode
        self.loss_fn = loss
        self.detector = detector if detector is not None else NoDetector()
        self.num_samples = num_samples
        self.directions = directions
        self.stats = DetectionStats()
        # optional RemovedPairSample (debiascl.negatives.removed_pairs), set by the trainer
        self.removed_pairs = None
        # optional TextAgreement (debiascl.negatives.text_evidence): removals vs text evidence
        self.text_agreement = None

    def pairs(
        self, a: torch.Tensor, b: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor | None
    ) -> list[PairwiseBatch]:
        if self.mode == "image_image":
            return [simclr_pairs(a, b, ids, labels)]
        i2t, t2i = clip_pairs(a, b, ids, labels)
        return [p for p in (i2t, t2i) if p.name in self.directions]

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        logit_scale: torch.Tensor | float | None = None,
        ctx: StepContext | None = None,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> ObjectiveOutput:
        """Evaluate the objective on a local batch.

        Args:
            a: (b, D) first view (image_image) or image embeddings (image_text).
            b: (b, D) second view or text embeddings.
            ids: (b,) int64 sample ids in [0, num_samples).
            labels: optional (b,) labels, used only by the oracle detector and diagnostics.
            logit_scale: 1 / temperature for this call; leave it out to use the loss's own
                :class:`~debiascl.objectives.scale.LogitScale` (what the built-in trainer does).
                Refused for a learned one; a loss built without a temperature and no
                ``logit_scale`` uses ``DEFAULT_LOGIT_SCALE`` (10, i.e. t = 0.1).
            ctx: training position; defaults to a training step at epoch 0.
            reference: optional ``(a_ref, b_ref)`` (b, D) embeddings of the same inputs under a
                stable encoder (EMA or initial); their similarities, in the same layout and
                without gradient, reach the detector as ``PairwiseBatch.reference_sim``
                (``stable_glofnd`` needs them).

        Raises:
            ConfigError: ``logit_scale`` given for a loss that learns its temperature.
        """
        ctx = ctx or StepContext()
        if self.num_samples is not None:
            validate_sample_ids(ids, self.num_samples)
        scale = self._scale(logit_scale).to(device=a.device, dtype=torch.float32)
        if self._stacks_directions(a):
            return self._forward_stacked(a, b, ids, labels, scale, ctx)
        total = torch.zeros((), device=a.device)
        value = torch.zeros((), device=a.device, dtype=torch.float64)
        logs: dict[str, float] = {}
        masks: dict[str, torch.Tensor] = {}
        batches = self.pairs(a, b, ids, labels)
        if self.num_samples is not None:
            for batch in batches:
                batch.ids_checked_below = self.num_samples
        if reference is not None:
            with torch.no_grad():
                refs = self.pairs(reference[0].detach(), reference[1].detach(), ids, labels)
            for batch, ref in zip(batches, refs, strict=True):
                batch.reference_sim = ref.sim.float()
        weight = 1.0 / len(batches)
        # NoDetector keeps every entry, which keep_at_least_one leaves as it is and from which the
        # removal statistics follow without scanning the mask.
        keeps_all = type(self.detector) is NoDetector
        for batch in batches:
            keep = self.detector(batch, ctx)
            if not keeps_all:
                keep = keep_at_least_one(keep, batch)
            if ctx.training:
                self.stats.update(batch, keep, keeps_all=keeps_all)
                if self.removed_pairs is not None:
                    self.removed_pairs.update(batch, keep, ctx.epoch)
                if self.text_agreement is not None:
                    self.text_agreement.update(batch, keep)
            # every negative kept: the loss gets neg_mask itself (= neg_mask & keep) and may
            # skip the mask AND and its counts (as in the stacked path)
            terms = self.loss_fn(batch, batch.neg_mask if keeps_all else keep, scale, ctx)
            total, value = _accumulate(total, value, terms, weight, batch.global_anchors)
            for key, val in terms.logs.items():
                logs[f"{batch.name}/{key}" if len(batches) > 1 else key] = val
            masks[batch.name] = keep
        value = dist_utils.all_reduce_sum(value)
        return ObjectiveOutput(loss=total, value=value, logs=logs, keep_masks=masks)

    def _stacks_directions(self, a: torch.Tensor) -> bool:
        """Whether both CLIP directions can run as one stacked batch with bit for bit the
        results of one pass per direction: the loss supports it, nothing looks at one direction
        alone (no detector, no removed-pair sample or text agreement), and the local batch
        ``a`` (b, D) is on the CPU with b a multiple of ``STACK_MULTIPLE``. (Vectorised CPU
        kernels evaluate exp/log of a tensor's last partial SIMD block with scalar code, within
        an ulp of the vector code: rows then land in such blocks the same way in the stacked
        and the separate tensors. Reductions on GPUs are tiled by the tensor's shape, so there
        the per-direction path stays.)"""
        return (
            a.device.type == "cpu"
            and a.shape[0] % STACK_MULTIPLE == 0
            and self.mode == "image_text"
            and all(d in self.directions for d in ("image_to_text", "text_to_image"))
            and type(self.detector) is NoDetector
            and self.removed_pairs is None
            and self.text_agreement is None
            and getattr(self.loss_fn, "stacks_directions", False)
        )

    def _forward_stacked(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        ids: torch.Tensor,
        labels: torch.Tensor | None,
        scale: torch.Tensor,
        ctx: StepContext,
    ) -> ObjectiveOutput:
        """:meth:`forward` for both CLIP directions in one stacked batch (same loss and value
        bits, tables and statistics; gradients equal up to the order of float additions)."""
        batch = clip_pairs_stacked(a, b, ids, labels)
        batch.ids_checked_below = self.num_samples
        keep = self.detector(batch, ctx)  # NoDetector: all True, and nothing to rescue
        if ctx.training:
            self.stats.update(batch, keep, keeps_all=True)
        terms = self.loss_fn(batch, batch.neg_mask, scale, ctx)  # = neg_mask & keep
        n = len(batch.parts)
        # Each direction's sum, weighted and scaled as _accumulate does, then added: the same
        # float operations in the same order as one _accumulate call per direction.
        anchors, world = batch.global_anchors, dist_utils.world_size()
        total = ((1.0 / n) * terms.loss.view(n, -1).sum(1) * world / anchors).sum()
        value = ((1.0 / n) * terms.objective.double().view(n, -1).sum(1) / anchors).sum()
        logs = {f"{name}/{key}": val for name in batch.parts for key, val in terms.logs.items()}
        masks = dict(zip(batch.parts, keep.chunk(n), strict=True))
        if dist_utils.is_distributed():  # one process: value is already a fresh tensor
            value = dist_utils.all_reduce_sum(value)
        return ObjectiveOutput(loss=total, value=value, logs=logs, keep_masks=masks)

    def _scale(self, logit_scale: torch.Tensor | float | None) -> torch.Tensor:
        own = getattr(self.loss_fn, "scale", None)
        if own is not None and own.learnable and logit_scale is not None:
            raise ConfigError(
                "this loss learns its temperature; passing logit_scale would leave the learned "
                "scale without gradient — drop the logit_scale argument"
            )
        if own is not None and logit_scale is None:
            return own()
        return torch.as_tensor(DEFAULT_LOGIT_SCALE if logit_scale is None else logit_scale)

    @property
    def logit_scale(self) -> float | None:
        """The loss's own (trained) logit scale 1 / t, or None if the caller passes it."""
        own = getattr(self.loss_fn, "scale", None)
        return own.value if own is not None else None

    def sync_gradients(self) -> None:
        """Average the gradients of the objective's own parameters (a learned temperature) over
        ranks; call after ``backward`` and before the optimiser step. DDP averages only the
        wrapped model's gradients; this makes the objective's equal the global-batch gradient
        too. No-op in one process."""
        if not dist_utils.is_distributed():
            return
        for param in self.parameters():
            if param.requires_grad:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                param.grad.copy_(dist_utils.all_reduce_mean(param.grad))

    def clamp_logit_scale_(self) -> None:
        """Cap a learned logit scale after the optimiser step (CLIP practice)."""
        own = getattr(self.loss_fn, "scale", None)
        if own is not None:
            own.clamp_()

    def epoch_diagnostics(self, reset: bool = True) -> dict[str, float]:
        """Removal fraction and detection quality since the last reset (reduced over ranks),
        plus whatever the detector's and the loss's optional ``diagnostics()`` return."""
        out = self.stats.compute()
        if self.text_agreement is not None:
            out.update(self.text_agreement.compute())
            if reset:
                self.text_agreement.reset()
        for part in (self.detector, self.loss_fn):
            extra = getattr(part, "diagnostics", None)
            if callable(extra):
                out.update(extra())
        if reset:
            self.stats.reset()
        return out

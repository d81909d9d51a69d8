"""InfoNCE losses (SimCLR NT-Xent, CLIP) as pure functions, with an optional keep-mask.

References: Oord et al. 2018 (InfoNCE); Chen et al., ICML 2020 (SimCLR, NT-Xent);
Radford et al., ICML 2021 (CLIP). A keep-mask from a false-negative detector removes
negatives from the denominator (Huynh et al., WACV 2022, "elimination").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from debiascl import distributed as dist_utils
from debiascl.errors import check
from debiascl.losses.nt_xent_fused import fused_nt_xent
from debiascl.numerics import at_least_float32, unit_rows
from debiascl.pairs import clip_pairs, simclr_pairs


def masked_info_nce(
    pos_logits: torch.Tensor, logits: torch.Tensor, neg_mask: torch.Tensor
) -> torch.Tensor:
    """Per-anchor InfoNCE with a mask over negatives.

    loss_i = -p_i + log( e^{p_i} + sum_{j: mask_ij} e^{l_ij} ), computed with log-sum-exp in
    float32 or better (float64 inputs stay float64).

    Args:
        pos_logits: (A,) positive logits (similarity / temperature).
        logits: (A, M) logits against all candidates.
        neg_mask: (A, M) bool, True for the negatives that enter the denominator.

    Returns:
        (A,) per-anchor loss.
    """
    dtype = at_least_float32(logits.dtype)
    pos = pos_logits.to(dtype)
    masked = logits.to(dtype).masked_fill(~neg_mask, float("-inf"))
    denom = torch.logsumexp(torch.cat([pos[:, None], masked], dim=1), dim=1)
    return denom - pos


def _combined_mask(neg_mask: torch.Tensor, keep_mask: torch.Tensor | None) -> torch.Tensor:
    if keep_mask is None:
        return neg_mask
    check(
        keep_mask.shape == neg_mask.shape and keep_mask.dtype == torch.bool,
        f"keep_mask must be a bool tensor of shape {tuple(neg_mask.shape)}, got "
        f"{keep_mask.dtype} {tuple(keep_mask.shape)}",
    )
    return neg_mask & keep_mask


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    keep_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SimCLR NT-Xent loss, mean over the 2B anchors.

    Args:
        z1, z2: (B, D) embeddings of the two views (normalised here).
        temperature: softmax temperature t.
        keep_mask: optional (2B, 2B) bool over the candidates ``[z1; z2]``; False removes a
            negative from the anchor's denominator. Self and positive entries are ignored.

    Returns:
        Scalar loss. Under DDP the candidates are all-gathered (see :mod:`debiascl.pairs`);
        in one process a fused kernel with a hand-written backward computes the same loss
        (:mod:`debiascl.losses.nt_xent_fused`; differentiable once).

    Raises:
        DebiasclError: t <= 0, z1 / z2 not of the same (B, D) shape, or a keep_mask that is not
            a (2B, 2B) bool tensor.
    """
    check(temperature > 0, f"temperature must be > 0, got {temperature}")
    if dist_utils.is_distributed():
        return nt_xent_general(z1, z2, temperature, keep_mask)
    check(z1.dim() == 2, f"z1 must have shape (batch, dim), got {tuple(z1.shape)}")
    check(
        z1.shape == z2.shape,
        f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}",
    )
    n = 2 * z1.shape[0]
    if keep_mask is not None:
        check(
            keep_mask.shape == (n, n) and keep_mask.dtype == torch.bool,
            f"keep_mask must be a bool tensor of shape {(n, n)}, got "
            f"{keep_mask.dtype} {tuple(keep_mask.shape)}",
        )
    return fused_nt_xent(z1, z2, temperature, keep_mask)


def nt_xent_general(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    keep_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`nt_xent` through :func:`~debiascl.pairs.simclr_pairs` and
    :func:`masked_info_nce` with autograd's backward: the path under DDP (candidates
    all-gathered) and the reference the one-process kernel is tested against. Same arguments,
    result and errors as :func:`nt_xent`."""
    check(temperature > 0, f"temperature must be > 0, got {temperature}")
    ids = torch.arange(z1.shape[0], device=z1.device)
    batch = simclr_pairs(z1, z2, ids)
    mask = _combined_mask(batch.neg_mask, keep_mask)
    logits = batch.sim / temperature
    return masked_info_nce(logits.gather(1, batch.pos_index[:, None])[:, 0], logits, mask).mean()


def clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor | float = 1 / 0.07,
    keep_mask_i2t: torch.Tensor | None = None,
    keep_mask_t2i: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric CLIP loss: mean of image->text and text->image cross-entropy.

    Args:
        image, text: (B, D) paired embeddings (normalised here).
        logit_scale: 1 / temperature (already exponentiated), may require grad.
        keep_mask_i2t, keep_mask_t2i: optional (B, B) bool masks; False removes a negative.

    Returns:
        Scalar loss.
    """
    ids = torch.arange(image.shape[0], device=image.device)
    i2t, t2i = clip_pairs(image, text, ids)
    losses = []
    for batch, keep in ((i2t, keep_mask_i2t), (t2i, keep_mask_t2i)):
        logits = batch.sim * logit_scale
        mask = _combined_mask(batch.neg_mask, keep)
        losses.append(
            masked_info_nce(logits.gather(1, batch.pos_index[:, None])[:, 0], logits, mask).mean()
        )
    return 0.5 * (losses[0] + losses[1])


def plain_cross_entropy_clip(
    image: torch.Tensor, text: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """CLIP loss via ``F.cross_entropy`` on the B x B logits (single process, no mask).

    The fast path used by benchmarks to compare against :func:`clip_loss`.
    """
    image, text = unit_rows(image, dim=1), unit_rows(text, dim=1)
    logits = logit_scale * image @ text.T
    target = torch.arange(image.shape[0], device=image.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

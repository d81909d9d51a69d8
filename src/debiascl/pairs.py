"""Anchor x candidate similarity layouts for SimCLR and CLIP batches.

Every loss and false-negative detector in debiascl works on a :class:`PairwiseBatch`: a matrix of
cosine similarities between the *local* anchors of this process and the *global* candidates of
the whole (all-gathered) batch, with the column of each anchor's positive and a mask of its valid
negatives. One process is the special case ``world_size == 1``.

SimCLR layout (Chen et al., 2020): the local batch has views ``z1, z2`` of shape (b, D); anchors
are the 2b rows ``[z1; z2]``; candidates are the 2B rows ``[Z1; Z2]`` of the global batch
(B = b * world). Anchor i's positive is its other view; its negatives are the 2B - 2 rows that are
neither itself nor its positive.

CLIP layout (Radford et al., 2021): image anchors (b) against the B global texts and text anchors
(b) against the B global images; the positive is the paired item, the B - 1 others are negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from debiascl import distributed as dist_utils
from debiascl.batch_cache import recall, remember
from debiascl.errors import check
from debiascl.numerics import unit_rows


@dataclass
class PairwiseBatch:
    """Similarities of local anchors to global candidates.

    Attributes:
        name: direction, ``"image"`` (SimCLR), ``"image_to_text"`` or ``"text_to_image"``.
        sim: (A, M) cosine similarities, in the autograd graph.
        pos_index: (A,) int64 column of each anchor's positive in ``sim``.
        neg_mask: (A, M) bool, True where the candidate is a negative of the anchor.
        anchor_ids: (A,) int64 dataset sample id of each anchor (the two SimCLR views of one image
            share an id).
        candidate_ids: (M,) int64 sample ids of the candidates.
        anchor_labels / candidate_labels: optional (A,) / (M,) class labels, used only by the
            ``oracle`` detector and by diagnostics, never by an unsupervised loss.
        global_anchors: number of anchors over all ranks (the loss is a mean over these).
        reference_sim: optional (A, M) detached similarities of the same anchors and candidates
            under a stable embedding (an EMA or the initial encoder), for detectors that threshold
            those instead of ``sim`` (``stable_glofnd``); None when not given.
        ids_checked_below: set when the global batch's sample ids have been checked to be
            distinct and in [0, ids_checked_below) (by the objective, once per step), so that
            per-sample tables of at least that size can skip their own check; None otherwise.
        negatives_all_but_positive: True when ``neg_mask`` is True everywhere except at each
            row's positive column (the CLIP layouts), so kernels may skip reading it.
        self_index: (A,) int64 column of each anchor's own candidate (the SimCLR layout, whose
            negatives are every column but ``self_index`` and ``pos_index``); None otherwise.
            Kernels use it through :func:`excluded_columns`, which also checks that
            ``neg_mask`` is still the layout's own, unmodified tensor.
        parts: empty for one direction; for several directions stacked in one batch (see
            :func:`clip_pairs_stacked`), their names, one per equal block of anchor rows in
            order (each block has one row per sample).
    """

    name: str
    sim: torch.Tensor
    pos_index: torch.Tensor
    neg_mask: torch.Tensor
    anchor_ids: torch.Tensor
    candidate_ids: torch.Tensor
    anchor_labels: torch.Tensor | None
    candidate_labels: torch.Tensor | None
    global_anchors: int
    reference_sim: torch.Tensor | None = None
    ids_checked_below: int | None = None
    negatives_all_but_positive: bool = False
    parts: tuple[str, ...] = ()
    self_index: torch.Tensor | None = None

    @property
    def pos_sim(self) -> torch.Tensor:
        """(A,) similarity of each anchor to its positive (in the graph)."""
        return self.sim.gather(1, self.pos_index[:, None]).squeeze(1)

    @property
    def num_anchors(self) -> int:
        return self.sim.shape[0]

    def known_label_mask(self) -> torch.Tensor | None:
        """(A, M) bool: negatives whose anchor and candidate labels are both known (>= 0)."""
        if self.anchor_labels is None or self.candidate_labels is None:
            return None
        return (
            (self.anchor_labels[:, None] >= 0)
            & (self.candidate_labels[None, :] >= 0)
            & (self.neg_mask)
        )

    def same_label_mask(self) -> torch.Tensor | None:
        """(A, M) bool: negatives that share the anchor's known label (true false negatives).

        Labels of -1 (unlabelled rows) never match: a pair with an unknown label is neither a
        true nor a false negative as far as the labels can tell.
        """
        known = self.known_label_mask()
        if known is None:
            return None
        assert self.anchor_labels is not None and self.candidate_labels is not None
        return (self.anchor_labels[:, None] == self.candidate_labels[None, :]) & known


_LAYOUT = "_layout_columns"


def excluded_columns(batch: PairwiseBatch) -> torch.Tensor | None:
    """(A, 2) int64 ``[self, positive]`` columns of each SimCLR anchor row, the only columns that
    are not its negatives, or None when ``batch`` does not guarantee that layout (not built by
    :func:`simclr_pairs`, or ``neg_mask`` replaced or written in place since)."""
    return recall(batch, _LAYOUT, (batch.neg_mask,))


def _check_embeddings(name: str, x: torch.Tensor, ids: torch.Tensor) -> None:
    check(x.dim() == 2, f"{name} must have shape (batch, dim), got {tuple(x.shape)}")
    check(
        ids.dim() == 1 and ids.shape[0] == x.shape[0],
        f"sample ids must have shape ({x.shape[0]},) to match {name}, got {tuple(ids.shape)}",
    )


def _gather_ids_labels(
    ids: torch.Tensor, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    all_ids = dist_utils.gather_no_grad(ids.long())
    all_labels = dist_utils.gather_no_grad(labels.long()) if labels is not None else None
    return all_ids, all_labels


def simclr_pairs(
    z1: torch.Tensor,
    z2: torch.Tensor,
    ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    normalize: bool = True,
) -> PairwiseBatch:
    """Build the SimCLR layout from the local views ``z1, z2`` (b, D) and sample ids (b,).

    Under DDP the candidates are all-gathered with gradient; every rank must pass the same b.
    """
    _check_embeddings("z1", z1, ids)
    check(
        z1.shape == z2.shape,
        f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}",
    )
    if normalize:
        z1, z2 = unit_rows(z1, dim=1), unit_rows(z2, dim=1)
    b = z1.shape[0]
    all_z1, all_z2 = dist_utils.gather_with_grad(z1), dist_utils.gather_with_grad(z2)
    all_ids, all_labels = _gather_ids_labels(ids, labels)
    big_b = all_z1.shape[0]
    offset = dist_utils.rank() * b

    anchors = torch.cat([z1, z2], dim=0)
    # one process: the candidates are the anchors (one concatenation, not two)
    candidates = torch.cat([all_z1, all_z2], dim=0) if dist_utils.is_distributed() else anchors
    sim = anchors @ candidates.T

    template, self_col, pos_col, columns = _simclr_layout(b, big_b, offset, z1.device)
    neg_mask = template.clone()  # callers may write their batch's tensors in place
    batch = PairwiseBatch(
        name="image",
        sim=sim,
        pos_index=pos_col.clone(),
        neg_mask=neg_mask,
        anchor_ids=torch.cat([ids, ids]).long(),
        candidate_ids=torch.cat([all_ids, all_ids]),
        anchor_labels=torch.cat([labels, labels]).long() if labels is not None else None,
        candidate_labels=torch.cat([all_labels, all_labels]) if all_labels is not None else None,
        global_anchors=2 * big_b,
        self_index=self_col.clone(),
    )
    remember(batch, _LAYOUT, (neg_mask,), columns)
    return batch


_LAYOUTS: dict[tuple, tuple[torch.Tensor, ...]] = {}


def _simclr_layout(
    b: int, big_b: int, offset: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(neg_mask, self_col, pos_col, [self_col, pos_col])`` of the SimCLR layout, built once
    per shape, rank offset and device (callers copy the tensors they hand out)."""
    key = (b, big_b, offset, str(device))
    found = _LAYOUTS.get(key)
    if found is None:
        local = torch.arange(b, device=device)
        self_col = torch.cat([offset + local, big_b + offset + local])
        pos_col = torch.cat([big_b + offset + local, offset + local])
        rows = torch.arange(2 * b, device=device)
        neg_mask = torch.ones(2 * b, 2 * big_b, dtype=torch.bool, device=device)
        neg_mask[rows, self_col] = False
        neg_mask[rows, pos_col] = False
        if len(_LAYOUTS) >= 16:
            _LAYOUTS.clear()
        found = _LAYOUTS[key] = (neg_mask, self_col, pos_col, torch.stack([self_col, pos_col], 1))
    return found  # type: ignore[return-value]


def _clip_inputs(
    image: torch.Tensor,
    text: torch.Tensor,
    ids: torch.Tensor,
    labels: torch.Tensor | None,
    normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Checked (and normalised) local embeddings, their gathered copies, the positives' columns
    and the fields both CLIP directions share."""
    _check_embeddings("image", image, ids)
    check(
        image.shape == text.shape,
        f"image and text embeddings must have the same shape, got "
        f"{tuple(image.shape)} and {tuple(text.shape)}",
    )
    if normalize:
        image, text = unit_rows(image, dim=1), unit_rows(text, dim=1)
    b = image.shape[0]
    all_image, all_text = dist_utils.gather_with_grad(image), dist_utils.gather_with_grad(text)
    all_ids, all_labels = _gather_ids_labels(ids, labels)
    big_b = all_image.shape[0]
    pos_col = dist_utils.rank() * b + torch.arange(b, device=image.device)
    common = dict(
        negatives_all_but_positive=True,
        anchor_ids=ids.long(),
        candidate_ids=all_ids,
        anchor_labels=labels.long() if labels is not None else None,
        candidate_labels=all_labels,
        global_anchors=big_b,
    )
    return image, text, all_image, all_text, pos_col, common


def _clip_neg_mask(pos_col: torch.Tensor, big_b: int) -> torch.Tensor:
    """(A, big_b) bool, True everywhere except at each row's positive column."""
    a = pos_col.shape[0]
    neg_mask = torch.ones(a, big_b, dtype=torch.bool, device=pos_col.device)
    neg_mask[torch.arange(a, device=pos_col.device), pos_col] = False
    return neg_mask


def clip_pairs(
    image: torch.Tensor,
    text: torch.Tensor,
    ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    normalize: bool = True,
) -> tuple[PairwiseBatch, PairwiseBatch]:
    """Build the two CLIP directions from local image and text embeddings (b, D).

    Returns ``(image_to_text, text_to_image)``.
    """
    image, text, all_image, all_text, pos_col, common = _clip_inputs(
        image, text, ids, labels, normalize
    )
    neg_mask = _clip_neg_mask(pos_col, all_image.shape[0])
    i2t_sim = image @ all_text.T
    # One process: the text -> image similarities are the transpose of the image -> text ones
    # (the same dot products). One matrix product instead of two, and two instead of four in
    # backward, where the two directions' gradients are added before the product.
    t2i_sim = text @ all_image.T if dist_utils.is_distributed() else i2t_sim.T.contiguous()
    i2t = PairwiseBatch(
        name="image_to_text", sim=i2t_sim, pos_index=pos_col, neg_mask=neg_mask, **common
    )
    t2i = PairwiseBatch(
        name="text_to_image", sim=t2i_sim, pos_index=pos_col, neg_mask=neg_mask, **common
    )
    return i2t, t2i


def clip_pairs_stacked(
    image: torch.Tensor,
    text: torch.Tensor,
    ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    normalize: bool = True,
) -> PairwiseBatch:
    """Both CLIP directions as one batch: image anchors (rows 0..b-1) then text anchors.

    Each row holds the same values as the matching row of :func:`clip_pairs`'s
    ``image_to_text`` / ``text_to_image`` batch (sim (2b, B), positives, masks, ids and labels
    stacked), so per-row work runs once over both directions. ``parts`` names the two blocks;
    ``global_anchors`` stays B, the anchor count of each direction.
    """
    image, text, all_image, all_text, pos_col, common = _clip_inputs(
        image, text, ids, labels, normalize
    )
    i2t_sim = image @ all_text.T
    t2i_sim = text @ all_image.T if dist_utils.is_distributed() else i2t_sim.T
    pos_index = torch.cat([pos_col, pos_col])
    anchor_ids, anchor_labels = common["anchor_ids"], common["anchor_labels"]
    return PairwiseBatch(
        name="image_text",
        sim=torch.cat([i2t_sim, t2i_sim]),
        pos_index=pos_index,
        neg_mask=_clip_neg_mask(pos_index, all_image.shape[0]),
        anchor_ids=torch.cat([anchor_ids, anchor_ids]),
        candidate_ids=common["candidate_ids"],
        anchor_labels=(
            torch.cat([anchor_labels, anchor_labels]) if anchor_labels is not None else None
        ),
        candidate_labels=common["candidate_labels"],
        global_anchors=common["global_anchors"],
        negatives_all_but_positive=True,
        parts=("image_to_text", "text_to_image"),
    )

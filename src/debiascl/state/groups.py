"""Group the anchor rows of a :class:`~debiascl.pairs.PairwiseBatch` by sample id.

SimCLR batches have two anchor rows per image (its two views, ``anchor_ids = [ids; ids]``) and
per-image state (one u, one lambda) pools both rows; CLIP directions have one row per sample.
:func:`anchor_groups` recognises both layouts in O(A) and falls back to a sort for anything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from debiascl.batch_cache import recall, remember
from debiascl.errors import ConfigError
from debiascl.pairs import PairwiseBatch


@dataclass
class AnchorGroups:
    """Mapping between the A anchor rows and the G distinct sample ids among them.

    Attributes:
        ids: (G,) distinct sample ids.
        index: (A,) position in ``ids`` of each anchor row's id (built on first use for the
            regular layouts, whose pooling does not need it; ``None`` there means "not built").
        layout: ``"identity"`` (one row per id), ``"two_views"`` (rows ``[ids; ids]``) or
            ``"general"``.
    """

    ids: torch.Tensor
    _index: torch.Tensor | None
    layout: str

    @property
    def index(self) -> torch.Tensor:
        if self._index is None:
            g = self.ids.shape[0]
            if self.layout == "two_views":
                self._index = torch.arange(2 * g, device=self.ids.device) % max(g, 1)
            else:
                self._index = torch.arange(g, device=self.ids.device)
        return self._index

    def pool_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum the per-row values ``x`` (A, ...) of each id into (G, ...)."""
        if self.layout == "identity":
            return x
        g = self.ids.shape[0]
        if self.layout == "two_views":
            return x[:g] + x[g:]
        out = torch.zeros((g, *x.shape[1:]), dtype=x.dtype, device=x.device)
        return out.index_add_(0, self.index, x)

    def expand(self, y: torch.Tensor) -> torch.Tensor:
        """Per-id values ``y`` (G, ...) repeated to the anchor rows (A, ...)."""
        if self.layout == "identity":
            return y
        if self.layout == "two_views":
            return torch.cat([y, y], dim=0)
        return y.index_select(0, self.index)

    def pool_logmeanexp(self, x: torch.Tensor) -> torch.Tensor:
        """log of the mean over each id's rows of e^{x}, for (A,) log-values ``x`` -> (G,)."""
        if self.layout == "identity":
            return x
        g = self.ids.shape[0]
        if self.layout == "two_views":
            return torch.logaddexp(x[:g], x[g:]) - math.log(2.0)
        top = torch.full((g,), float("-inf"), dtype=x.dtype, device=x.device)
        top = top.scatter_reduce(0, self.index, x, reduce="amax")
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        total = self.pool_sum(torch.exp(x - top.index_select(0, self.index)))
        count = self.pool_sum(torch.ones_like(x))
        return torch.log(total / count) + top

    def rows_per_id(self) -> torch.Tensor | int:
        """Number of anchor rows of each id: an int for the regular layouts, else (G,)."""
        if self.layout == "identity":
            return 1
        if self.layout == "two_views":
            return 2
        return self.pool_sum(torch.ones_like(self.index, dtype=torch.float32))


def anchor_groups(batch: PairwiseBatch) -> AnchorGroups:
    """Group ``batch``'s anchor rows by sample id.

    Remembered on ``batch`` for its ``anchor_ids`` tensor (the same object, not written in place
    since), so the detector and the loss of one step group the rows once.
    """
    ids = batch.anchor_ids
    cached = recall(batch, _CACHE, (ids,))
    if cached is not None:
        return cached
    return remember(batch, _CACHE, (ids,), _group(batch))


_CACHE = "_anchor_groups_cache"


def _group(batch: PairwiseBatch) -> AnchorGroups:
    ids = batch.anchor_ids
    a = ids.shape[0]
    if batch.name != "image":
        # CLIP directions: pairs.py gives one row per sample (distinctness is checked on write).
        return AnchorGroups(ids, None, "identity")
    h = a // 2
    if a % 2 == 0 and torch.equal(ids[:h], ids[h:]):
        return AnchorGroups(ids[:h], None, "two_views")
    uniq, inverse = torch.unique(ids, return_inverse=True)
    return AnchorGroups(uniq, inverse, "general")


def direction_names(mode: str, directions: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The ``PairwiseBatch.name`` values an objective in ``mode`` produces.

    ``("image",)`` for image_image; ``("image_to_text", "text_to_image")`` (or the chosen subset)
    for image_text. Stateful losses and detectors keep one table per name.
    """
    if mode == "image_image":
        return ("image",)
    if mode == "image_text":
        allowed = ("image_to_text", "text_to_image")
        chosen = tuple(directions) if directions else allowed
        bad = [d for d in chosen if d not in allowed]
        if bad:
            raise ConfigError(f"unknown direction(s) {bad}; choose from {allowed}")
        return chosen
    raise ConfigError(f"unknown mode {mode!r}; choose 'image_image' or 'image_text'")

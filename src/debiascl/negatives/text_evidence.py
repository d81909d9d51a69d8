"""Text-side evidence for false negatives: frozen caption/report embeddings indexed by sample id.

Two samples whose captions (or radiology reports) say the same thing are the commonest false
negatives of image-text data. :class:`TextEvidence` holds one frozen, unit-norm text embedding per
sample id, an (N, D) table computed once before training (by :mod:`debiascl.compose` with a frozen
text encoder, identical on every rank), and looks up the cosine similarity of an anchor's text to
each candidate's text. Given the ids of a batch it is pure: no state changes during training.

:class:`TextAgreement` is the matching diagnostic for users without labels: the share of the
pairs a detector removed whose texts agree (text similarity >= a threshold), and the share of
text-agreeing negatives it removed.
"""

from __future__ import annotations

import torch
from torch import nn

from debiascl import distributed as dist_utils
from debiascl.errors import ConfigError, DataError
from debiascl.numerics import unit_rows
from debiascl.pairs import PairwiseBatch


def check_text_threshold(threshold: float) -> float:
    """Validate a cosine threshold on text similarities, in (-1, 1]."""
    if not -1.0 < float(threshold) <= 1.0:
        raise ConfigError(
            f"the text-similarity threshold must lie in (-1, 1] (cosine), got {threshold}"
        )
    return float(threshold)


class TextEvidence(nn.Module):
    """Frozen per-sample text embeddings and their pairwise cosine similarities.

    Args:
        text_embeddings: (N, D) float embedding of each sample id's text (row i for id i), from a
            frozen text encoder. Rows are L2-normalised here; an all-zero row (a sample without
            text) has similarity 0 to every other text.

    The table is a non-persistent buffer: it moves with ``.to(device)`` but is not written to
    checkpoints (it is recomputed from the texts at start).

    Raises:
        DataError: the table is not 2-D or holds a non-finite value.
    """

    def __init__(self, text_embeddings: torch.Tensor) -> None:
        super().__init__()
        emb = torch.as_tensor(text_embeddings)
        if emb.dim() != 2 or emb.shape[0] == 0:
            raise DataError(
                f"text embeddings must have shape (num_samples, dim), got {tuple(emb.shape)}"
            )
        if not bool(torch.isfinite(emb).all()):
            raise DataError("text embeddings hold NaN or inf; recompute them from the texts")
        self.register_buffer("embeddings", unit_rows(emb.float(), dim=1), persistent=False)

    @property
    def num_samples(self) -> int:
        return int(self.embeddings.shape[0])

    def check_ids(self, num_samples: int) -> None:
        """Raise a one-line error when the table does not cover ``num_samples`` ids."""
        if self.num_samples != num_samples:
            raise ConfigError(
                f"text embeddings cover {self.num_samples} sample ids but the data has "
                f"{num_samples}; compute one embedding per sample id"
            )

    @torch.no_grad()
    def pair_sim(self, batch: PairwiseBatch) -> torch.Tensor:
        """(A, M) float32 cosine similarity of each anchor's text to each candidate's text."""
        emb = self.embeddings
        a = emb.index_select(0, batch.anchor_ids.to(emb.device))
        c = emb.index_select(0, batch.candidate_ids.to(emb.device))
        return (a @ c.T).to(batch.sim.device)


class TextAgreement:
    """Per-epoch agreement of a detector's removals with text evidence (no labels needed).

    Args:
        evidence: the frozen text embeddings.
        threshold: text cosine at or above which a pair counts as "same text" (e.g. 0.95:
            identical and near-identical captions/reports).

    :meth:`compute` returns ``text_agreement`` (removed pairs whose texts agree / removed pairs;
    the text-evidence analogue of precision) and ``text_recall`` (text-agreeing negatives that
    were removed / text-agreeing negatives), summed over ranks.
    """

    def __init__(self, evidence: TextEvidence, threshold: float = 0.95) -> None:
        self.evidence = evidence
        self.threshold = check_text_threshold(threshold)
        self.reset()

    def reset(self) -> None:
        self.counts: torch.Tensor | None = None  # removed, removed & agree, agree

    @torch.no_grad()
    def update(self, batch: PairwiseBatch, keep: torch.Tensor) -> None:
        agree = (self.evidence.pair_sim(batch) >= self.threshold) & batch.neg_mask
        removed = batch.neg_mask & ~keep
        counts = torch.stack([removed.sum(), (removed & agree).sum(), agree.sum()])
        counts = counts.double()
        self.counts = counts if self.counts is None else self.counts + counts

    def compute(self) -> dict[str, float]:
        if self.counts is None:  # every rank steps together, so none has counts either
            return {}
        removed, both, agree = (float(x) for x in dist_utils.all_reduce_sum(self.counts).cpu())
        out: dict[str, float] = {}
        if removed > 0:
            out["text_agreement"] = both / removed
        if agree > 0:
            out["text_recall"] = both / agree
        return out

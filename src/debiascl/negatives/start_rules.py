"""The ``text_agreement`` start rule of the GloFND-type detectors: mask once candidates agree.

A learned threshold detector (GloFND, Balmaseda et al., ICML 2025) removes the negatives above
each anchor's threshold. Early in training, with an encoder trained from scratch, those pairs are
mostly hard *true* negatives, and removing them costs signal. For data with texts (captions,
reports) the frozen text evidence (:class:`~debiascl.negatives.text_evidence.TextEvidence`) says
which candidates are likely false negatives: this rule tracks, while the thresholds learn and
before any masking, the share of the would-be-removed pairs (negatives above the learned
thresholds) whose texts agree (text cosine >= ``text_threshold``), and starts masking at the
first epoch >= ``start_epoch`` after which that share reached ``start_agreement``.

The counts are summed over ranks at every step (one 2-element all-reduce until masking starts),
so the state is identical on every rank, travels in ``state_dict`` and the decision is the same
everywhere; after the start nothing more is counted.
"""

from __future__ import annotations

import torch
from torch import nn

from debiascl import distributed as dist_utils
from debiascl.errors import ConfigError
from debiascl.negatives.text_evidence import TextEvidence, check_text_threshold
from debiascl.pairs import PairwiseBatch

#: state columns: started (0/1), candidates and text-agreeing candidates of the current epoch,
#: the epoch they belong to (-1: none yet), and the share of the last finished epoch (NaN: none)
_INITIAL = (0.0, 0.0, 0.0, -1.0, float("nan"))


def check_start_agreement(value: float) -> float:
    """Validate the share of text-agreeing candidates that starts masking, in (0, 1]."""
    if not 0.0 < float(value) <= 1.0:
        raise ConfigError(f"start_agreement must lie in (0, 1], got {value}")
    return float(value)


class TextAgreementStart(nn.Module):
    """Decides when masking starts from the text agreement of the detector's candidates.

    Args:
        text_embeddings: (N, D) frozen text embedding per sample id (``None`` raises).
        text_threshold: text cosine at or above which two samples' texts agree, in (-1, 1].
        start_agreement: share of agreeing candidates that starts masking, in (0, 1].

    Raises:
        ConfigError: no text embeddings (data without captions/reports) or a bad setting.
    """

    def __init__(
        self, text_embeddings: torch.Tensor | None, text_threshold: float, start_agreement: float
    ) -> None:
        super().__init__()
        if text_embeddings is None:
            raise ConfigError(
                "start_rule='text_agreement' needs a caption/report per sample (text "
                "embeddings); use data with texts or start_rule 'epoch' or 'converged'"
            )
        self.evidence = TextEvidence(text_embeddings)
        self.text_threshold = check_text_threshold(text_threshold)
        self.start_agreement = check_start_agreement(start_agreement)
        self.register_buffer("state", torch.tensor(_INITIAL, dtype=torch.float64))

    @property
    def started(self) -> bool:
        return bool(self.state[0] > 0)

    @torch.no_grad()
    def new_epoch(self, epoch: int, start_epoch: int) -> None:
        """At the first training step of ``epoch``: decide from the counts of the epoch before.

        Masking starts when ``epoch >= start_epoch`` and the share of text-agreeing candidates
        over the last counted epoch is >= ``start_agreement`` (no candidates: no start)."""
        s = self.state
        if epoch <= int(s[3]) or self.started:
            return
        if s[1] > 0:
            share = float(s[2] / s[1])
            s[4] = share
            if epoch >= start_epoch and share >= self.start_agreement:
                s[0] = 1.0
        else:
            s[4] = float("nan")
        s[1] = 0.0
        s[2] = 0.0
        s[3] = float(epoch)

    @torch.no_grad()
    def observe(self, batch: PairwiseBatch, sim: torch.Tensor, thresholds: torch.Tensor) -> None:
        """Count this step's candidates (negatives with ``sim > thresholds[:, None]``) and those
        whose texts agree, summed over ranks (every rank must call it at the same steps).

        ``sim`` (A, M) float32 similarities the thresholds apply to; ``thresholds`` (A,)."""
        above = batch.neg_mask & (sim > thresholds[:, None])
        agree = above & (self.evidence.pair_sim(batch) >= self.text_threshold)
        counts = torch.stack([above.sum(), agree.sum()]).to(torch.float64)
        counts = dist_utils.all_reduce_sum(counts).to(self.state.device)
        self.state[1:3] += counts

    def diagnostics(self) -> dict[str, float]:
        """``start/candidate_text_agreement`` of the last finished epoch before the start, and
        ``start/started`` (0/1)."""
        out = {"start/started": float(self.state[0])}
        share = float(self.state[4])
        if share == share:  # not NaN
            out["start/candidate_text_agreement"] = share
        return out

    def reset(self) -> None:
        self.state.copy_(torch.tensor(_INITIAL, dtype=torch.float64))

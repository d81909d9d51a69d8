"""Text-evidence detector: remove negatives whose caption/report matches the anchor's.

For image-text data the texts carry the evidence an encoder trained from scratch lacks: two
samples with identical or near-identical captions (or radiology reports) are the commonest false
negatives. The detector compares the anchor's text with each candidate's text under a frozen text
encoder (:class:`~debiascl.negatives.text_evidence.TextEvidence`, an (N, D) table indexed by
sample id, computed once before training) and removes a negative when

* ``text_rule="fixed"``: its text similarity is >= ``text_threshold`` (e.g. 0.95: identical and
  near-identical texts), a global threshold; or
* ``text_rule="glofnd"``: its text similarity is above the anchor's learned GloFND threshold
  lambda_i (Balmaseda et al., ICML 2025), the (1 - alpha)-quantile of the anchor's *text*
  similarities to all its negatives, learned on the fly exactly as
  :class:`~debiascl.negatives.glofnd.GloFNDDetector` learns it over image similarities.

Both directions of an image-text batch (image -> texts, text -> images) compare the two samples'
texts. It works for image-image data as well when the samples have texts (reports of X-rays).
"""

from __future__ import annotations

import dataclasses

import torch

from debiascl.errors import ConfigError
from debiascl.negatives.base import ScheduledDetector
from debiascl.negatives.context import StepContext
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.negatives.text_evidence import TextEvidence, check_text_threshold
from debiascl.pairs import PairwiseBatch
from debiascl.state.sharded import Sharding
from debiascl.state.tables import Placement


class TextSimilarityDetector(ScheduledDetector):
    """Keep-mask from the texts of anchor and candidate.

    Args:
        num_samples: size N of the sample-id space.
        text_embeddings: (N, D) frozen text embedding per sample id (see
            :class:`~debiascl.negatives.text_evidence.TextEvidence`).
        text_rule: ``"fixed"`` (remove text cosine >= ``text_threshold``) or ``"glofnd"`` (a
            learned per-anchor threshold over text cosines, removing about ``alpha``).
        text_threshold: the fixed rule's cosine threshold, in (-1, 1].
        alpha: the glofnd rule's target fraction (ignored by the fixed rule).
        mode, directions: the objective's mode and image_text directions.
        start_epoch / update_start_epoch: see :class:`ScheduledDetector`.
        optimizer, lr, beta1, beta2, eps, init, moment_init, start_rule, start_tolerance,
            start_agreement, placement, sharding: the glofnd rule's settings, as for
            :class:`~debiascl.negatives.glofnd.GloFNDDetector` (``start_rule="text_agreement"``
            checks the learned text thresholds' candidates against ``text_threshold``).

    Raises:
        ConfigError: an unknown rule, a threshold outside (-1, 1], or a table that does not
            cover ``num_samples`` ids.
    """

    def __init__(
        self,
        num_samples: int,
        text_embeddings: torch.Tensor,
        text_rule: str = "fixed",
        text_threshold: float = 0.95,
        alpha: float = 0.05,
        mode: str = "image_image",
        directions: tuple[str, ...] | None = None,
        start_epoch: int = 0,
        update_start_epoch: int | None = None,
        optimizer: str = "adam",
        lr: float = 0.05,
        beta1: float = 0.9,
        beta2: float = 0.98,
        eps: float = 1e-8,
        init: str = "batch_quantile",
        moment_init: str = "zero",
        start_rule: str = "epoch",
        start_tolerance: float = 0.01,
        start_agreement: float = 0.5,
        placement: Placement = "device",
        sharding: Sharding = "replicated",
    ) -> None:
        if text_rule not in ("fixed", "glofnd"):
            raise ConfigError(f"text_rule must be 'fixed' or 'glofnd', got {text_rule!r}")
        if text_rule == "fixed" and start_rule != "epoch":
            raise ConfigError(
                f"start_rule={start_rule!r} needs learned thresholds: use text_rule='glofnd' "
                "with it, or start_rule='epoch' with the fixed rule"
            )
        super().__init__(alpha if text_rule == "glofnd" else None, start_epoch, update_start_epoch)
        self.text_rule = text_rule
        self.text_threshold = check_text_threshold(text_threshold)
        self.evidence = TextEvidence(text_embeddings)
        self.evidence.check_ids(num_samples)
        self.learner: GloFNDDetector | None = None
        if text_rule == "glofnd":
            self.learner = GloFNDDetector(
                num_samples,
                alpha,
                mode=mode,
                directions=directions,
                start_epoch=start_epoch,
                update_start_epoch=update_start_epoch,
                optimizer=optimizer,
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                eps=eps,
                init=init,
                moment_init=moment_init,
                start_rule=start_rule,
                start_tolerance=start_tolerance,
                text_embeddings=text_embeddings,
                text_threshold=text_threshold,
                start_agreement=start_agreement,
                placement=placement,
                sharding=sharding,
            )

    @torch.no_grad()
    def forward(self, batch: PairwiseBatch, ctx: StepContext) -> torch.Tensor:
        """(A, M) keep-mask: False for negatives whose text matches the anchor's text."""
        if self.learner is not None:
            text_batch = dataclasses.replace(batch, sim=self.evidence.pair_sim(batch))
            return self.learner(text_batch, ctx)
        if not self.masking(ctx):
            return self.keep_all(batch)
        return self.evidence.pair_sim(batch) < self.text_threshold

    def diagnostics(self) -> dict[str, float]:
        """The learned text thresholds' distribution (glofnd rule), else nothing."""
        if self.learner is None:
            return {}
        return {f"text_{k}": v for k, v in self.learner.diagnostics().items()}

"""GloFND variants: thresholds over a stable embedding, and per-anchor alpha from SSD's eta.

* :class:`StableGloFNDDetector` (``stable_glofnd``): GloFND's learned per-anchor threshold
  (Balmaseda et al., ICML 2025) over the similarities of a *stable* embedding, a momentum (EMA)
  copy of the encoder or the initial (pretrained) encoder, instead of the online encoder, whose
  similarities move under the thresholds. The objective receives the stable embeddings as
  ``reference=(a_ref, b_ref)`` and builds the same anchor x candidate layout from them
  (``PairwiseBatch.reference_sim``); the detector is pure given those similarities.
* :class:`EtaGloFNDDetector` (``eta_glofnd``): GloFND whose target fraction is per anchor,
  ``alpha_i = clip(alpha_scale * eta_i, alpha_min, alpha_max)``, from the per-sample
  false-negative rate eta_i of SSD (Wang et al., MLHC 2023; :mod:`debiascl.eta`): frequent texts
  get a larger removal budget.
"""

from __future__ import annotations

import dataclasses

import torch

from debiascl.errors import ConfigError, DataError
from debiascl.negatives.context import StepContext
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.negatives.thresholds import check_alpha
from debiascl.pairs import PairwiseBatch
from debiascl.state.groups import AnchorGroups
from debiascl.state.sharded import Sharding
from debiascl.state.tables import Placement


class StableGloFNDDetector(GloFNDDetector):
    """GloFND over ``batch.reference_sim`` (similarities of a stable embedding).

    Arguments as :class:`~debiascl.negatives.glofnd.GloFNDDetector`. The caller passes the
    stable embeddings to the objective (``objective(a, b, ids, reference=(a_ref, b_ref))``);
    the built-in trainer does so with ``negatives.stable_glofnd.reference: ema`` or ``initial``.

    Raises:
        DataError: a batch without reference similarities.
    """

    #: the objective must be given reference embeddings (read by the trainer)
    needs_reference = True

    @torch.no_grad()
    def forward(self, batch: PairwiseBatch, ctx: StepContext) -> torch.Tensor:
        if batch.reference_sim is None:
            raise DataError(
                "stable_glofnd needs the stable embeddings: pass reference=(a_ref, b_ref) to the "
                "objective (the trainer does it with negatives.stable_glofnd.reference: ema or "
                "initial)"
            )
        return super().forward(dataclasses.replace(batch, sim=batch.reference_sim), ctx)


def eta_alphas(
    eta: torch.Tensor, alpha_scale: float, alpha_min: float, alpha_max: float, fallback: float
) -> torch.Tensor:
    """(N,) float32 ``clip(alpha_scale * eta, alpha_min, alpha_max)``; ``fallback`` where eta is
    NaN (ids without text).

    Raises:
        ConfigError: bounds outside (0, 1), ``alpha_min > alpha_max`` or ``alpha_scale <= 0``.
    """
    check_alpha(alpha_min)
    check_alpha(alpha_max)
    if alpha_min > alpha_max or alpha_scale <= 0:
        raise ConfigError(
            f"eta alpha needs alpha_scale > 0 and alpha_min <= alpha_max, got scale "
            f"{alpha_scale}, min {alpha_min}, max {alpha_max}"
        )
    eta = torch.as_tensor(eta, dtype=torch.float64).reshape(-1)
    alpha = (alpha_scale * eta).clamp(alpha_min, alpha_max)
    return torch.where(torch.isnan(eta), torch.full_like(alpha, fallback), alpha).float()


class EtaGloFNDDetector(GloFNDDetector):
    """GloFND with a per-anchor target fraction from SSD's eta.

    Args:
        num_samples: size N of the sample-id space.
        eta: (N,) per-sample false-negative rate (NaN where unknown: those ids use ``alpha``).
        alpha: fallback fraction for ids without eta, in (0, 1).
        alpha_scale, alpha_min, alpha_max: ``alpha_i = clip(alpha_scale * eta_i, min, max)``.
        Other arguments as :class:`~debiascl.negatives.glofnd.GloFNDDetector`.

    Raises:
        ConfigError: eta of the wrong length or bad bounds.
    """

    def __init__(
        self,
        num_samples: int,
        eta: torch.Tensor,
        alpha: float = 0.05,
        alpha_scale: float = 1.0,
        alpha_min: float = 0.01,
        alpha_max: float = 0.5,
        mode: str = "image_image",
        directions: tuple[str, ...] | None = None,
        start_epoch: int = 0,
        update_start_epoch: int | None = None,
        optimizer: str = "adam",
        lr: float = 0.05,
        beta1: float = 0.9,
        beta2: float = 0.98,
        eps: float = 1e-8,
        init: str = "one",
        moment_init: str = "zero",
        reset_on_resume: bool = False,
        placement: Placement = "device",
        sharding: Sharding = "replicated",
        start_rule: str = "epoch",
        start_tolerance: float = 0.01,
        text_embeddings: torch.Tensor | None = None,
        text_threshold: float = 0.95,
        start_agreement: float = 0.5,
    ) -> None:
        super().__init__(
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
            reset_on_resume=reset_on_resume,
            placement=placement,
            sharding=sharding,
            start_rule=start_rule,
            start_tolerance=start_tolerance,
            text_embeddings=text_embeddings,
            text_threshold=text_threshold,
            start_agreement=start_agreement,
        )
        eta = torch.as_tensor(eta).reshape(-1)
        if eta.numel() != num_samples:
            raise ConfigError(
                f"eta holds {eta.numel()} values for {num_samples} sample ids; give one per id"
            )
        table = eta_alphas(eta, alpha_scale, alpha_min, alpha_max, float(alpha))
        self.register_buffer("alpha_table", table, persistent=False)

    def anchor_alpha(self, groups: AnchorGroups) -> torch.Tensor:
        """(G,) alpha_i of the batch's ids."""
        return self.alpha_table.index_select(0, groups.ids.to(self.alpha_table.device)).to(
            groups.ids.device
        )

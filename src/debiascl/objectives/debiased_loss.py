"""DCL / HCL / SSD as a :class:`PairLoss`, with eta constant or one value per sample id.

The maths is :func:`debiascl.losses.debiased.debiased_info_nce` (computed by its fused form
:func:`~debiascl.losses.debiased.debiased_info_nce_from_sim`); this module owns the eta table
(an (N,) buffer indexed by ``batch.anchor_ids``) and the factories of ``dcl``, ``hcl`` and ``ssd``.

For image-text data the table is indexed by the pair id, so a pair's eta (that of its text in SSD)
applies to its image anchor (image -> text) and its text anchor (text -> image); ``eta_directions``
restricts the correction to one direction (the other then uses eta = 0, i.e. InfoNCE/HCL).
The keep-mask of a false-negative detector is honoured: removed negatives leave the estimator and
N counts only the kept ones.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch

from debiascl import distributed as dist_utils
from debiascl.errors import ConfigError, DataError, check
from debiascl.eta.sources import EtaSpec, build_eta_table
from debiascl.eta.summary import eta_summary
from debiascl.losses.debiased import check_eta, debiased_info_nce_from_sim
from debiascl.negatives.context import StepContext
from debiascl.objectives.base import LossTerms, PairLoss
from debiascl.pairs import PairwiseBatch

log = logging.getLogger(__name__)


class DebiasedLoss(PairLoss):
    """Per-anchor debiased contrastive loss (Chuang et al. 2020; Robinson et al. 2021; Wang et
    al. 2023).

    Args:
        eta: a number in [0, 1) (DCL/HCL) or an (N,) tensor of per-sample rates indexed by sample id
            (SSD); NaN entries mark ids without an eta and raise if such an id is used.
        beta: HCL hardness (0 = DCL).
        num_samples: if given, the table length must equal it.
        eta_directions: batch names (``"image"``, ``"image_to_text"``, ``"text_to_image"``) that get
            the correction; ``None`` = all.
        temperature: the fixed temperature t this loss owns (logit scale 1 / t, also in the
            N e^{-1/t} floor); ``None``: the caller passes ``logit_scale``. Never learned here.

    Logs per direction: ``clamped_fraction`` (anchors at the N e^{-1/t} floor), ``eta_mean`` and
    ``negatives`` (mean N). :meth:`diagnostics` returns the same over the whole epoch (all
    directions, reduced over ranks) plus the eta table's statistics; :attr:`eta_report` holds the
    table's full :func:`~debiascl.eta.summary.eta_summary` (histogram, relation to text
    frequency), which :meth:`artifacts` offers as ``eta_summary.json`` for the run directory.
    """

    def __init__(
        self,
        eta: float | torch.Tensor = 0.1,
        beta: float = 0.0,
        num_samples: int | None = None,
        eta_directions: Sequence[str] | None = None,
        temperature: float | None = None,
    ) -> None:
        super().__init__(temperature)
        check(beta >= 0, f"HCL hardness beta must be >= 0, got {beta}", ConfigError)
        self.beta = float(beta)
        self.eta_directions = tuple(eta_directions) if eta_directions is not None else None
        self.eta_value: float | None
        #: Full eta-table summary (set by the builders for per-sample tables), or None.
        self.eta_report: dict[str, object] | None = None
        # Epoch accumulators: anchors, clamped anchors, sum of anchor eta, sum of N.
        self._acc = torch.zeros(4, dtype=torch.float64)
        self._acc_device = torch.device("cpu")  # where the all-reduce runs (NCCL needs CUDA)
        if isinstance(eta, torch.Tensor):
            check(
                eta.dim() == 1,
                f"a per-sample eta table must have shape (N,), got {tuple(eta.shape)}",
                DataError,
            )
            if num_samples is not None:
                check(
                    eta.shape[0] == num_samples,
                    f"the eta table has {eta.shape[0]} entries but there are {num_samples} sample "
                    f"ids; build one eta per sample id",
                    DataError,
                )
            table = eta.detach().float()
            known = table[~torch.isnan(table)]
            check_eta(known)
            self.eta_value = None
            self.register_buffer("eta_table", table, persistent=False)
        else:
            check_eta(float(eta))
            self.eta_value = float(eta)
            self.eta_table = None

    def anchor_eta(self, batch: PairwiseBatch) -> float | torch.Tensor:
        """eta of each anchor of ``batch``: a float or an (A,) tensor."""
        if self.eta_directions is not None and batch.name not in self.eta_directions:
            return 0.0
        if self.eta_table is None:
            assert self.eta_value is not None
            return self.eta_value
        ids = batch.anchor_ids.to(self.eta_table.device)
        if ids.numel() and int(ids.max()) >= self.eta_table.shape[0]:
            raise DataError(
                f"sample id {int(ids.max())} has no entry in the eta table of length "
                f"{self.eta_table.shape[0]}; build the table over the whole id space"
            )
        eta = self.eta_table[ids]
        missing = torch.isnan(eta)
        if bool(missing.any()):
            bad = int(ids[missing][0])
            raise DataError(
                f"sample id {bad} has no eta (it had no text or label when the eta table was "
                f"built); give every training sample a text/label or use a constant eta"
            )
        return eta.to(batch.sim.device)

    def forward(
        self,
        batch: PairwiseBatch,
        keep: torch.Tensor,
        logit_scale: torch.Tensor,
        ctx: StepContext,
    ) -> LossTerms:
        """Per-anchor loss of one direction; ``keep`` (A, M) is the detector's keep-mask."""
        eta = self.anchor_eta(batch)
        terms = debiased_info_nce_from_sim(
            batch.sim,
            torch.as_tensor(logit_scale, dtype=torch.float32, device=batch.sim.device),
            batch.pos_index,
            batch.neg_mask & keep,
            eta=eta,
            beta=self.beta,
        )
        anchors = terms.loss.numel()
        # Every scalar of the step in one read-back (one host synchronisation).
        with torch.no_grad():
            parts = [
                terms.clamped.sum().double(),
                terms.num_negatives.double().sum(),
                terms.clamped.float().mean().double(),
                terms.num_negatives.float().mean().double(),
            ]
            if isinstance(eta, torch.Tensor):
                parts.append(eta.float().mean().double())
            values = torch.stack(parts).tolist()
        clamped_sum, negatives_sum, clamped_mean, negatives_mean = values[:4]
        eta_mean = values[4] if isinstance(eta, torch.Tensor) else float(eta)
        self._acc_device = batch.sim.device
        self._acc += torch.tensor(
            [anchors, clamped_sum, eta_mean * anchors, negatives_sum], dtype=torch.float64
        )
        logs = {
            "clamped_fraction": clamped_mean if anchors else 0.0,
            "eta_mean": eta_mean,
            "negatives": negatives_mean if anchors else 0.0,
        }
        return LossTerms(loss=terms.loss, objective=terms.loss.detach(), logs=logs)

    def diagnostics(self, reset: bool = True) -> dict[str, float]:
        """Cheap epoch scalars (called by ``ContrastiveObjective.epoch_diagnostics`` on every rank).

        ``clamped_fraction``, ``eta_mean`` and ``mean_negatives`` are over all anchors of all
        directions since the last reset, summed over ranks; ``eta_table_*`` describe the per-sample
        table (absent for a constant eta), ``eta_table_spearman_text_count`` its Spearman
        correlation with how often each sample's text repeats (NaN without texts).
        """
        acc = dist_utils.all_reduce_sum(self._acc.to(self._acc_device)).cpu()
        if reset:
            self._acc.zero_()
        n = float(acc[0])
        out: dict[str, float] = {}
        if n > 0:
            out["clamped_fraction"] = float(acc[1]) / n
            out["eta_mean"] = float(acc[2]) / n
            out["mean_negatives"] = float(acc[3]) / n
        report = self.eta_report
        if report is not None:
            for key in ("mean", "std", "min", "max"):
                if key in report:
                    out[f"eta_table_{key}"] = float(report[key])  # type: ignore[arg-type]
            out["eta_table_spearman_text_count"] = float(
                report.get("spearman_vs_text_count", float("nan"))  # type: ignore[arg-type]
            )
        return out

    def artifacts(self) -> dict[str, object]:
        """Files for the run directory: ``{"eta_summary.json": eta_report}`` for a per-sample
        table, ``{}`` for a constant eta."""
        return {"eta_summary.json": self.eta_report} if self.eta_report is not None else {}


_DIRECTION_NAMES = {
    "both": None,
    "image_to_text": ("image_to_text",),
    "text_to_image": ("text_to_image",),
}


def _resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def make_debiased(
    method: str,
    *,
    mode: str,
    num_samples: int,
    texts: Sequence[str | None] | None = None,
    labels: torch.Tensor | None = None,
    eta: float = 0.1,
    beta: float = 0.0,
    eta_source: str = "auto",
    eta_directions: str = "both",
    temperature: float | None = None,
    ssd_a: float = 0.2,
    ssd_k: float = 0.35,
    mlm_path: str | None = None,
    mlm_batch_size: int = 32,
    mlm_max_length: int = 128,
    mlm_device: str = "auto",
    corpus_lm_order: int = 2,
    eta_cache_dir: str | None = None,
    eta_cache_readonly: bool = False,
    output_dir: str = ".",
) -> DebiasedLoss:
    """DCL / HCL / SSD (``method``) with a constant or per-sample eta.

    Args:
        mode, num_samples, texts, labels: the data (texts and labels feed per-sample eta sources).
        eta, beta: constant false-negative rate tau+ and HCL hardness (0 for dcl).
        eta_source: ``auto`` (constant for dcl/hcl, ssd_mlm for ssd), ``constant``, ``ssd_mlm``,
            ``corpus_lm`` or ``class_frequency`` (see :mod:`debiascl.eta.sources`).
        eta_directions: ``both``, ``image_to_text`` or ``text_to_image`` (image_text only).
        temperature: the fixed temperature t the loss owns.
        ssd_a, ssd_k, mlm_*, corpus_lm_order, eta_cache_dir, eta_cache_readonly: the per-sample
            eta table (SSD eta = a * p_LM(text)^k); the cache defaults to ``output_dir/eta_cache``.

    Raises:
        ConfigError: ``beta`` for dcl, a constant source for ssd, ``eta_directions`` on
            image_image data, or an eta source the data cannot feed.
    """
    if method == "dcl" and beta != 0:
        raise ConfigError(
            f"loss.dcl.beta={beta}: beta is HCL's hardness; use loss.name=hcl (loss.hcl.beta) or 0"
        )
    source = eta_source
    if source == "auto":
        source = "ssd_mlm" if method == "ssd" else "constant"
    if method == "ssd" and source == "constant":
        raise ConfigError(
            "loss.name=ssd needs a per-sample eta; set loss.ssd.eta_source to ssd_mlm, "
            "corpus_lm or class_frequency (or use loss.name=dcl for a constant eta)"
        )
    if mode == "image_image" and eta_directions != "both":
        raise ConfigError(
            f"loss.{method}.eta_directions applies to image_text data only; leave it at 'both' for "
            "image_image"
        )
    directions = _DIRECTION_NAMES[eta_directions]
    if source == "constant":
        return DebiasedLoss(eta=eta, beta=beta, eta_directions=directions, temperature=temperature)

    spec = EtaSpec(
        source=source,
        eta=eta,
        a=ssd_a,
        k=ssd_k,
        mlm_path=mlm_path,
        mlm_batch_size=mlm_batch_size,
        mlm_max_length=mlm_max_length,
        mlm_device=_resolve_device(mlm_device),
        ngram_order=corpus_lm_order,
        cache_dir=eta_cache_dir if eta_cache_dir is not None else f"{output_dir}/eta_cache",
        cache_readonly=eta_cache_readonly,
        settings=f"loss.{method}",
    )
    # Rank 0 scores the texts (possibly minutes with a masked LM) and every rank gets its table.
    table: torch.Tensor | None = None
    if dist_utils.is_main_process():
        spec.progress = True
        table = build_eta_table(spec, num_samples, texts=texts, labels=labels)
    table = dist_utils.broadcast_object(table)
    assert isinstance(table, torch.Tensor)
    loss = DebiasedLoss(
        eta=table,
        beta=beta,
        num_samples=num_samples,
        eta_directions=directions,
        temperature=temperature,
    )
    # Every rank holds the same table, so every rank can summarise it (logged on rank 0 only).
    loss.eta_report = {
        "source": source,
        "method": method,
        **eta_summary(table, texts, labels=labels, log_it=dist_utils.is_main_process()),
    }
    return loss


#: DCL (Chuang et al. 2020): eta constant or per sample, beta = 0.
make_dcl = functools.partial(make_debiased, "dcl")
#: HCL (Robinson et al. 2021): DCL with hardness ``beta``.
make_hcl = functools.partial(make_debiased, "hcl")
#: SSD (Wang et al. 2023): per-sample eta = a * p_LM(text)^k (``eta_source``).
make_ssd = functools.partial(make_debiased, "ssd")

"""Registry builders of the false-negative detectors (``negatives.name`` in the config)."""

from __future__ import annotations

from typing import Any

from debiascl.config.schema import RunConfig
from debiascl.data.info import DatasetInfo
from debiascl.negatives.fnc import FNCDetector
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.negatives.oracle import OracleDetector
from debiascl.negatives.single import SingleThresholdDetector
from debiascl.registry import DETECTORS


def _directions(cfg: RunConfig) -> tuple[str, ...] | None:
    if cfg.data.mode == "image_text" and cfg.loss.directions != "both":
        return (cfg.loss.directions,)
    return None


def _threshold_options(cfg: RunConfig) -> dict[str, Any]:
    """Settings shared by the learned-threshold detectors (GloFND and the single threshold)."""
    n = cfg.negatives
    return {
        "alpha": n.alpha,
        "mode": cfg.data.mode,
        "directions": _directions(cfg),
        "start_epoch": n.start_epoch,
        "update_start_epoch": n.update_start_epoch,
        "optimizer": n.optimizer,
        "lr": n.lr,
        "beta1": n.beta1,
        "beta2": n.beta2,
        "eps": n.eps,
        "init": n.init,
    }


@DETECTORS.register("glofnd")
def build_glofnd(cfg: RunConfig, info: DatasetInfo) -> GloFNDDetector:
    n = cfg.negatives
    return GloFNDDetector(
        num_samples=info.num_samples,
        **_threshold_options(cfg),
        moment_init=n.moment_init,
        reset_on_resume=n.reset_on_resume,
        placement=n.table_placement,
    )


@DETECTORS.register("fnc")
def build_fnc(cfg: RunConfig, info: DatasetInfo) -> FNCDetector:
    return FNCDetector(alpha=cfg.negatives.alpha, start_epoch=cfg.negatives.start_epoch)


@DETECTORS.register("single")
def build_single(cfg: RunConfig, info: DatasetInfo) -> SingleThresholdDetector:
    return SingleThresholdDetector(**_threshold_options(cfg))


@DETECTORS.register("oracle")
def build_oracle(cfg: RunConfig, info: DatasetInfo) -> OracleDetector:
    return OracleDetector(start_epoch=cfg.negatives.start_epoch)

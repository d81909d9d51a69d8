"""Registrations of the plain InfoNCE loss and the no-op detector."""

from __future__ import annotations

from debiascl.config.schema import RunConfig
from debiascl.data.info import DatasetInfo
from debiascl.objectives.base import NoDetector
from debiascl.objectives.infonce_loss import InfoNCELoss
from debiascl.registry import DETECTORS, LOSSES


@LOSSES.register("infonce")
def build_infonce(cfg: RunConfig, info: DatasetInfo) -> InfoNCELoss:
    lc = cfg.loss
    return InfoNCELoss(lc.temperature, lc.learn_temperature, lc.max_logit_scale)


@DETECTORS.register("none")
def build_none(cfg: RunConfig, info: DatasetInfo) -> NoDetector:
    return NoDetector()

"""Every registered loss x detector combination builds and trains for both modes."""

from __future__ import annotations

import pytest
import torch

from debiascl.compose import build_objective
from debiascl.config.schema import RunConfig
from debiascl.data.info import DatasetInfo
from debiascl.errors import ConfigError
from debiascl.objectives import StepContext
from debiascl.registry import DETECTORS, LOSSES

N, B = 40, 8


def test_the_issue_methods_are_registered():
    assert {"sogclr", "infonce"} <= set(LOSSES.names())
    assert {"none", "glofnd", "fnc", "single", "oracle"} <= set(DETECTORS.names())


@pytest.mark.parametrize("mode", ["image_image", "image_text"])
@pytest.mark.parametrize("loss", LOSSES.names())
@pytest.mark.parametrize("detector", DETECTORS.names())
def test_combination_runs(mode, loss, detector, tmp_path):
    torch.manual_seed(0)
    cfg = RunConfig(output_dir=str(tmp_path))
    cfg.data.mode = mode
    cfg.loss.name = loss
    cfg.negatives.name = detector
    cfg.negatives.alpha = 0.2
    if "init" in cfg.negatives.settings_model(detector).model_fields:
        setattr(cfg.negatives, detector, {"init": "batch_quantile"})
    cfg.negatives.text_encoder = "tfidf"  # text_sim: frozen text evidence without weights
    if loss == "ssd":
        cfg.loss.ssd = {"eta_source": "class_frequency"}  # the only per-sample eta needing no model
    labels_all = torch.arange(N) % 4
    info = DatasetInfo(
        num_samples=N,
        labels=labels_all,
        texts=[f"a photo of class {int(c)}" for c in labels_all],
    )
    if detector == "eta_glofnd" and loss != "ssd":  # per-anchor alpha needs a per-sample eta
        with pytest.raises(ConfigError, match="per-sample eta"):
            build_objective(cfg, info)
        return
    objective = build_objective(cfg, info)
    encoder = torch.nn.Linear(6, 5)
    stable = torch.nn.Linear(6, 5)  # a stable reference encoder (stable_glofnd)
    removed = 0
    for step in range(3):
        ids = torch.randperm(N)[:B]
        x = torch.randn(B, 6)
        x2 = x + 0.3 * torch.randn(B, 6)
        with torch.no_grad():
            reference = (stable(x), stable(x2))
        out = objective(
            encoder(x),
            encoder(x2),
            ids,
            labels=labels_all[ids],
            logit_scale=5.0,
            ctx=StepContext(epoch=step, step=step, progress=step / 3),
            reference=reference,
        )
        assert out.loss.dim() == 0 and torch.isfinite(out.loss) and torch.isfinite(out.value)
        encoder.zero_grad()
        out.loss.backward()
        assert torch.isfinite(encoder.weight.grad).all() and encoder.weight.grad.abs().sum() > 0
        removed += sum(int((~k).sum()) for k in out.keep_masks.values())
    diag = objective.epoch_diagnostics()
    assert 0.0 <= diag["removed_fraction"] <= 1.0
    if detector in ("fnc", "oracle"):
        assert removed > 0

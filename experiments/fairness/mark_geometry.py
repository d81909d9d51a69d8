"""Where the SYNTHETIC mark sits in a trained run's embedding (validation split only).

For each run directory (``checkpoints/best.pt``), embeds the 4000 validation images of
``diagnose.py`` (Fashion-MNIST *training* images not used in training, mark independent of the
class) and prints, for the L2-normalised image embedding:

* ``std_gap_rms``: RMS over coordinates of the group-mean difference divided by each coordinate's
  standard deviation (what the per-coordinate mean-gap penalty measures);
* ``mahalanobis2``: d^T S^-1 d with S the pooled within-group covariance (what a linear probe can
  exploit: for Gaussian groups the best linear accuracy is Phi(sqrt(.)/2)), its sampling-noise
  floor ~ D (1/n1 + 1/n0), and the implied accuracy;
* the share of mahalanobis2 carried by the 32 / 64 smallest-variance principal directions of S.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/fairness/mark_geometry.py \
        runs/fairness_cleanview/gap10c_s0
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diagnose import N_VAL, _encode

from debiascl.checkpoint import OLD_MODEL_KEY, load_weights
from debiascl.compose import build_data, build_model
from debiascl.config import load_run_config
from debiascl.data.synthetic_attr import load_synthetic_attr


def main(runs: list[str]) -> int:
    torch.set_num_threads(1)
    for run in runs:
        cfg = load_run_config(run)  # a config saved by an older version is migrated
        data = build_data(cfg.data, cfg.seed)
        model = build_model(cfg.model, cfg.data.mode, data.channels, data.info.texts)
        state, _ = load_weights(Path(run) / "checkpoints" / "best.pt")
        state.pop(OLD_MODEL_KEY, None)  # the temperature the model held before the loss did
        model.load_state_dict(state)
        model.eval()
        full = load_synthetic_attr("train", 0.5, cfg.data.synthetic_style, seed=0)
        used = set(np.asarray(data.train.ids).tolist())
        free = np.array([i for i in range(len(full.labels)) if i not in used])
        rows = np.sort(np.random.default_rng(1234).choice(free, N_VAL, replace=False))
        enc = _encode(model, full.images[rows], data.image_size, data.channels)
        x = enc["embedding_l2"].double().numpy()
        a = full.attrs[rows].numpy()
        d = x[a == 1].mean(0) - x[a == 0].mean(0)
        s = 0.5 * (np.cov(x[a == 1].T) + np.cov(x[a == 0].T))
        ev, u = np.linalg.eigh(s)  # ascending eigenvalues
        proj = (u.T @ d) ** 2 / np.maximum(ev, 1e-12)
        maha = float(proj.sum())
        floor = len(d) * (1 / (a == 1).sum() + 1 / (a == 0).sum())
        acc = 0.5 * (1 + math.erf(math.sqrt(maha) / 2 / math.sqrt(2)))
        print(
            f"{Path(run).name}: std_gap_rms {np.sqrt(((d / x.std(0)) ** 2).mean()):.4f} "
            f"mahalanobis2 {maha:.3f} (noise floor {floor:.3f}, implied linear acc {acc:.3f}) "
            f"share in 32/64 smallest-variance PCs {proj[:32].sum() / maha:.2f}/"
            f"{proj[:64].sum() / maha:.2f} eigenvalues {ev.min():.1e}..{ev.max():.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Fresh-discriminator check on the SYNTHETIC-attribute benchmark.

Can the *same* discriminator as the run's (2-layer MLP, Adam), trained from scratch for 300
steps on the frozen final image embeddings (L2-normalised, as the adversary sees them) of the
run's training images, read the synthetic mark? Done on clean (evaluation-transform) images and on
augmented training views. Rows 6400-7999 of the training subset are held out for the accuracy;
the test split is not used.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/fairness/fresh_discriminator.py \
        runs/fairness_diag/diag_adv_default
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from debiascl.checkpoint import OLD_MODEL_KEY, load_weights
from debiascl.compose import build_augment, build_data, build_model
from debiascl.config import load_run_config
from debiascl.data.augment import EvalTransform
from debiascl.fairness.adversary import AdversarialFairness, AttributeSpec


def main(run: Path) -> None:
    torch.set_num_threads(1)
    cfg = load_run_config(run)  # a config saved by an older version is migrated
    data = build_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, cfg.data.mode, data.channels, corpus=data.info.texts)
    last = sorted((run / "checkpoints").glob("epoch*.pt"))[-1]
    state, _ = load_weights(last)
    state.pop(OLD_MODEL_KEY, None)  # the temperature the model held before the loss did
    model.load_state_dict(state)
    model.eval()
    torch.manual_seed(0)
    attr = torch.as_tensor(np.asarray(data.train.attrs)[:, 0]).long()
    n = len(attr)
    cut = int(0.8 * n)
    views = {
        "clean": EvalTransform(data.image_size, data.channels),
        "augmented": build_augment(cfg.data),
    }
    for name, tf in views.items():
        with torch.no_grad():
            chunks = [
                model.head(model.features(tf(data.train.images[i : i + 512])))
                for i in range(0, n, 512)
            ]
            z = F.normalize(torch.cat(chunks), dim=-1)
        adv = AdversarialFairness(z.shape[1], [AttributeSpec("mark", 2)], lr=1e-2)
        g = torch.Generator().manual_seed(0)
        for _ in range(300):
            idx = torch.randint(0, cut, (256,), generator=g)
            adv.discriminator_step(z[idx], attr[idx])
        with torch.no_grad():
            pred = adv.discriminator(z[cut:])["mark"].argmax(1)
        acc = (pred == attr[cut:]).float().mean().item()
        print(f"{run.name} {name}: fresh discriminator accuracy {acc:.3f}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Quick leakage diagnosis of one training setting on the SYNTHETIC-attribute benchmark.

Trains ``debiascl train <config> <overrides>`` in-process without the full evaluation, then
measures, **without touching the test split**:

* leakage: a fresh standardised logistic regression (the audit's :func:`leakage_probe`) fitted on
  frozen embeddings of the run's training images, scored on a *validation* set of 4000 other
  Fashion-MNIST **training** images (never seen in training) whose mark is drawn independently of
  the class (correlation 0.5), so class information cannot help the probe; read on the backbone
  feature, the raw image embedding and the L2-normalised image embedding;
* zero-shot accuracy and the zero-shot DPD (argmax decisions, mean over classes of the gap in
  P(yhat = c) between marked and unmarked) on the same validation set.

It is the tool used to choose the adversarial setting (hypotheses (a)-(d) in
``docs/experiments/fairness.md``); results append one JSON line to ``--out``.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/fairness/diagnose.py --tag plain \
        synth_attr_clip seed=0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from debiascl.config import load_config
from debiascl.data.augment import EvalTransform
from debiascl.data.captions import prompt_templates
from debiascl.data.synthetic_attr import load_synthetic_attr
from debiascl.eval.fairness_audit import leakage_probe
from debiascl.eval.zero_shot import class_embeddings
from debiascl.train.trainer import Trainer

N_VAL = 4000


@torch.no_grad()
def _encode(model, images: torch.Tensor, size: int, channels: int) -> dict[str, torch.Tensor]:
    tf = EvalTransform(size, channels)
    feats, embs = [], []
    for i in range(0, len(images), 512):
        x = tf(images[i : i + 512])
        f = model.features(x)
        feats.append(f)
        embs.append(model.head(f))
    f, e = torch.cat(feats), torch.cat(embs)
    return {"backbone": f, "embedding": e, "embedding_l2": F.normalize(e, dim=-1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tag", required=True)
    p.add_argument("--out", type=Path, default=Path("runs/fairness_diag/diag.jsonl"))
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cfg = load_config(
        args.config,
        [*args.overrides, f"name=diag_{args.tag}", "output_dir=runs/fairness_diag"],
    )
    trainer = Trainer(cfg)
    summary = trainer.fit(evaluate=False)
    t_train = time.perf_counter() - t0
    model = trainer.model.eval()
    style = cfg.data.synthetic_style
    # validation: other TRAINING images, mark independent of the class
    full = load_synthetic_attr("train", 0.5, style, seed=0)
    used = set(np.asarray(trainer.data.train.ids).tolist())
    free = np.array([i for i in range(len(full.labels)) if i not in used])
    val_rows = np.sort(np.random.default_rng(1234).choice(free, N_VAL, replace=False))
    tr = trainer.data.train
    tr_codes = np.asarray(tr.attrs)[:, 0]
    size, ch = trainer.data.image_size, trainer.data.channels
    tr_enc = _encode(model, torch.as_tensor(tr.images), size, ch)
    va_enc = _encode(model, full.images[val_rows], size, ch)
    va_a = full.attrs[val_rows].numpy()
    va_y = full.labels[val_rows].numpy()
    out: dict = {"tag": args.tag, "config": args.config, "overrides": args.overrides}
    for where in ("backbone", "embedding", "embedding_l2"):
        r = leakage_probe(tr_enc[where].numpy(), tr_codes, va_enc[where].numpy(), va_a, seed=0)
        out[f"leak_{where}"] = round(r["accuracy"], 4)
        # share of the total variance that lies along the group-mean difference (how *large*
        # the attribute signal is, as opposed to how decodable it is)
        x = va_enc[where].double()
        diff = x[va_a == 1].mean(0) - x[va_a == 0].mean(0)
        between = float((diff @ diff) / 4)
        out[f"mark_var_share_{where}"] = round(between / float(x.var(0).sum()), 4)
    cls = class_embeddings(lambda t: model.encode_text(t), tr.class_names, prompt_templates())
    with torch.no_grad():
        pred = (va_enc["embedding_l2"] @ cls.T).argmax(1).numpy()
    out["zs_acc"] = round(float((pred == va_y).mean()), 4)
    gaps = [abs((pred[va_a == 1] == c).mean() - (pred[va_a == 0] == c).mean()) for c in range(10)]
    out["zs_dpd_mean"] = round(float(np.mean(gaps)), 4)
    rec = summary.get("final", summary) if isinstance(summary, dict) else {}
    out["adv_logs"] = {
        k: round(float(v), 4)
        for k, v in (trainer.last_record or rec).items()
        if k.startswith(("adv/", "loss/", "mean_gap/", "fisher_gap/", "conditional_gap/"))
        and isinstance(v, (int, float))
    }
    out["seconds"] = round(time.perf_counter() - t0)
    out["train_seconds"] = round(t_train)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.write(json.dumps(out) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

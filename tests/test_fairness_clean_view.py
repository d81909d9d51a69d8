"""``fairness.view=clean`` and ``fairness.refit_every_epochs`` through the real trainer.

With light augmentation (random crops) the contrastive views differ from the clean image; the
adversary must see the model's embedding of the *evaluation transform* of the batch (computed
here by hand: uint8 / 255, then (x - 0.5) / 0.5), in the encoder's graph, so the encoder receives
exactly ``weight * d KL(uniform || D(z)) / d theta`` from the adversarial term.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from debiascl.config import load_config
from debiascl.errors import ConfigError, TrainingError
from debiascl.objectives import StepContext
from debiascl.train.trainer import Trainer


def _trainer(tmp_path: Path, *extra: str) -> Trainer:
    cfg = load_config(
        "synth_attr_adfair",
        [
            "data.train_size=256",
            "data.test_size=64",
            "data.augment=light",
            "model.text_encoder=bag_of_words",
            "model.width=8",
            "model.embed_dim=16",
            "model.proj_hidden_dim=32",
            "train.epochs=2",
            "train.batch_size=64",
            "train.threads=1",
            "fairness.terms=[{name: adversary, hidden_dim: 16}]",
            f"output_dir={tmp_path}",
            "name=cv",
            *extra,
        ],
    )
    return Trainer(cfg)


def _clean_by_hand(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The model's embedding of the evaluation transform, written out (no EvalTransform)."""
    x = (images.double() / 255.0 - 0.5) / 0.5
    return model.encode_image(x.float())


def _ctx() -> StepContext:
    return StepContext(epoch=0, step=0, training=True, progress=0.0)


def test_adversary_sees_clean_embedding(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, "fairness.view=clean")
    batch = next(iter(tr.train_loader))
    seen: dict[str, torch.Tensor] = {}
    core_term = tr.fairness.terms["adversary"].core.encoder_term
    adapter_term = tr.fairness.forward

    def spy_core(z, *args, **kwargs):
        seen["z"] = z.detach().clone()
        return core_term(z, *args, **kwargs)

    def spy_adapter(a, b, batch, ctx, clean=None):
        seen["a"] = a.detach().clone()
        return adapter_term(a, b, batch, ctx, clean=clean)

    tr.fairness.terms["adversary"].core.encoder_term = spy_core
    tr.fairness.forward = spy_adapter
    ref_model = copy.deepcopy(tr.model).train()  # parameters before the step, BN batch stats
    with torch.no_grad():
        expected = F.normalize(_clean_by_hand(ref_model, batch["image"]), dim=-1)
    tr.model.train()
    tr.train_step(batch, _ctx())
    z = seen["z"]
    assert z.shape == expected.shape == (64, 16)
    torch.testing.assert_close(z, expected, rtol=1e-4, atol=1e-5)
    # ... and not the augmented (cropped) view the contrastive loss used
    assert (z - F.normalize(seen["a"], dim=-1)).abs().max() > 1e-2


def test_adversarial_gradient_reaches_encoder_through_clean_view(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, "fairness.view=clean", "fairness.balance=none")
    tr.model.train()
    batch = next(iter(tr.train_loader))
    a, b = tr._embed(batch)
    clean = tr._embed_clean(batch)
    # only the clean embedding carries the graph: the whole encoder gradient comes from it
    terms, _ = tr.fairness(a.detach(), b.detach(), batch, _ctx(), clean=clean)
    term = terms["adversary"]
    enc = [p for p in tr.model.encoder.parameters()]
    grads = torch.autograd.grad(term, enc, allow_unused=True)
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # independent reference: weight * mean_i (-(1/K) sum_k log softmax(D(z_i))_k - log K)
    disc = tr.fairness.terms["adversary"].core.discriminator
    z = F.normalize(_clean_by_hand(tr.model, batch["image"]), dim=-1)
    logp = torch.log_softmax(disc(z)["synthetic_mark"].double(), dim=-1)
    keep = batch["attrs"][:, 0] >= 0
    ref = tr.cfg.fairness.terms[0].weight * (-logp[keep].mean(-1) - math.log(2)).mean()
    ref_grads = torch.autograd.grad(ref, enc)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r.float(), rtol=1e-3, atol=1e-6)


def test_clean_view_is_required_and_checked(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, "fairness.view=clean")
    batch = next(iter(tr.train_loader))
    a, b = tr._embed(batch)
    with pytest.raises(TrainingError, match="view=clean"):
        tr.fairness(a, b, batch, _ctx())
    with pytest.raises(ConfigError, match="on=image or feature"):
        _trainer(tmp_path, "fairness.view=clean", "fairness.on=text")


def test_default_view_is_augmented(tmp_path: Path) -> None:
    tr = _trainer(tmp_path)
    assert tr.eval_transform is None and tr.fairness.view == "augmented"


def test_refit_fits_a_fresh_discriminator_once_per_epoch(tmp_path: Path) -> None:
    tr = _trainer(
        tmp_path,
        "fairness.view=clean",
        "fairness.terms=[{name: adversary, hidden_dim: 16, refit_every_epochs: 1, "
        "refit_steps: 100, standardize: true, lr: 0.01}]",
    )
    adv = tr.fairness.terms["adversary"]
    disc = adv.core.discriminator
    tr.model.train()
    for batch in tr.train_loader:  # one epoch, so BN running statistics are meaningful
        tr.train_step(batch, _ctx())
    assert adv._maybe_refit(0) == {}  # never before epoch k
    before = [p.detach().clone() for p in disc.parameters()]
    rng = torch.get_rng_state()
    logs = adv._maybe_refit(1)
    assert torch.equal(rng, torch.get_rng_state())  # the training RNG stream is untouched
    assert int(adv.last_refit_epoch) == 1
    assert any(not torch.equal(p, q) for p, q in zip(before, disc.parameters(), strict=True))
    acc = logs["adv/synthetic_mark/refit_acc"]
    assert 0.0 <= acc <= 1.0 and "adv/synthetic_mark/refit_weighted_acc" in logs
    # the refitted (standardising) D reads the mark from the clean embeddings it was fitted on
    with torch.no_grad():
        x = (tr.data.train.images.float() / 255 - 0.5) / 0.5
        tr.model.eval()
        z = F.normalize(tr.model.encode_image(x), dim=-1)
        hit = disc(z)["synthetic_mark"].argmax(-1) == tr.data.train.attrs[:, 0]
    assert float(hit.float().mean()) > 0.6
    assert adv._maybe_refit(1) == {}  # once per epoch (checkpointed with the adversary)
    assert "last_refit_epoch" in adv.state_dict()


def test_refit_needs_in_memory_images(tmp_path: Path) -> None:
    from debiascl.fairness.adversary import AttributeSpec
    from debiascl.fairness.terms import FAIRNESS_TERMS, TermSetup, parse_term_settings

    settings = parse_term_settings({"name": "adversary", "refit_every_epochs": 1})
    setup = TermSetup([AttributeSpec("mark", 2)], input_dim=4)  # no training_set
    with pytest.raises(ConfigError, match="in-memory"):
        FAIRNESS_TERMS.get("adversary")(settings, setup)
    with pytest.raises(ConfigError, match="in-memory"):  # on=text has no image rows to refit
        _trainer(tmp_path, "fairness.on=text",
                 "fairness.terms=[{name: adversary, refit_every_epochs: 1}]")  # fmt: skip

"""The learned adversary (AdFair-CLIP, MICCAI 2025): term ``adversary``.

Wraps :class:`~debiascl.fairness.adversary.AdversarialFairness` (discriminator, its own Adam
optimiser, gradient reversal or alternating updates). ``method=alternating`` runs ``disc_steps``
discriminator steps on the detached rows before the encoder term; ``method=reversal`` returns a
term that also trains the discriminator, whose own optimiser :meth:`AdversaryTerm.after_step`
applies (through the encoder's GradScaler under fp16, averaged over DDP ranks).

``refit_every_epochs=k`` (> 0): at the first step of epochs k, 2k, ... the discriminator is
re-initialised and fitted for ``refit_steps`` Adam steps to the current clean rows of the whole
training set (``TermSetup.training_set``), so it reads what a fresh probe would read instead of
lagging the encoder. Seeded by the epoch (the training RNG stream is untouched), identical on
every rank. Logs ``adv/...`` (the discriminator's CE and accuracy, the weight).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from debiascl.errors import ConfigError
from debiascl.fairness.adversary import AdversarialFairness
from debiascl.fairness.terms.base import (
    FairnessTerm,
    TermInputs,
    TermSettings,
    TermSetup,
    register_term,
)


@register_term("adversary")
class AdversaryTerm(FairnessTerm):
    """A discriminator predicts the attributes; the encoder is trained to defeat it."""

    class Settings(TermSettings):
        name: Literal["adversary"]
        method: Literal["reversal", "alternating"] = "reversal"
        objective: Literal["cross_entropy", "confusion"] = "confusion"
        hidden_dim: int = Field(128, ge=1, description="discriminator MLP width")
        layers: int = Field(2, ge=0, description="hidden layers of the MLP (0: linear)")
        standardize: bool = Field(
            False, description="batch-standardise the discriminator's input (no affine)"
        )
        lr: float = Field(1e-3, gt=0, description="discriminator learning rate (own Adam)")
        disc_steps: int = Field(1, ge=1, description="discriminator steps per encoder step")
        refit_every_epochs: int = Field(
            0, ge=0, description="refit a fresh discriminator every k epochs (0: never)"
        )
        refit_steps: int = Field(200, ge=1, description="Adam steps of each refit (256 rows)")

    def __init__(self, settings: Settings, setup: TermSetup) -> None:
        super().__init__(settings, setup)
        s = settings
        self.core = AdversarialFairness(
            int(setup.input_dim),
            self.attributes,
            weight=s.weight,
            method=s.method,
            objective=s.objective,
            hidden_dim=s.hidden_dim,
            layers=s.layers,
            lr=s.lr,
            disc_steps=s.disc_steps,
            schedule=s.schedule,
            warmup_epochs=s.warmup_epochs,
            ramp_epochs=s.ramp_epochs,
            standardize=s.standardize,
        )
        self.refit_every_epochs = int(s.refit_every_epochs)
        self.refit_steps = int(s.refit_steps)
        self._training_set = setup.training_set
        self._sample_weights = setup.sample_weights
        if self.refit_every_epochs > 0:
            if setup.training_set is None:
                raise ConfigError(
                    "fairness term adversary: refit_every_epochs needs an in-memory training "
                    "set with images (e.g. dataset=synthetic_attr) and fairness.on=image or "
                    "feature; set it to 0 for this data"
                )
            # the last epoch refitted (checkpointed, so a resumed run does not refit twice)
            self.register_buffer("last_refit_epoch", torch.tensor(-1))

    @property
    def discriminator(self) -> torch.nn.Module:
        return self.core.discriminator

    def forward(self, x: TermInputs) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        logs: dict[str, float] = {}
        if self.refit_every_epochs > 0 and x.training:
            logs.update(self._maybe_refit(x.step_epoch))
        if self.core.method == "alternating":
            for _ in range(self.core.disc_steps):
                logs.update(self.core.discriminator_step(x.z.detach().float(), x.attrs, x.weights))
        term, tlogs = self.core.encoder_term(x.z, x.attrs, x.epoch, x.weights)
        logs.update(tlogs)
        return {self.name: term}, logs

    def after_step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """reversal: apply D's optimiser to the gradients of the shared backward."""
        self.core.step(scaler)

    def _maybe_refit(self, epoch: int) -> dict[str, float]:
        k = self.refit_every_epochs
        if epoch < k or epoch % k != 0 or int(self.last_refit_epoch) == epoch:
            return {}
        self.last_refit_epoch.fill_(epoch)
        assert self._training_set is not None
        z, attrs, labels = self._training_set()
        device = self.last_refit_epoch.device
        z, attrs = z.to(device), attrs.to(device)
        disc = self.core.discriminator
        with torch.random.fork_rng(devices=[]):  # the training RNG stream stays untouched
            torch.manual_seed(10_007 * (epoch + 1))
            for m in disc.modules():
                if m is not disc and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        self.core.optimizer.state.clear()
        gen = torch.Generator().manual_seed(epoch)
        n = z.shape[0]
        logs: dict[str, float] = {}
        for step in range(self.refit_steps):
            rows = torch.randint(n, (min(256, n),), generator=gen).to(device)
            ba = attrs[rows]
            bl = None if labels is None else torch.as_tensor(labels)[rows.cpu()]
            w = self._sample_weights(bl, ba) if self._sample_weights is not None else None
            out = self.core.discriminator_step(z[rows], ba, w)
            if step >= self.refit_steps - 10:  # accuracy of the last 10 refit steps
                for key, v in out.items():
                    if key.endswith("disc_acc") or key.endswith("disc_weighted_acc"):
                        name = key.replace("disc_", "refit_")
                        logs[name] = logs.get(name, 0.0) + v / 10
        return logs

"""AdFair-CLIP adversarial feature intervention (DESIGN 3.5; AdFair-CLIP, MICCAI 2025).

A discriminator D (an MLP with one softmax head per sensitive attribute) tries to predict the
attributes a from the embedding z; the encoder is trained to defeat it:
``min_enc max_D  L_contrastive - lambda_adv * CE(D(z), a)``.

Two training schemes:

* ``method="reversal"`` (one backward pass; Ganin & Lempitsky, ICML 2015): the term returned by
  :meth:`AdversarialFairness.encoder_term` trains D to predict a, and the encoder receives the
  adversarial gradient. With ``objective="cross_entropy"`` this is literally a gradient-reversal
  layer: ``CE(D(GRL_lambda(z)), a)`` gives D the gradient of CE and z the gradient
  ``-lambda * dCE/dz``. After ``loss.backward()`` call :meth:`AdversarialFairness.step` to apply
  D's own optimiser (own learning rate).
* ``method="alternating"``: the caller runs ``disc_steps`` calls of
  :meth:`AdversarialFairness.discriminator_step` on detached embeddings (only D changes), then adds
  :meth:`encoder_term`, which gives gradient to the encoder only (D's parameters are used through
  detached copies, so the encoder step never changes D).

Encoder objectives (what the encoder minimises, scaled by the weight lambda_adv):

* ``"cross_entropy"``: ``-CE(D(z), a)`` (plain maximisation of D's loss). Unbounded below: the
  encoder can push D's loss to infinity by making D confidently *wrong*, which still encodes the
  attribute (inverted).
* ``"confusion"``: ``KL(uniform || softmax(D(z)))`` = CE(uniform, p) - log K, bounded below by 0
  and minimal exactly when D's output is uniform, i.e. D cannot tell the groups apart.

Only samples with an attribute label (code >= 0; -1 = missing) contribute, per attribute; samples
without labels still take part in the contrastive term, which the caller computes as usual.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from debiascl import distributed
from debiascl.errors import ConfigError, DataError
from debiascl.fairness.penalties import confusion_loss, masked_cross_entropy
from debiascl.numerics import argmax_share  # disc accuracy: ties count 1/m (eval.ties rule)


# ----------------------------------------------------------------------------- gradient reversal
class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = float(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``x`` in the forward pass; gradient ``-scale * g`` in the backward pass."""
    return GradientReversal.apply(x, scale)


# ----------------------------------------------------------------------------- discriminator
@dataclass(frozen=True)
class AttributeSpec:
    """A sensitive attribute the discriminator predicts: its name and number of values (>= 2)."""

    name: str
    num_classes: int


class Discriminator(nn.Module):
    """MLP trunk + one linear head per attribute: z (n, D) -> {name: logits (n, K_name)}.

    ``standardize=True`` puts a parameter-free batch standardisation (``BatchNorm1d`` without
    affine parameters, batch statistics in training mode) in front of the trunk. Without it the
    encoder can "confuse" D by shrinking the spread of the embedding along the attribute
    direction: D's fixed weights then see a weak signal, while any probe that standardises its
    inputs (like the leakage probe) still reads the attribute perfectly. With it D is invariant to
    such rescaling, so the encoder has to remove the information, not just shrink it.
    ``layers=0`` gives a linear discriminator (heads directly on the input).
    """

    def __init__(
        self,
        in_dim: int,
        attributes: Sequence[AttributeSpec],
        hidden_dim: int = 128,
        layers: int = 2,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        if standardize:
            blocks.append(nn.BatchNorm1d(in_dim, affine=False))
        d = in_dim
        for _ in range(layers):
            blocks += [nn.Linear(d, hidden_dim), nn.ReLU()]
            d = hidden_dim
        self.trunk = nn.Sequential(*blocks)
        self.heads = nn.ModuleDict({a.name: nn.Linear(d, a.num_classes) for a in attributes})

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(z)
        return {name: head(h) for name, head in self.heads.items()}


# ----------------------------------------------------------------------------- weight schedule
def adversarial_weight(
    epoch: float, weight: float, schedule: str, warmup_epochs: float, ramp_epochs: float
) -> float:
    """lambda_adv at (fractional) ``epoch``: 0 before ``warmup_epochs``, then

    * ``constant``: ``weight``;
    * ``linear``: rises linearly to ``weight`` over ``ramp_epochs``;
    * ``dann``: ``weight * (2 / (1 + exp(-10 p)) - 1)`` with p = progress over ``ramp_epochs``
      (Ganin & Lempitsky 2015).
    """
    t = epoch - warmup_epochs
    if t < 0:
        return 0.0
    if schedule == "constant" or ramp_epochs <= 0:
        return weight
    p = min(t / ramp_epochs, 1.0)
    if schedule == "linear":
        return weight * p
    if schedule == "dann":
        return weight * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)
    raise ConfigError(f"unknown adversarial schedule {schedule!r}; use constant, linear or dann")


# ----------------------------------------------------------------------------- the module
class AdversarialFairness(nn.Module):
    """Owns the discriminator, its optimiser and the adversarial weight schedule.

    Args:
        embed_dim: D of the embeddings the adversary sees.
        attributes: the sensitive attributes (name, number of values); their order is the column
            order of an (n, A) ``attrs`` tensor.
        weight: lambda_adv after warm-up.
        method: ``"reversal"`` or ``"alternating"`` (see the module docstring).
        objective: ``"confusion"`` or ``"cross_entropy"``.
        hidden_dim, layers: discriminator MLP size.
        lr, weight_decay: discriminator optimiser (Adam), separate from the encoder's.
        disc_steps: discriminator steps per encoder step (alternating).
        standardize: batch-standardise D's input (see :class:`Discriminator`).
        schedule, warmup_epochs, ramp_epochs: see :func:`adversarial_weight`.

    Trainer usage::

        adv = AdversarialFairness(128, [AttributeSpec("sex", 2)], method="alternating")
        if adv.method == "alternating":
            for _ in range(adv.disc_steps):
                adv.discriminator_step(z.detach(), attrs)
        term, logs = adv.encoder_term(z, attrs, epoch)  # epoch: fractional (epoch + b / steps)
        scaler.scale(loss_contrastive + term).backward()  # fp16 AMP; else a plain backward
        scaler.step(encoder_optimizer)
        adv.step(scaler)  # reversal: applies D's optimiser (unscaled); alternating: no-op
        scaler.update()
    """

    def __init__(
        self,
        embed_dim: int,
        attributes: Sequence[AttributeSpec],
        *,
        weight: float = 1.0,
        method: str = "reversal",
        objective: str = "confusion",
        hidden_dim: int = 128,
        layers: int = 2,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        disc_steps: int = 1,
        schedule: str = "constant",
        warmup_epochs: float = 0.0,
        ramp_epochs: float = 0.0,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        if not attributes:
            raise ConfigError("adversarial fairness needs at least one sensitive attribute")
        for a in attributes:
            if a.num_classes < 2:
                raise ConfigError(
                    f"attribute {a.name!r} has {a.num_classes} value(s); it needs at least 2"
                )
        if method not in ("reversal", "alternating"):
            raise ConfigError(f"unknown method {method!r}; use 'reversal' or 'alternating'")
        if objective not in ("confusion", "cross_entropy"):
            raise ConfigError(
                f"unknown objective {objective!r}; use 'confusion' or 'cross_entropy'"
            )
        adversarial_weight(0.0, weight, schedule, 0.0, 1.0)  # validates the schedule name
        self.attributes = list(attributes)
        self.weight = float(weight)
        self.method = method
        self.objective = objective
        self.disc_steps = int(disc_steps)
        self.schedule = schedule
        self.warmup_epochs = float(warmup_epochs)
        self.ramp_epochs = float(ramp_epochs)
        self.discriminator = Discriminator(embed_dim, attributes, hidden_dim, layers, standardize)
        self.optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=lr, weight_decay=weight_decay
        )

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> dict:
        """The discriminator optimiser's state travels in ``state_dict`` (checkpoints)."""
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    # ------------------------------------------------------------------ helpers
    def current_weight(self, epoch: float) -> float:
        return adversarial_weight(
            epoch, self.weight, self.schedule, self.warmup_epochs, self.ramp_epochs
        )

    def _targets(self, attrs: torch.Tensor | Mapping[str, torch.Tensor], n: int) -> dict:
        if isinstance(attrs, Mapping):
            absent = [a.name for a in self.attributes if a.name not in attrs]
            if absent:
                raise DataError(
                    f"batch lacks sensitive attributes {absent}; add them to the data or "
                    "remove them from fairness.attributes"
                )
            cols = {a.name: torch.as_tensor(attrs[a.name]).long() for a in self.attributes}
        else:
            attrs = torch.as_tensor(attrs).long()
            if attrs.ndim == 1:
                attrs = attrs[:, None]
            if attrs.ndim != 2 or attrs.shape[1] != len(self.attributes):
                raise DataError(
                    f"attrs has shape {tuple(attrs.shape)}; expected ({n}, {len(self.attributes)})"
                    f" for attributes {[a.name for a in self.attributes]}"
                )
            cols = {a.name: attrs[:, j] for j, a in enumerate(self.attributes)}
        for a in self.attributes:
            t = cols[a.name]
            if t.shape[0] != n:
                raise DataError(
                    f"{t.shape[0]} values of attribute {a.name!r} for {n} embeddings; "
                    "pass one attribute row per embedding"
                )
            if bool((t >= a.num_classes).any()) or bool((t < -1).any()):
                raise DataError(
                    f"attribute {a.name!r} has codes outside [-1, {a.num_classes - 1}]; "
                    "use -1 for missing and 0..K-1 for the values"
                )
        return cols

    def _weights(self, sample_weights: torch.Tensor | None, n: int) -> dict:
        if sample_weights is None:
            return dict.fromkeys((a.name for a in self.attributes), None)
        w = torch.as_tensor(sample_weights)
        if w.ndim == 1:
            w = w[:, None]
        if w.shape != (n, len(self.attributes)) or bool((w < 0).any()):
            raise DataError(
                f"sample_weights has shape {tuple(w.shape)}; expected ({n}, "
                f"{len(self.attributes)}) non-negative weights, one column per attribute"
            )
        return {a.name: w[:, j] for j, a in enumerate(self.attributes)}

    def _disc_loss(
        self, logits: dict, targets: dict, weights: dict | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total = 0.0
        logs: dict[str, float] = {}
        for a in self.attributes:
            lg, t = logits[a.name], targets[a.name].to(logits[a.name].device)
            ce = masked_cross_entropy(lg, t, None if weights is None else weights[a.name])
            total = total + ce
            keep = t >= 0
            logs[f"adv/{a.name}/disc_ce"] = float(ce.detach())
            logs[f"adv/{a.name}/labelled"] = float(keep.sum())
            if bool(keep.any()):
                hit = argmax_share(lg[keep].detach()).gather(1, t[keep, None])[:, 0].float()
                logs[f"adv/{a.name}/disc_acc"] = float(hit.mean())
                if weights is not None and weights[a.name] is not None:  # chance 1/K if balanced
                    wk = weights[a.name][keep].to(hit)
                    logs[f"adv/{a.name}/disc_weighted_acc"] = float(
                        (hit * wk).sum() / wk.sum().clamp_min(1e-12)
                    )
        return total, logs  # type: ignore[return-value]

    def _encoder_objective(self, logits: dict, targets: dict, weights: dict) -> torch.Tensor:
        total = 0.0
        for a in self.attributes:
            lg, t = logits[a.name], targets[a.name].to(logits[a.name].device)
            if self.objective == "confusion":
                total = total + confusion_loss(lg, t, weights[a.name])
            else:
                total = total - masked_cross_entropy(lg, t, weights[a.name])
        return total  # type: ignore[return-value]

    def _frozen_logits(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """D(z) with D's parameters detached: gradient flows to z only."""
        params = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, params, (z,))

    # ------------------------------------------------------------------ API
    def encoder_term(
        self,
        z: torch.Tensor,
        attrs: torch.Tensor | Mapping[str, torch.Tensor],
        epoch: float,
        sample_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar to add to the contrastive loss, and logs.

        Args:
            z: (n, D) embeddings (in the encoder's graph).
            attrs: (n, A) integer codes or name -> (n,) codes; -1 = missing.
            epoch: (fractional) epoch for the weight schedule.
            sample_weights: optional (n, A) non-negative per-sample weights of the adversarial
                losses (e.g. :func:`label_balance_table` rows), one column per attribute.

        ``reversal``: the term also carries D's own loss (D learns in the same backward pass;
        apply it with :meth:`step`). ``alternating``: the term reaches the encoder only.
        """
        targets = self._targets(attrs, z.shape[0])
        weights = self._weights(sample_weights, z.shape[0])
        w = self.current_weight(epoch)
        if self.method == "reversal" and self.objective == "cross_entropy":
            disc_loss, logs = self._disc_loss(
                self.discriminator(grad_reverse(z, w)), targets, weights
            )
            term = disc_loss
            logs["adv/encoder_objective"] = -logs_sum(logs, "disc_ce")
        else:
            enc = self._encoder_objective(self._frozen_logits(z), targets, weights)
            logs = {"adv/encoder_objective": float(enc.detach())}
            term = w * enc
            if self.method == "reversal":
                disc_loss, dlogs = self._disc_loss(self.discriminator(z.detach()), targets, weights)
                term = term + disc_loss
                logs.update(dlogs)
        logs["adv/weight"] = w
        return term, logs

    def step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """Apply the discriminator's optimiser to gradients left by ``encoder_term`` (reversal).

        Gradients are averaged over DDP ranks first. A no-op for the alternating method, whose
        encoder term leaves D without gradient.

        Args:
            scaler: the ``GradScaler`` that scaled the backward these gradients come from (fp16
                AMP). D's gradients are then unscaled and the step skipped on inf/NaN, like the
                encoder's; call before ``scaler.update()``. None: a plain optimiser step.
        """
        if self.method != "reversal":
            return
        self._reduce_grads()
        if scaler is not None:
            scaler.unscale_(self.optimizer)
            scaler.step(self.optimizer)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def discriminator_step(
        self,
        z: torch.Tensor,
        attrs: torch.Tensor | Mapping[str, torch.Tensor],
        sample_weights: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One optimiser step of D on detached embeddings z (n, D); returns logs."""
        targets = self._targets(attrs, z.shape[0])
        weights = self._weights(sample_weights, z.shape[0])
        self.optimizer.zero_grad(set_to_none=True)
        loss, logs = self._disc_loss(self.discriminator(z.detach()), targets, weights)
        loss.backward()
        self._reduce_grads()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return logs

    def _reduce_grads(self) -> None:
        if not distributed.is_distributed():
            return
        for p in self.discriminator.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(distributed.all_reduce_mean(p.grad))


def logs_sum(logs: Mapping[str, float], suffix: str) -> float:
    """Sum of the log entries whose key ends with ``suffix``."""
    return float(sum(v for k, v in logs.items() if k.endswith(suffix)))

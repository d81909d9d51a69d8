"""Adapter between the trainer and :class:`~debiascl.fairness.adversary.AdversarialFairness`.

The trainer (``debiascl.train.trainer``) calls::

    adv = build_adversary(cfg, model, device, data)          # None unless fairness.enabled
    term, logs = adv.training_term(a, b, batch, ctx)          # before backward
    ...backward, encoder optimiser step...
    logs |= adv.after_encoder_step(a.detach(), b.detach(), batch, ctx)
    record |= adv.epoch_logs()                                # once per epoch

``a``/``b`` are the two embeddings of the contrastive step (image/text in ``image_text`` mode, two
views in ``image_image`` mode). ``fairness.on`` picks what the adversary sees: ``image`` (``a``;
both views in ``image_image`` mode), ``text`` (``b``, ``image_text`` only) or ``feature`` (the
pre-projection backbone feature of the image tower). Attributes come from ``batch["attrs"]``
((b, n_attr) codes, -1 missing) by the column names of the data.

``fairness.on=feature`` needs no trainer change: the adapter registers a forward hook on
``model.encoder`` (the image backbone of both model kinds) that keeps the output of the latest
forward pass run with gradients enabled, i.e. the training step's backbone feature of the batch
whose embeddings ``a``/``b`` the trainer passes in (both views concatenated in ``image_image``
mode, matching the row order of ``torch.cat([a, b])``). The feature is used once and dropped.
It is not L2-normalised: the projection head reads the raw feature, and so does the leakage probe.

Alternating: ``training_term`` first runs ``fairness.disc_steps`` discriminator steps on the
detached embeddings (own Adam, ``fairness.lr``), then returns the encoder term, so the order is
"k discriminator steps, then one encoder step". Reversal: the returned term also trains the
discriminator; by default the trainer's optimiser steps it (the trainer puts ``discriminator`` in
its parameter list, so it shares ``optim.lr``); with ``own_reversal_step=True`` the trainer
leaves it out and :meth:`after_encoder_step` applies the discriminator's own optimiser. Under DDP
the discriminator's gradients are averaged over ranks in both cases.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from debiascl import distributed
from debiascl.config.schema import RunConfig
from debiascl.errors import ConfigError, DataError, TrainingError
from debiascl.fairness.adversary import (
    AdversarialFairness,
    group_mean_gap,
    label_balance_table,
)
from debiascl.fairness.adversary import build_adversary as _build_core


class TrainerAdversary(nn.Module):
    """Owns an :class:`AdversarialFairness` and maps trainer batches onto it."""

    def __init__(
        self,
        core: AdversarialFairness,
        columns: Sequence[int],
        on: str,
        mode: str,
        own_reversal_step: bool = False,
        normalize: bool = False,
        feature_source: nn.Module | None = None,
        balance_table: torch.Tensor | None = None,
        mean_gap_weight: float = 0.0,
        mean_gap_whiten: bool = False,
    ) -> None:
        super().__init__()
        self.mean_gap_whiten = bool(mean_gap_whiten)
        self.mean_gap_weight = float(mean_gap_weight)
        # (C, A, K_max) P(a)/P(a|y) weights per attribute column (fairness.balance=label)
        self.balance_table = balance_table
        self.normalize = normalize
        self.core = core
        self.columns = list(columns)
        self.on = on
        self.mode = mode
        self.own_reversal_step = own_reversal_step
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._feature: torch.Tensor | None = None
        self._hook = None
        if on == "feature":
            if feature_source is None:
                raise ConfigError(
                    "fairness.on=feature needs the model's image backbone (model.encoder)"
                )
            self._hook = feature_source.register_forward_hook(self._keep_feature)
        if core.method == "reversal" and not own_reversal_step and distributed.is_distributed():
            # the discriminator is outside DDP: average its gradients here, in backward order
            # (identical on every rank, since every rank runs the same discriminator graph)
            for p in core.discriminator.parameters():
                p.register_hook(lambda g: distributed.all_reduce_mean(g))

    @property
    def discriminator(self) -> nn.Module:
        return self.core.discriminator

    def _keep_feature(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        # only training forwards (gradients on) feed the adversary; evaluation passes do not
        if torch.is_grad_enabled():
            self._feature = output

    def remove_hook(self) -> None:
        """Detach the ``fairness.on=feature`` forward hook from the backbone."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _inputs(
        self, a: torch.Tensor, b: torch.Tensor, batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attrs = batch.get("attrs")
        if attrs is None:
            raise DataError(
                "fairness.enabled needs sensitive attributes in the batch; set "
                "data.attribute_columns (or use dataset=synthetic_attr)"
            )
        attrs = torch.as_tensor(attrs)
        if attrs.ndim == 1:
            attrs = attrs[:, None]
        attrs = attrs[:, self.columns].to(a.device)
        if self.on == "feature":
            feat, self._feature = self._feature, None
            rows = a.shape[0] * (2 if self.mode == "image_image" else 1)
            if feat is None or feat.ndim != 2 or feat.shape[0] != rows:
                raise TrainingError(
                    "fairness.on=feature found no backbone feature of this batch (expected "
                    f"{rows} rows from model.encoder's forward pass); run the model forward "
                    "with gradients enabled before training_term"
                )
            feat = feat.float()
            if self.mode == "image_image":
                return feat, torch.cat([attrs, attrs])
            return feat, attrs
        if self.normalize:  # the direction is what the cosine loss and zero-shot use
            a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        if self.on == "text":
            return b, attrs
        if self.mode == "image_image":  # both views carry the same attributes
            return torch.cat([a, b]), torch.cat([attrs, attrs])
        return a, attrs

    def _sample_weights(
        self, batch: Mapping[str, Any], attrs: torch.Tensor, rows: int
    ) -> torch.Tensor | None:
        """(rows, A) adversary sample weights from the batch's class labels, or None."""
        if self.balance_table is None:
            return None
        labels = batch.get("label")
        if labels is None:
            raise DataError(
                "fairness.balance=label needs class labels in the batch; use labelled data or "
                "fairness.balance=none"
            )
        y = torch.as_tensor(labels).long().to(attrs.device)
        if self.mode == "image_image" and self.on != "text":
            y = torch.cat([y, y])
        if y.shape[0] != rows:
            raise DataError(f"{y.shape[0]} labels for {rows} adversary rows")
        table = self.balance_table.to(attrs.device)
        known = y >= 0
        yc = y.clamp_min(0)
        cols = [
            torch.where(known & (attrs[:, j] >= 0), table[yc, j, attrs[:, j].clamp_min(0)], 1.0)
            for j in range(attrs.shape[1])
        ]
        return torch.stack(cols, 1)

    def _record(self, logs: Mapping[str, float]) -> None:
        for k, v in logs.items():
            self._sums[k] += float(v)
            self._counts[k] += 1

    def training_term(
        self, a: torch.Tensor, b: torch.Tensor, batch: Mapping[str, Any], ctx: Any
    ) -> tuple[torch.Tensor, dict[str, float]]:
        z, attrs = self._inputs(a, b, batch)
        weights = self._sample_weights(batch, attrs, z.shape[0])
        epoch = float(ctx.epoch) if getattr(ctx, "training", True) else 0.0
        logs: dict[str, float] = {}
        if self.core.method == "alternating":
            for _ in range(self.core.disc_steps):
                logs.update(self.core.discriminator_step(z.detach().float(), attrs, weights))
        term, tlogs = self.core.encoder_term(z, attrs, epoch, weights)
        logs.update(tlogs)
        if self.mean_gap_weight > 0:
            gap = z.new_zeros(())
            for j, spec in enumerate(self.core.attributes):
                wj = None if weights is None else weights[:, j]
                g = group_mean_gap(z, attrs[:, j], spec.num_classes, wj, self.mean_gap_whiten)
                logs[f"adv/{spec.name}/mean_gap"] = float(g.detach())
                gap = gap + g
            # same warm-up/schedule as the adversarial weight (relative to fairness.weight)
            scale = self.core.current_weight(epoch) / self.core.weight if self.core.weight else 1.0
            term = term + self.mean_gap_weight * scale * gap
        self._record(logs)
        return term, logs

    def after_encoder_step(
        self, a: torch.Tensor, b: torch.Tensor, batch: Mapping[str, Any], ctx: Any
    ) -> dict[str, float]:
        if self.core.method == "reversal" and self.own_reversal_step:
            self.core.step()
        return {}

    def log_state(self) -> dict[str, dict[str, float]]:
        """Copy of the epoch's running log sums (saved in mid-epoch checkpoints)."""
        return {"sums": dict(self._sums), "counts": dict(self._counts)}

    def load_log_state(self, state: Mapping[str, Mapping[str, float]]) -> None:
        """Restore sums saved by :meth:`log_state`."""
        self._sums.clear()
        self._sums.update(state.get("sums", {}))
        self._counts.clear()
        self._counts.update({k: int(v) for k, v in state.get("counts", {}).items()})

    def epoch_logs(self) -> dict[str, float]:
        """Means over the epoch's steps of the adversary logs; resets the accumulators."""
        out = {f"{k}_epoch": self._sums[k] / self._counts[k] for k in self._sums}
        self._sums.clear()
        self._counts.clear()
        return out


def build_adversary(
    cfg: RunConfig,
    model: nn.Module,
    device: torch.device | str,
    data: Any | None = None,
    own_reversal_step: bool = False,
) -> TrainerAdversary | None:
    """The trainer's adversary for ``cfg`` (None unless ``cfg.fairness.enabled``).

    ``data`` (a :class:`debiascl.data.build.DataBundle`) gives the attribute column names and
    vocabularies; without it, the columns are ``cfg.data.attribute_columns`` and every attribute
    is taken as binary.
    """
    fc = cfg.fairness
    if not fc.enabled:
        return None
    if fc.on == "feature" and not isinstance(getattr(model, "encoder", None), nn.Module):
        raise ConfigError(
            "fairness.on=feature needs a model with an image backbone at model.encoder; use "
            "fairness.on=image or text"
        )
    if fc.on == "text" and cfg.data.mode != "image_text":
        raise ConfigError("fairness.on=text needs data.mode=image_text")
    names = list(getattr(data, "attr_names", None) or cfg.data.attribute_columns)
    classes: dict[str, int] = {}
    for j, name in enumerate(names):
        vocab = (getattr(data, "attr_vocab", None) or {}).get(name)
        if vocab:
            classes[name] = len(vocab)
        elif data is not None and getattr(data.train, "attrs", None) is not None:
            classes[name] = max(2, int(data.train.attrs[:, j].max()) + 1)
        else:
            classes[name] = 2
    in_dim = cfg.model.embed_dim
    if fc.on == "feature":
        in_dim = int(getattr(model.encoder, "feature_dim", 0)) or _probe_feature_dim(model, cfg)
    core = _build_core(fc, in_dim, classes)
    assert core is not None
    columns = [names.index(a) for a in fc.attributes]
    table = None
    if getattr(fc, "balance", "none") == "label":
        table = _balance_tables(data, columns, [classes[a] for a in fc.attributes])
    normalize = bool(getattr(fc, "normalize", False))
    return TrainerAdversary(
        core,
        columns,
        fc.on,
        cfg.data.mode,
        own_reversal_step,
        normalize=normalize,
        feature_source=model.encoder if fc.on == "feature" else None,
        balance_table=table,
        mean_gap_weight=float(getattr(fc, "mean_gap_weight", 0.0)),
        mean_gap_whiten=bool(getattr(fc, "mean_gap_whiten", False)),
    ).to(device)


def _balance_tables(data: Any, columns: Sequence[int], values: Sequence[int]) -> torch.Tensor:
    """(C, A, K_max) :func:`label_balance_table` of every adversary attribute, from the data."""
    train = getattr(data, "train", None)
    labels = getattr(train, "labels", None)
    attrs = getattr(train, "attrs", None)
    if labels is None or attrs is None or not bool((torch.as_tensor(labels) >= 0).any()):
        raise ConfigError(
            "fairness.balance=label needs class labels and attributes in the training data; "
            "use labelled data or fairness.balance=none"
        )
    labels = torch.as_tensor(labels).long()
    attrs = torch.as_tensor(attrs).long()
    if attrs.ndim == 1:
        attrs = attrs[:, None]
    n_cls = int(labels.max()) + 1
    k_max = max(values)
    out = torch.ones(n_cls, len(columns), k_max)
    for j, (col, k) in enumerate(zip(columns, values, strict=True)):
        out[:, j, :k] = label_balance_table(labels, attrs[:, col], n_cls, k)
    return out


@torch.no_grad()
def _probe_feature_dim(model: nn.Module, cfg: RunConfig) -> int:
    """Backbone feature width from one dummy forward (encoders without ``feature_dim``)."""
    p = next(model.encoder.parameters())
    size = cfg.data.image_size
    was = model.encoder.training
    model.encoder.eval()
    out = model.encoder(torch.zeros(1, cfg.data.channels, size, size, device=p.device))
    model.encoder.train(was)
    return int(out.shape[-1])

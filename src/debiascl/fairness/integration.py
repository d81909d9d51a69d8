"""Adapter between the trainer and :class:`~debiascl.fairness.adversary.AdversarialFairness`.

The trainer (``debiascl.train.trainer``) calls::

    adv = build_adversary(cfg, model, device, data)          # None unless fairness.enabled
    term, logs = adv.training_term(a, b, batch, ctx, clean)   # before backward
    ...scaler.scale(loss + term).backward(), scaler.step(encoder optimiser)...
    logs |= adv.after_encoder_step(a.detach(), b.detach(), batch, ctx, scaler=scaler)
    scaler.update()                                           # after every optimiser stepped
    record |= adv.epoch_logs()                                # once per epoch

``ctx.fractional_epoch`` (``epoch + b / steps_per_epoch``) drives the weight schedule
(``fairness.warmup_epochs``/``ramp_epochs``), so a ramp moves every step, not once per epoch.

``a``/``b`` are the two embeddings of the contrastive step (image/text in ``image_text`` mode, two
views in ``image_image`` mode). ``fairness.on`` picks what the adversary sees: ``image`` (``a``;
both views in ``image_image`` mode), ``text`` (``b``, ``image_text`` only) or ``feature`` (the
pre-projection backbone feature of the image tower). Attributes come from ``batch["attrs"]``
((b, n_attr) codes, -1 missing) by the column names of the data.

``fairness.adversary_view=clean``: the trainer also embeds the *un-augmented* batch (evaluation
transform, one extra image-tower forward through the same model, in the graph) and passes it as
``clean`` (b, D); the adversary and the mean-gap penalty then see it instead of the augmented
view(s) (one row per sample, also in ``image_image`` mode). Random crops can cut an attribute
(e.g. a border) away from the training views, while the audit's probes read clean images. With
``on=feature`` the hooked backbone feature is then that of the clean forward (it runs last).

``fairness.refit_every_epochs=k`` (> 0): at the first step of epochs k, 2k, ... the discriminator
is re-initialised and fitted for ``fairness.refit_steps`` Adam steps to the current clean
embeddings of the whole (in-memory) training set, computed without gradients in eval mode, so it
starts every k epochs from a discriminator that reads what a fresh probe would read instead of
lagging the encoder. Seeded by the epoch (no global RNG use), identical on every DDP rank.

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

from debiascl import distributed
from debiascl.config.schema import RunConfig
from debiascl.errors import ConfigError, DataError, TrainingError
from debiascl.fairness.adversary import (
    AdversarialFairness,
    class_conditional_mean_gap,
    group_mean_gap,
    label_balance_table,
    within_group_covariance,
)
from debiascl.fairness.adversary import build_adversary as _build_core
from debiascl.numerics import unit_rows


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
        mean_gap_conditional: bool = False,
        mean_gap_momentum: float = 0.0,
        mean_gap_shrinkage: float = 0.1,
        num_classes: int = 0,
        input_dim: int = 0,
        view: str = "augmented",
        refit_every_epochs: int = 0,
        refit_steps: int = 200,
        refit_source: tuple[nn.Module, Any, int, int] | None = None,
    ) -> None:
        super().__init__()
        if view not in ("augmented", "clean"):
            raise ConfigError(f"fairness.adversary_view must be augmented or clean, got {view!r}")
        if view == "clean" and on == "text":
            raise ConfigError("fairness.adversary_view=clean needs fairness.on=image or feature")
        self.view = view
        self.refit_every_epochs = int(refit_every_epochs)
        self.refit_steps = int(refit_steps)
        # (model, training set, image size, channels) for refits; a tuple, so not a submodule
        self._refit_source = refit_source
        if self.refit_every_epochs > 0:
            if on == "text":
                raise ConfigError("fairness.refit_every_epochs needs fairness.on=image or feature")
            if refit_source is None or getattr(refit_source[1], "images", None) is None:
                raise ConfigError(
                    "fairness.refit_every_epochs needs an in-memory training set with images "
                    "(e.g. dataset=synthetic_attr); set it to 0 for this data"
                )
            # the last epoch refitted (checkpointed, so a resumed run does not refit twice)
            self.register_buffer("last_refit_epoch", torch.tensor(-1))
        self.mean_gap_whiten = bool(mean_gap_whiten)
        self.mean_gap_weight = float(mean_gap_weight)
        self.mean_gap_conditional = bool(mean_gap_conditional)
        if not 0.0 <= float(mean_gap_momentum) < 1.0:
            raise ConfigError(
                f"fairness.mean_gap_momentum must be in [0, 1), got {mean_gap_momentum}"
            )
        self.mean_gap_momentum = float(mean_gap_momentum)
        if not 0.0 < float(mean_gap_shrinkage) <= 1.0:
            raise ConfigError(
                f"fairness.mean_gap_shrinkage must be in (0, 1], got {mean_gap_shrinkage}"
            )
        self.mean_gap_shrinkage = float(mean_gap_shrinkage)
        if self.mean_gap_whiten and self.mean_gap_momentum > 0 and not mean_gap_conditional:
            if input_dim < 1:
                raise ConfigError("fairness.mean_gap_momentum needs the adversary input_dim")
            # running within-group covariance per attribute (the Fisher gap's metric); 0 steps
            n_att = len(core.attributes)
            self.register_buffer("gap_cov", torch.zeros(n_att, int(input_dim), int(input_dim)))
            self.register_buffer("gap_cov_steps", torch.zeros(n_att))
        if self.mean_gap_conditional:
            if mean_gap_whiten:
                raise ConfigError(
                    "fairness.mean_gap_conditional does not support mean_gap_whiten; "
                    "set one of them to false"
                )
            if num_classes < 2:
                raise ConfigError(
                    "fairness.mean_gap_conditional needs class labels in the training data "
                    "(at least two classes); use labelled data or set it to false"
                )
            k_max = max(spec.num_classes for spec in core.attributes)
            if input_dim < 1:
                raise ConfigError("fairness.mean_gap_conditional needs the adversary input_dim")
            dim = int(input_dim)
            # decayed sums/counts of earlier batches' (class, value) cells, per attribute
            n_att = len(core.attributes)
            self.register_buffer("gap_sums", torch.zeros(n_att, num_classes, k_max, dim))
            self.register_buffer("gap_counts", torch.zeros(n_att, num_classes, k_max))
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

    def _attrs(self, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
        """(b, A) codes of the adversary's attribute columns."""
        attrs = batch.get("attrs")
        if attrs is None:
            raise DataError(
                "fairness.enabled needs sensitive attributes in the batch; set "
                "data.attribute_columns (or use dataset=synthetic_attr)"
            )
        attrs = torch.as_tensor(attrs)
        if attrs.ndim == 1:
            attrs = attrs[:, None]
        return attrs[:, self.columns].to(device)

    @property
    def _doubled(self) -> bool:
        """Whether the adversary's rows are both views (image_image, augmented image/feature)."""
        return self.mode == "image_image" and self.on != "text" and self.view == "augmented"

    def _inputs(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        batch: Mapping[str, Any],
        clean: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attrs = self._attrs(batch, a.device)
        if self.view == "clean" and self.on == "image":
            if clean is None or clean.ndim != 2 or clean.shape[0] != attrs.shape[0]:
                raise TrainingError(
                    "fairness.adversary_view=clean needs the (b, D) embedding of the "
                    "un-augmented batch as training_term(..., clean=...)"
                )
            return (unit_rows(clean) if self.normalize else clean), attrs
        if self.on == "feature":
            feat, self._feature = self._feature, None
            rows = a.shape[0] * (2 if self._doubled else 1)
            if feat is None or feat.ndim != 2 or feat.shape[0] != rows:
                raise TrainingError(
                    "fairness.on=feature found no backbone feature of this batch (expected "
                    f"{rows} rows from model.encoder's forward pass); run the model forward "
                    "with gradients enabled before training_term"
                )
            feat = feat.float()
            if self._doubled:
                return feat, torch.cat([attrs, attrs])
            return feat, attrs
        if self.normalize:  # the direction is what the cosine loss and zero-shot use
            a, b = unit_rows(a), unit_rows(b)
        if self.on == "text":
            return b, attrs
        if self.mode == "image_image":  # both views carry the same attributes
            return torch.cat([a, b]), torch.cat([attrs, attrs])
        return a, attrs

    def _sample_weights(
        self,
        batch: Mapping[str, Any],
        attrs: torch.Tensor,
        rows: int,
        doubled: bool | None = None,
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
        if self._doubled if doubled is None else doubled:
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
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        batch: Mapping[str, Any],
        ctx: Any,
        clean: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Adversarial (+ mean-gap) term to add to the loss, and logs.

        ``clean`` (b, D): the image embedding of the un-augmented batch, in the encoder's graph;
        required with ``adversary_view=clean`` (and ``on=image``), ignored otherwise.
        """
        logs: dict[str, float] = {}
        if self.refit_every_epochs > 0 and getattr(ctx, "training", True):
            logs.update(self._maybe_refit(int(ctx.epoch)))
        z, attrs = self._inputs(a, b, batch, clean)
        weights = self._sample_weights(batch, attrs, z.shape[0])
        epoch = _schedule_epoch(ctx) if getattr(ctx, "training", True) else 0.0
        if self.core.method == "alternating":
            for _ in range(self.core.disc_steps):
                logs.update(self.core.discriminator_step(z.detach().float(), attrs, weights))
        term, tlogs = self.core.encoder_term(z, attrs, epoch, weights)
        logs.update(tlogs)
        if self.mean_gap_weight > 0:
            gap = z.new_zeros(())
            for j, spec in enumerate(self.core.attributes):
                if self.mean_gap_conditional:
                    g = self._conditional_gap(z, attrs, batch, j, spec.num_classes, ctx)
                    logs[f"adv/{spec.name}/mean_gap"] = float(g.detach())
                    gap = gap + g
                    continue
                wj = None if weights is None else weights[:, j]
                metric = self._running_metric(z, attrs[:, j], spec.num_classes, wj, j, ctx)
                g = group_mean_gap(
                    z,
                    attrs[:, j],
                    spec.num_classes,
                    wj,
                    self.mean_gap_whiten,
                    self.mean_gap_shrinkage,
                    metric,
                )
                logs[f"adv/{spec.name}/mean_gap"] = float(g.detach())
                gap = gap + g
            # same warm-up/schedule as the adversarial weight (relative to fairness.weight)
            scale = self.core.current_weight(epoch) / self.core.weight if self.core.weight else 1.0
            term = term + self.mean_gap_weight * scale * gap
        self._record(logs)
        return term, logs

    def _running_metric(
        self,
        z: torch.Tensor,
        target: torch.Tensor,
        k: int,
        weight: torch.Tensor | None,
        j: int,
        ctx: Any,
    ) -> torch.Tensor | None:
        """EMA of the batch within-group covariance of attribute j (None: use the batch's).

        Bias-corrected like Adam's moments (divided by ``1 - m^t``), so the first steps are not
        shrunk towards zero; outside training the state is read, not updated.
        """
        if not hasattr(self, "gap_cov"):
            return None
        m = self.mean_gap_momentum
        if getattr(ctx, "training", True):
            cov = within_group_covariance(z, target, k, weight).to(self.gap_cov)
            self.gap_cov[j] = m * self.gap_cov[j] + (1 - m) * cov
            self.gap_cov_steps[j] += 1
        steps = float(self.gap_cov_steps[j])
        if steps == 0:
            return None
        return self.gap_cov[j] / (1 - m**steps)

    def _conditional_gap(
        self,
        z: torch.Tensor,
        attrs: torch.Tensor,
        batch: Mapping[str, Any],
        j: int,
        k: int,
        ctx: Any,
    ) -> torch.Tensor:
        """Class-conditional gap of attribute j, pooled with the running (decayed) cell sums."""
        labels = batch.get("label")
        if labels is None:
            raise DataError(
                "fairness.mean_gap_conditional needs class labels in the batch; use labelled "
                "data or set it to false"
            )
        y = torch.as_tensor(labels).long().to(z.device)
        if z.shape[0] == 2 * y.shape[0]:  # both views carry the same labels
            y = torch.cat([y, y])
        if y.shape[0] != z.shape[0]:
            raise DataError(f"{y.shape[0]} labels for {z.shape[0]} adversary rows")
        if int(y.max()) >= self.gap_sums.shape[1]:
            raise DataError(
                f"class label {int(y.max())} is out of range for the "
                f"{self.gap_sums.shape[1]} classes of the training data"
            )
        m = self.mean_gap_momentum
        prior = (m * self.gap_sums[j, :, :k], m * self.gap_counts[j, :, :k]) if m > 0 else None
        g, sums, counts = class_conditional_mean_gap(
            z, attrs[:, j], y, k, self.gap_sums.shape[1], *(prior or (None, None))
        )
        if m > 0 and getattr(ctx, "training", True):
            # the running state sees this rank's rows only (no all-reduce): each rank's estimate
            # is already an average over its last ~1/(1-m) batches
            self.gap_sums[j, :, :k] = m * self.gap_sums[j, :, :k] + sums.to(self.gap_sums)
            self.gap_counts[j, :, :k] = m * self.gap_counts[j, :, :k] + counts.to(self.gap_counts)
        return g

    def _maybe_refit(self, epoch: int) -> dict[str, float]:
        """Re-initialise and fit D at the first step of epochs k, 2k, ... (see module doc)."""
        k = self.refit_every_epochs
        if epoch < k or epoch % k != 0 or int(self.last_refit_epoch) == epoch:
            return {}
        self.last_refit_epoch.fill_(epoch)
        model, train, size, channels = self._refit_source  # type: ignore[misc]
        device = self.last_refit_epoch.device
        z = _embed_dataset(model, train.images, size, channels, self.on == "feature", device)
        if self.normalize and self.on != "feature":
            z = unit_rows(z)
        attrs = torch.as_tensor(train.attrs).long()
        attrs = (attrs[:, None] if attrs.ndim == 1 else attrs)[:, self.columns].to(device)
        labels = getattr(train, "labels", None)
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
            w = self._sample_weights({"label": bl}, ba, len(rows), doubled=False)
            out = self.core.discriminator_step(z[rows], ba, w)
            if step >= self.refit_steps - 10:  # accuracy of the last 10 refit steps
                for key, v in out.items():
                    if key.endswith("disc_acc") or key.endswith("disc_weighted_acc"):
                        name = key.replace("disc_", "refit_")
                        logs[name] = logs.get(name, 0.0) + v / 10
        return logs

    def after_encoder_step(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        batch: Mapping[str, Any],
        ctx: Any,
        scaler: torch.amp.GradScaler | None = None,
    ) -> dict[str, float]:
        """Apply D's optimiser (reversal); ``scaler``: the encoder's loss scaler, if any (call
        before ``scaler.update()``)."""
        if self.core.method == "reversal" and self.own_reversal_step:
            self.core.step(scaler)
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


def _schedule_epoch(ctx: Any) -> float:
    """The fractional epoch of a step context (``epoch + b / steps_per_epoch``), else its epoch."""
    frac = getattr(ctx, "fractional_epoch", None)
    return float(ctx.epoch if frac is None else frac)


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
        mean_gap_conditional=bool(getattr(fc, "mean_gap_conditional", False)),
        mean_gap_momentum=float(getattr(fc, "mean_gap_momentum", 0.0)),
        mean_gap_shrinkage=float(getattr(fc, "mean_gap_shrinkage", 0.1)),
        num_classes=_num_classes(data) if getattr(fc, "mean_gap_conditional", False) else 0,
        input_dim=in_dim,
        view=getattr(fc, "adversary_view", "augmented"),
        refit_every_epochs=int(getattr(fc, "refit_every_epochs", 0)),
        refit_steps=int(getattr(fc, "refit_steps", 200)),
        refit_source=(model, getattr(data, "train", None), cfg.data.image_size, cfg.data.channels),
    ).to(device)


def _num_classes(data: Any) -> int:
    """Number of classes of the training data's labels (0 without labels)."""
    labels = getattr(getattr(data, "train", None), "labels", None)
    if labels is None:
        return 0
    labels = torch.as_tensor(labels)
    return int(labels.max()) + 1 if bool((labels >= 0).any()) else 0


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
def _embed_dataset(
    model: nn.Module,
    images: Any,
    size: int,
    channels: int,
    feature: bool,
    device: torch.device,
    chunk: int = 512,
) -> torch.Tensor:
    """(n, D) clean image embeddings (or backbone features) of uint8 images, eval mode."""
    from debiascl.data.augment import EvalTransform

    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images[:, None]
    tf = EvalTransform(size, channels).to(device)
    was = model.training
    model.eval()
    try:
        out = []
        for i in range(0, images.shape[0], chunk):
            f = model.encoder(tf(images[i : i + chunk].to(device)))
            out.append((f if feature else model.head(f)).float())
    finally:
        model.train(was)
    return torch.cat(out)


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

"""The configured fairness terms together: maps a training step onto their inputs.

The trainer calls::

    losses, logs = terms(a, b, batch, ctx, clean=clean)   # name -> scalar tensor, float logs
    loss = contrastive + sum(losses.values())
    ...scaler.scale(loss).backward(); scaler.step(encoder optimiser)...
    terms.after_step(scaler)                              # before scaler.update()
    record |= terms.epoch_logs()                          # once per epoch

``a``/``b`` are the two embeddings of the contrastive step (image/text in ``image_text`` mode, two
views in ``image_image`` mode). ``on`` picks the rows every term sees: ``image`` (``a``; both views
in ``image_image`` mode), ``text`` (``b``) or ``feature`` (the image backbone's pre-projection
output, kept by a forward hook on ``feature_source`` from the latest forward run with gradients,
rows in the order of ``torch.cat([a, b])``; not normalised). ``view="clean"``: the rows are the
embedding of the un-augmented batch, passed as ``clean`` (b, D), one row per sample.
``normalize``: L2-normalise embedding rows (what the cosine loss and zero-shot use).
``balance_table`` (C, A, K_max): P(a)/P(a|y) weights looked up per row from the batch's labels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from debiascl.errors import ConfigError, DataError, TrainingError
from debiascl.fairness.terms.base import FairnessTerm, TermInputs
from debiascl.numerics import unit_rows


def schedule_epoch(ctx: Any) -> float:
    """The fractional epoch of a step context (``epoch + b / steps_per_epoch``), else its epoch."""
    frac = getattr(ctx, "fractional_epoch", None)
    return float(ctx.epoch if frac is None else frac)


class FairnessTerms(nn.Module):
    """Owns the fairness terms (an ``nn.ModuleDict`` by name) and their shared inputs."""

    def __init__(
        self,
        terms: Sequence[FairnessTerm],
        columns: Sequence[int],
        on: str = "image",
        mode: str = "image_text",
        normalize: bool = True,
        view: str = "augmented",
        feature_source: nn.Module | None = None,
        balance_table: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if view not in ("augmented", "clean"):
            raise ConfigError(f"fairness.view must be augmented or clean, got {view!r}")
        if view == "clean" and on == "text":
            raise ConfigError("fairness.view=clean needs fairness.on=image or feature")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ConfigError(f"fairness.terms names a term twice ({names}); list each once")
        self.terms = nn.ModuleDict({t.name: t for t in terms})
        self.columns = list(columns)
        self.on, self.mode, self.normalize, self.view = on, mode, bool(normalize), view
        self.balance_table = balance_table
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._feature: torch.Tensor | None = None
        self._hook = None
        if on == "feature":
            if feature_source is None:
                raise ConfigError("fairness.on=feature needs the model's image backbone")
            self._hook = feature_source.register_forward_hook(self._keep_feature)

    def _keep_feature(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if torch.is_grad_enabled():  # training forwards only, not evaluation passes
            self._feature = output

    def remove_hook(self) -> None:
        """Detach the ``on=feature`` forward hook from the backbone."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @property
    def doubled(self) -> bool:
        """Whether the rows are both views (image_image, augmented image/feature)."""
        return self.mode == "image_image" and self.on != "text" and self.view == "augmented"

    def _attrs(self, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
        attrs = batch.get("attrs")
        if attrs is None:
            raise DataError(
                "fairness terms need sensitive attributes in the batch; set "
                "data.attribute_columns (or use dataset=synthetic_attr)"
            )
        attrs = torch.as_tensor(attrs)
        if attrs.ndim == 1:
            attrs = attrs[:, None]
        return attrs[:, self.columns].to(device)

    def rows(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        batch: Mapping[str, Any],
        clean: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, D) rows the terms see and their (n, A) attribute codes."""
        attrs = self._attrs(batch, a.device)
        if self.view == "clean" and self.on == "image":
            if clean is None or clean.ndim != 2 or clean.shape[0] != attrs.shape[0]:
                raise TrainingError(
                    "fairness.view=clean needs the (b, D) embedding of the un-augmented batch "
                    "as clean=..."
                )
            return (unit_rows(clean) if self.normalize else clean), attrs
        if self.on == "feature":
            feat, self._feature = self._feature, None
            rows = a.shape[0] * (2 if self.doubled else 1)
            if feat is None or feat.ndim != 2 or feat.shape[0] != rows:
                raise TrainingError(
                    "fairness.on=feature found no backbone feature of this batch (expected "
                    f"{rows} rows from model.encoder's forward pass); run the model forward "
                    "with gradients enabled first"
                )
            feat = feat.float()
            return (feat, torch.cat([attrs, attrs])) if self.doubled else (feat, attrs)
        if self.normalize:
            a, b = unit_rows(a), unit_rows(b)
        if self.on == "text":
            return b, attrs
        if self.mode == "image_image":  # both views carry the same attributes
            return torch.cat([a, b]), torch.cat([attrs, attrs])
        return a, attrs

    def sample_weights(self, labels: Any, attrs: torch.Tensor) -> torch.Tensor | None:
        """(n, A) P(a)/P(a|y) weights of rows with class ``labels`` (n,), or None (no balance).

        A row whose label is unknown (-1) gets weight 0: the P(a)/P(a|y) balance is defined only
        for labelled rows, so unlabelled rows are left out of every balanced statistic (at weight
        1 they would bring back the class-attribute correlation the balance removes).
        """
        if self.balance_table is None:
            return None
        if labels is None:
            raise DataError(
                "fairness.balance=label needs class labels in the batch; use labelled data or "
                "fairness.balance=none"
            )
        y = torch.as_tensor(labels).long().to(attrs.device)
        if y.shape[0] != attrs.shape[0]:
            raise DataError(f"{y.shape[0]} labels for {attrs.shape[0]} fairness rows")
        table = self.balance_table.to(attrs.device)
        known = y >= 0
        yc = y.clamp_min(0)  # -1 must not index the last class: those rows get weight 0 below
        cols = [
            torch.where(
                known,
                torch.where(attrs[:, j] >= 0, table[yc, j, attrs[:, j].clamp_min(0)], 1.0),
                0.0,
            )
            for j in range(attrs.shape[1])
        ]
        return torch.stack(cols, 1)

    def inputs(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        batch: Mapping[str, Any],
        ctx: Any,
        clean: torch.Tensor | None = None,
    ) -> TermInputs:
        """The step's :class:`TermInputs` (labels repeated for both views when rows are)."""
        z, attrs = self.rows(a, b, batch, clean)
        labels = batch.get("label")
        y = None
        if labels is not None:
            y = torch.as_tensor(labels).long().to(z.device)
            if z.shape[0] == 2 * y.shape[0]:
                y = torch.cat([y, y])
        training = bool(getattr(ctx, "training", True))
        return TermInputs(
            z=z,
            attrs=attrs,
            weights=self.sample_weights(y, attrs),
            labels=y,
            epoch=schedule_epoch(ctx) if training else 0.0,
            step_epoch=int(ctx.epoch),
            training=training,
        )

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        batch: Mapping[str, Any],
        ctx: Any,
        clean: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Named (weighted) loss terms to add to the contrastive loss, and the terms' logs."""
        x = self.inputs(a, b, batch, ctx, clean)
        losses: dict[str, torch.Tensor] = {}
        logs: dict[str, float] = {}
        for term in self.terms.values():
            out, tlogs = term(x)
            losses.update(out)
            logs.update(tlogs)
        for k, v in logs.items():
            self._sums[k] += float(v)
            self._counts[k] += 1
        return losses, logs

    def after_step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """Let each term apply its own optimiser (call before ``scaler.update()``)."""
        for term in self.terms.values():
            term.after_step(scaler)

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
        """Means over the epoch's steps of the terms' logs (``<key>_epoch``); resets them."""
        out = {f"{k}_epoch": self._sums[k] / self._counts[k] for k in self._sums}
        self._sums.clear()
        self._counts.clear()
        return out

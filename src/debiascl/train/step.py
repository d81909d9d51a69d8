"""One optimisation step of :class:`~debiascl.train.trainer.Trainer`.

Encode the batch (two views, or image + text), evaluate the contrastive objective and the
fairness terms, back-propagate through the AMP scaler, guard against non-finite values and turn
out-of-memory into a message that names the step. A mixin: the methods read the trainer's model,
objective, optimiser, scaler and config.
"""

from __future__ import annotations

from typing import Any

import torch

from debiascl.errors import ConfigError, TrainingError
from debiascl.objectives import StepContext
from debiascl.objectives.grad_cache import GradCache
from debiascl.train.setup import autocast


class StepMixin:
    """The step methods of :class:`~debiascl.train.trainer.Trainer`."""

    def _embed(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch["image"].to(self.device, non_blocking=True)
        with autocast(self.device, self.amp_dtype):
            if self.cfg.data.mode == "image_image":
                v1, v2 = self.augment(images)
                self._model_inputs = (torch.cat([v1, v2]),)
                z = self.ddp_model(*self._model_inputs)
                a, b = z.float().chunk(2)
            else:
                self._model_inputs = (self.augment(images), list(batch["text"]))
                a, b = self.ddp_model(*self._model_inputs)
                a, b = a.float(), b.float()
        return a, b

    def _embed_reference(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stable encoder's embeddings of the inputs of the last :meth:`_embed` (no grad)."""
        if self.reference is None:
            return None
        with torch.no_grad(), autocast(self.device, self.amp_dtype):
            if self.cfg.data.mode == "image_image":
                a, b = self.reference(*self._model_inputs).float().chunk(2)
            else:
                a, b = self.reference(*self._model_inputs)
        return a.float(), b.float()

    def _embed_clean(self, batch: dict[str, Any]) -> torch.Tensor:
        """(b, D) image embedding of the un-augmented batch, in the graph (for the adversary).

        ``fairness.view=clean``: the fairness terms should see what evaluation sees (random
        crops can cut an attribute such as a border away from the training views). One extra
        forward of the evaluation transform through the same (DDP) model after the contrastive
        one; the text tower's output is discarded (MiniLM caches frozen text).
        """
        images = self.eval_transform(batch["image"].to(self.device, non_blocking=True))
        with autocast(self.device, self.amp_dtype):
            if self.cfg.data.mode == "image_image":
                return self.ddp_model(images).float()
            return self.ddp_model(images, list(batch["text"]))[0].float()

    def _encode_pair(self, inputs: tuple[Any, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, D) fp32 embeddings of one micro-batch's model inputs (both views in one forward,
        or images and texts), as :meth:`_embed` computes them for the whole batch."""
        with autocast(self.device, self.amp_dtype):
            if self.cfg.data.mode == "image_image":
                a, b = self.ddp_model(torch.cat(inputs)).float().chunk(2)
            else:
                a, b = self.ddp_model(*inputs)
        return a.float(), b.float()

    def _embed_cached(
        self, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, GradCache]:
        """``train.micro_batch_size``: augment the whole batch once, encode it micro-batch by
        micro-batch without graph (and the stable reference, if any); the returned
        :class:`~debiascl.objectives.grad_cache.GradCache` re-runs them with the gradients."""
        images = batch["image"].to(self.device, non_blocking=True)
        with autocast(self.device, self.amp_dtype):
            if self.cfg.data.mode == "image_image":
                v1, v2 = self.augment(images)
                inputs: tuple[Any, ...] = (v1, v2)
            else:
                inputs = (self.augment(images), list(batch["text"]))
        no_sync = getattr(self.ddp_model, "no_sync", None)  # DDP: all-reduce once, at the end
        cache = GradCache(self._encode_pair, inputs, self.micro_batch_size, no_sync=no_sync)
        a, b = cache.embed()
        reference = None
        if self.reference is not None:
            image_image = self.cfg.data.mode == "image_image"
            parts = []
            for chunk in cache.micro_batches():
                self._model_inputs = (torch.cat(chunk),) if image_image else chunk
                parts.append(self._embed_reference())
            reference = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        return a, b, reference, cache

    def train_step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        ids = batch["index"].to(self.device)
        labels = batch.get("label")
        # -1 marks an unlabelled row: diagnostics and the oracle count only pairs whose labels
        # are both known; a dataset without any label passes None.
        if labels is not None and self.info.labels is not None:
            labels = labels.to(self.device)
        else:
            labels = None
        cache: GradCache | None = None
        if self.micro_batch_size:  # gradient caching: (a, b) are leaves without encoder graph
            a, b, reference, cache = self._embed_cached(batch)
        else:
            a, b = self._embed(batch)
            reference = self._embed_reference()  # None unless the detector needs them
        # the loss owns its temperature
        out = self.objective(a, b, ids, labels, ctx=ctx, reference=reference)
        loss = out.loss
        logs = {"loss": float(out.value), **out.logs}
        if self.fairness is not None:  # named loss terms, summed and each logged
            clean = self._embed_clean(batch) if self.eval_transform is not None else None
            terms, term_logs = self.fairness(a, b, batch, ctx, clean=clean)
            for name, term in terms.items():
                loss = loss + term
                logs[f"loss/{name}"] = float(term.detach())
            logs.update(term_logs)
        if not torch.isfinite(loss):
            return self._nonfinite(ctx, "loss", logs)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cache is not None:  # the encoder's gradient, micro-batch by micro-batch (scaled too)
            cache.backward(a.grad, b.grad)
        self.objective.sync_gradients()  # a learned temperature is outside the DDP model
        self.scaler.unscale_(self.optimizer)
        # With fp16 loss scaling, overflowing gradients are routine: GradScaler skips that step
        # and lowers the scale, so the guard only looks at gradients without a scaler.
        if not self.scaler.is_enabled() and not self._grads_finite():
            self.optimizer.zero_grad(set_to_none=True)
            if self.fairness is not None:  # nor may a discriminator keep this step's grads
                self.fairness.zero_grad(set_to_none=True)
            return self._nonfinite(ctx, "gradient", logs)
        self.scaler.step(self.optimizer)
        if self.reference is not None:
            self.reference.update(self.model)
        self.objective.clamp_logit_scale_()  # cap the stored value, not the forward (CLIP)
        if self.fairness is not None:
            # a discriminator's gradients come from the same scaled backward, so its optimiser
            # is unscaled and stepped through the scaler too, before the scale is updated
            self.fairness.after_step(self.scaler)
        self.scaler.update()
        self.scheduler.step()
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        return logs

    def _grads_finite(self) -> bool:
        """One device sync: the sum of gradient norms is finite iff every gradient is (the
        norms in one multi-tensor call rather than a kernel per parameter)."""
        params = [*self.model.parameters(), *self.objective.parameters()]
        grads = [p.grad.detach().float() for p in params if p.grad is not None]
        return not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum()))

    def _nonfinite(self, ctx: StepContext, what: str, logs: dict[str, float]) -> dict[str, float]:
        if self.cfg.train.on_nonfinite == "skip":
            # The parameters stay as they were; the schedule still advances so the learning
            # rate stays a function of the step count.
            self.scheduler.step()
            logs["skipped"] = 1.0
            return logs
        where = (
            f"; the last good checkpoint {self.last_checkpoint} is kept"
            if self.last_checkpoint is not None
            else ""
        )
        raise TrainingError(
            f"non-finite {what} at epoch {ctx.epoch + 1} step {ctx.step + 1} "
            f"(loss={logs.get('loss')}){where} — lower optim.lr or raise loss.temperature, "
            "or set train.on_nonfinite=skip"
        )

    def _guarded_step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        """:meth:`train_step`, with out-of-memory turned into a message naming the step."""
        try:
            return self.train_step(batch, ctx)
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
            if not _is_oom(err):
                raise
            kept = f"{self.last_checkpoint}" if self.last_checkpoint is not None else "none yet"
            raise TrainingError(
                f"out of memory at epoch {ctx.epoch + 1} step {ctx.step + 1} with "
                f"{self.local_batch} samples per process (last checkpoint: {kept}, intact) — "
                "lower train.batch_size or set train.micro_batch_size, use train.amp=bf16 or a "
                "smaller model"
            ) from err


def _is_oom(err: BaseException) -> bool:
    """CUDA/CPU out-of-memory, whichever type the allocator raised."""
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(err)
    return "out of memory" in text or "can't allocate memory" in text


def check_micro_batch_size(size: int | None, local_batch: int, world: int, fairness: bool) -> int:
    """``train.micro_batch_size`` as an int (0: off), or a one-line :class:`ConfigError`.

    It must divide the ``local_batch`` samples each of the ``world`` processes encodes, and
    cannot yet be combined with fairness terms (they need the graph of the whole batch).
    """
    if not size:
        return 0
    if fairness:
        raise ConfigError(
            f"train.micro_batch_size={size} cannot be combined with fairness.terms yet (the "
            "terms need the whole batch's graph); set train.micro_batch_size=0 or drop the terms"
        )
    if local_batch % size != 0:
        raise ConfigError(
            f"train.micro_batch_size={size} does not divide the {local_batch} samples per "
            f"process (train.batch_size over {world} processes); choose a divisor of "
            f"{local_batch}, or 0 to turn gradient caching off"
        )
    return size

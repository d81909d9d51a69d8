"""The training loop: data -> augment -> encode -> objective (+ adversary) -> optimiser step.

Runs on CPU or CUDA, in one process or under ``torchrun`` (DDP; gloo on CPU, NCCL on GPU). The
run directory receives the resolved config, ``metrics.jsonl``, TensorBoard events, checkpoints and
``summary.json``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from debiascl import __version__
from debiascl import distributed as dist_utils
from debiascl.config import RunConfig, dump_config
from debiascl.data.augment import build_augment
from debiascl.data.build import DataBundle, build_data, make_loader
from debiascl.errors import ConfigError, TrainingError
from debiascl.methods import build_objective
from debiascl.models import build_model
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.train import checkpoint as ckpt
from debiascl.train.logging import RunLogger
from debiascl.train.optim import build_optimizer, warmup_cosine
from debiascl.train.setup import (
    autocast,
    autocast_dtype,
    configure_torch,
    seed_everything,
    select_device,
)


def progress_enabled() -> bool:
    """Progress bars only on an interactive terminal and on rank 0."""
    return sys.stderr.isatty() and dist_utils.is_main_process()


@dataclass
class TrainState:
    epoch: int = 0  # next epoch to run
    step: int = 0  # optimisation steps done


class Trainer:
    """Trains the model that ``cfg`` describes; see :meth:`fit`."""

    def __init__(self, cfg: RunConfig, run_dir: Path | None = None) -> None:
        self.cfg = cfg
        dist_utils.init_from_env()
        configure_torch(cfg.train)
        self.device = select_device(cfg.train.device)
        self.world = dist_utils.world_size()
        if cfg.train.batch_size % self.world != 0:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} is not divisible by the {self.world} "
                "processes; choose a multiple of the world size"
            )
        self.local_batch = cfg.train.batch_size // self.world
        seed_everything(cfg.seed)
        self.run_dir = Path(run_dir) if run_dir else Path(cfg.output_dir) / cfg.name
        self.is_main = dist_utils.is_main_process()
        self.data: DataBundle = build_data(cfg.data, cfg.seed)
        self.info = self.data.info
        self.model = build_model(
            cfg.model, cfg.data.mode, self.data.channels, corpus=self.info.texts
        ).to(self.device)
        self.objective: ContrastiveObjective = build_objective(cfg, self.info).to(self.device)
        self.adversary = self._build_adversary()
        self.augment: nn.Module = build_augment(cfg.data).to(self.device)
        self.train_loader = make_loader(
            self.data.train,
            self.local_batch,
            train=True,
            seed=cfg.seed,
            num_workers=cfg.data.num_workers,
        )
        if len(self.train_loader) == 0:
            raise ConfigError(
                f"the training set ({len(self.data.train)} samples) is smaller than one batch of "
                f"{self.local_batch} per process; lower train.batch_size"
            )
        self.steps_per_epoch = len(self.train_loader)
        if cfg.train.max_steps is not None:
            self.total_steps = min(cfg.train.max_steps, self.steps_per_epoch * cfg.train.epochs)
        else:
            self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.ddp_model: nn.Module = self.model
        if dist_utils.is_distributed():
            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        # The discriminator keeps its own optimiser and learning rate (fairness.lr).
        self.optimizer = build_optimizer(self.model, cfg.optim)
        warmup = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.scheduler = warmup_cosine(
            self.optimizer, warmup, self.total_steps, cfg.optim.min_lr_ratio
        )
        self.amp_dtype = autocast_dtype(cfg.train.amp, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.state = TrainState()
        self.fingerprint = ckpt.config_fingerprint(cfg, self.info.num_samples)
        self.logger: RunLogger | None = None
        self.last_record: dict[str, Any] = {}

    # ----------------------------------------------------------------- adversary hooks
    def _build_adversary(self) -> Any:
        if not self.cfg.fairness.enabled:
            return None
        from debiascl.fairness.integration import build_adversary

        return build_adversary(
            self.cfg, self.model, self.device, self.data, own_reversal_step=True
        )

    # ----------------------------------------------------------------- one step
    def _logit_scale(self) -> torch.Tensor | float:
        if self.cfg.data.mode == "image_text" and self.cfg.loss.name == "infonce":
            return self.model.logit_scale
        return 1.0 / self.cfg.loss.temperature

    def _embed(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch["image"].to(self.device, non_blocking=True)
        with autocast(self.device, self.amp_dtype):
            if self.cfg.data.mode == "image_image":
                v1, v2 = self.augment(images)
                z = self.ddp_model(torch.cat([v1, v2]))
                a, b = z.float().chunk(2)
            else:
                a, b = self.ddp_model(self.augment(images), list(batch["text"]))
                a, b = a.float(), b.float()
        return a, b

    def train_step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        ids = batch["index"].to(self.device)
        labels = batch.get("label")
        labels = (
            labels.to(self.device) if labels is not None and bool((labels >= 0).all()) else None
        )
        a, b = self._embed(batch)
        out = self.objective(a, b, ids, labels, self._logit_scale(), ctx)
        loss = out.loss
        logs = {"loss": float(out.value), **out.logs}
        if self.adversary is not None:
            adv_loss, adv_logs = self.adversary.training_term(a, b, batch, ctx)
            loss = loss + adv_loss
            logs.update(adv_logs)
        if not torch.isfinite(loss):
            return self._nonfinite(ctx, "loss", logs)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads and not all(torch.isfinite(g).all() for g in grads):
            self.optimizer.zero_grad(set_to_none=True)
            return self._nonfinite(ctx, "gradient", logs)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.adversary is not None:
            logs.update(self.adversary.after_encoder_step(a.detach(), b.detach(), batch, ctx))
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        return logs

    def _nonfinite(self, ctx: StepContext, what: str, logs: dict[str, float]) -> dict[str, float]:
        if self.cfg.train.on_nonfinite == "skip":
            logs["skipped"] = 1.0
            return logs
        raise TrainingError(
            f"non-finite {what} at epoch {ctx.epoch} step {ctx.step} (loss={logs.get('loss')}); "
            "the last good checkpoint is kept — lower optim.lr or raise loss.temperature, or set "
            "train.on_nonfinite=skip"
        )

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "adversary": self.adversary.state_dict() if self.adversary is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            "fingerprint": self.fingerprint,
            "config": self.cfg.model_dump(mode="json"),
            "version": __version__,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        if self.adversary is not None and state.get("adversary") is not None:
            self.adversary.load_state_dict(state["adversary"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.state = TrainState(epoch=state["epoch"], step=state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        reset = getattr(self.objective.detector, "reset_thresholds", None)
        if self.cfg.negatives.reset_on_resume and callable(reset):
            reset()

    def save(self) -> Path | None:
        path = None
        if self.is_main:
            path = ckpt.save_checkpoint(
                self.state_dict(),
                self.run_dir / "checkpoints",
                ckpt.checkpoint_name(self.state.epoch, self.state.step),
                self.cfg.checkpoint.keep_last,
            )
        dist_utils.barrier()
        return path

    def resume(self, resume: str) -> None:
        path = ckpt.resolve_resume(resume, self.run_dir)
        self.load_state_dict(ckpt.load_checkpoint(path, self.fingerprint))

    # ----------------------------------------------------------------- loop
    def _prepare_run_dir(self) -> None:
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(self.cfg, self.run_dir / "config.yaml")
        self.logger = RunLogger(self.run_dir, enabled=self.is_main)

    def fit(self, evaluate: bool = True) -> dict[str, Any]:
        """Train for ``train.epochs`` (or ``max_steps``), checkpoint, evaluate, write summary."""
        self._prepare_run_dir()
        if self.cfg.checkpoint.resume:
            self.resume(self.cfg.checkpoint.resume)
        assert self.logger is not None
        start = time.perf_counter()
        epochs = self.cfg.train.epochs
        while self.state.epoch < epochs and self.state.step < self.total_steps:
            record = self._run_epoch(self.state.epoch)
            self.last_record = record
            self.state.epoch += 1
            self.logger.epoch(record)
            if self.state.epoch % self.cfg.checkpoint.every_epochs == 0 or (
                self.state.epoch == epochs
            ):
                self.save()
            if (
                evaluate
                and self.cfg.train.eval_every
                and self.state.epoch % self.cfg.train.eval_every == 0
                and self.state.epoch < epochs
            ):
                self.logger.scalars(
                    _flatten(self.evaluate(references=False)), self.state.step, prefix="eval/"
                )
        summary: dict[str, Any] = {
            "name": self.cfg.name,
            "seed": self.cfg.seed,
            "epochs": self.state.epoch,
            "steps": self.state.step,
            "train_seconds": time.perf_counter() - start,
            "world_size": self.world,
            "versions": {"debiascl": __version__, "torch": torch.__version__},
        }
        detection = {
            k.removeprefix("negatives/"): v
            for k, v in self.last_record.items()
            if k.startswith("negatives/")
        }
        if detection:
            summary["fn_detection"] = detection
        if evaluate:
            summary.update(self.evaluate(references=self.cfg.eval.references))
        summary["wall_seconds"] = time.perf_counter() - start
        self.logger.summary(summary)
        self.logger.close()
        return summary

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        totals: dict[str, float] = {}
        count = skipped = 0
        t0 = time.perf_counter()
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
            disable=not progress_enabled(),
            leave=False,
            unit="batch",
        )
        for batch in bar:
            if self.state.step >= self.total_steps:
                break
            if not self._batch_complete(batch):
                skipped += 1
                continue
            ctx = StepContext(
                epoch=epoch,
                step=self.state.step,
                training=True,
                progress=self.state.step / max(1, self.total_steps),
            )
            logs = self.train_step(batch, ctx)
            self.state.step += 1
            count += 1
            for key, val in logs.items():
                totals[key] = totals.get(key, 0.0) + float(val)
            if self.state.step % self.cfg.train.log_every == 0:
                assert self.logger is not None
                self.logger.scalars(logs, self.state.step, prefix="train/")
            elapsed = time.perf_counter() - t0
            bar.set_postfix(
                loss=f"{logs['loss']:.3f}",
                img_s=f"{count * self.cfg.train.batch_size / elapsed:.0f}",
            )
        seconds = time.perf_counter() - t0
        record: dict[str, Any] = {"epoch": epoch + 1, "step": self.state.step}
        record.update({k: v / max(1, count) for k, v in totals.items()})
        record["images_per_second"] = count * self.cfg.train.batch_size / max(seconds, 1e-9)
        record["epoch_seconds"] = seconds
        if skipped:
            record["skipped_batches"] = skipped
        record.update({f"negatives/{k}": v for k, v in self.objective.epoch_diagnostics().items()})
        if self.adversary is not None:
            record.update(self.adversary.epoch_logs())
        return record

    def _batch_complete(self, batch: dict[str, Any] | None) -> bool:
        """False when unreadable images were dropped from this batch on any rank.

        With ``data.on_bad_image=skip`` a batch can shrink (or vanish); every rank must see the
        same batch size for the all-gather, so such a step is skipped everywhere.
        """
        size = 0 if batch is None else int(batch["index"].shape[0])
        ok = torch.tensor(float(size == self.local_batch), device=self.device)
        if dist_utils.is_distributed():
            import torch.distributed as dist

            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item() > 0)

    def evaluate(self, references: bool = False) -> dict[str, Any]:
        """Frozen-feature evaluation of the current model (rank 0 computes, others wait)."""
        from debiascl.train.evaluate import evaluate_model

        results: dict[str, Any] = {}
        if self.is_main:
            results = evaluate_model(self, references=references)
        dist_utils.barrier()
        return results


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, val in tree.items():
        name = f"{prefix}{key}"
        if isinstance(val, dict):
            flat.update(_flatten(val, name + "/"))
        elif isinstance(val, int | float) and not isinstance(val, bool) and math.isfinite(val):
            flat[name] = float(val)
    return flat

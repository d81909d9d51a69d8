"""The training loop: data -> augment -> encode -> objective (+ fairness terms) -> optimiser step.

Runs on CPU or CUDA, in one process or under ``torchrun`` (DDP; gloo on CPU, NCCL on GPU). The
run directory receives the resolved config, ``metrics.jsonl``, TensorBoard events, checkpoints and
``summary.json``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from debiascl import __version__
from debiascl import distributed as dist_utils
from debiascl.compose import build_augment, build_data, build_model, build_objective
from debiascl.compose.evaluation import evaluate_run_model
from debiascl.compose.objective import build_reference
from debiascl.compose.run_checks import check_ignored_by_mode, warn_if_thresholds_cannot_move
from debiascl.config import RunConfig
from debiascl.data.augment import EvalTransform
from debiascl.data.build import DataBundle, make_loader
from debiascl.errors import ConfigError, DataError
from debiascl.fairness_build import build_fairness_terms
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.train import checkpoint as ckpt
from debiascl.train.logging import RunLogger, scalar_leaves
from debiascl.train.optim import build_optimizer, warmup_cosine
from debiascl.train.removed_pairs import attach_removed_pairs, save_removed_pairs
from debiascl.train.resume import (
    LoaderWorkersMixin,
    ignore_stop_signals,
    kill_workers_at_exit,
    make_resumable,
    stop_signals_blocked,
)
from debiascl.train.run_dir import RunDirMixin
from debiascl.train.run_lock import RunDirLock
from debiascl.train.run_state import CheckpointMixin, EpochProgress, TrainState
from debiascl.train.setup import (
    autocast_dtype,
    configure_torch,
    seed_everything,
    select_device,
)
from debiascl.train.signals import RunInterrupted, SignalMixin
from debiascl.train.step import StepMixin, check_micro_batch_size

__all__ = ["EpochProgress", "RunInterrupted", "TrainState", "Trainer", "progress_enabled"]


def progress_enabled() -> bool:
    """Progress bars only on an interactive terminal and on rank 0."""
    return sys.stderr.isatty() and dist_utils.is_main_process()


class Trainer(StepMixin, CheckpointMixin, SignalMixin, RunDirMixin, LoaderWorkersMixin):
    """Trains the model that ``cfg`` describes; see :meth:`fit`."""

    def __init__(self, cfg: RunConfig, run_dir: Path | None = None) -> None:
        self.cfg = cfg
        check_ignored_by_mode(cfg)  # before any work
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
        # gradient caching (0: off); checked before anything is built
        self.micro_batch_size = check_micro_batch_size(
            cfg.train.micro_batch_size, self.local_batch, self.world, bool(cfg.fairness.terms)
        )
        seed_everything(cfg.seed)
        self.run_dir = Path(run_dir) if run_dir else Path(cfg.output_dir) / cfg.name
        self.is_main = dist_utils.is_main_process()
        self.data: DataBundle = build_data(cfg.data, cfg.seed)
        self.info = self.data.info
        self.model = build_model(
            cfg.model, cfg.data.mode, self.data.channels, corpus=self.data.corpus
        ).to(self.device)
        self.objective: ContrastiveObjective = build_objective(cfg, self.info).to(self.device)
        # stable (EMA or initial) copy of the model for stable_glofnd; in the objective's state
        self.reference = build_reference(cfg, self.objective, self.model)
        self._model_inputs: tuple[Any, ...] = ()
        attach_removed_pairs(self.objective, cfg.train.removed_pairs_sample, cfg.seed)
        # fairness terms (name -> loss term), built by the composition layer; None without terms
        self.fairness = build_fairness_terms(cfg, self.model, self.device, self.data)
        self.augment: nn.Module = build_augment(cfg.data).to(self.device)
        self.eval_transform: nn.Module | None = None  # the terms' clean view, if asked for
        if self.fairness is not None and cfg.fairness.view == "clean":
            self.eval_transform = EvalTransform(self.data.image_size, self.data.channels).to(
                self.device
            )
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
        self._skipper = make_resumable(self.train_loader)
        if cfg.data.num_workers > 0:  # pre-emption signals reach the workers too (same group)
            self.train_loader.worker_init_fn = ignore_stop_signals
            kill_workers_at_exit()  # they ignore SIGTERM: a multiprocessing child would hang
        if cfg.train.max_steps is not None:
            self.total_steps = min(cfg.train.max_steps, self.steps_per_epoch * cfg.train.epochs)
        else:
            self.total_steps = self.steps_per_epoch * cfg.train.epochs
        if self.is_main:
            warn_if_thresholds_cannot_move(cfg, math.ceil(self.total_steps / self.steps_per_epoch))
        self.ddp_model: nn.Module = self.model
        if dist_utils.is_distributed():
            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        # The discriminator keeps its own optimiser and learning rate (fairness.lr).
        # The objective's parameters (a learned temperature) come after the model's, so the
        # parameter order matches checkpoints from when the model held the logit scale.
        self.optimizer = build_optimizer(nn.ModuleList([self.model, self.objective]), cfg.optim)
        warmup = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.scheduler = warmup_cosine(
            self.optimizer, warmup, self.total_steps, cfg.optim.min_lr_ratio
        )
        self.amp_dtype = autocast_dtype(cfg.train.amp, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.state = TrainState()
        self.progress = EpochProgress()
        self.best_loss = math.inf  # lowest end-of-epoch mean training loss saved as best.pt
        self.fingerprint_parts = ckpt.fingerprint_parts(cfg, self.info.num_samples)
        self.fingerprint = ckpt.config_fingerprint(cfg, self.info.num_samples)
        self.logger: RunLogger | None = None
        self.last_record: dict[str, Any] = {}
        self.last_checkpoint: Path | None = None
        self._loader_rng = self._loader_generator_state()  # as at the start of this epoch
        self._stop_signal: int | None = None
        self._saved_at: tuple[int, int, int] | None = None  # position of the last checkpoint
        self._epoch_t0: float | None = None
        self._lock = RunDirLock(self.run_dir)  # held by rank 0 while fit() runs
        self.nothing_to_train = False  # fit() resumed a run that had already finished
        #: called on rank 0 with each finished epoch's record (as in metrics.jsonl) once it is
        #: logged, e.g. to print progress where no bar shows; None: nothing
        self.on_epoch: Callable[[dict[str, Any]], None] | None = None

    # ----------------------------------------------------------------- loop

    def fit(self, evaluate: bool = True) -> dict[str, Any]:
        """Train for ``train.epochs`` (or ``max_steps``), checkpoint, evaluate, write summary.

        Resumes first when ``checkpoint.resume`` is set; the checkpoint is checked before
        anything in the run directory is written, so a refused resume changes nothing.

        Raises:
            DataError: ``evaluate`` is set but the data has no test split (checked before any
                training, not after it).
        """
        if evaluate and self.data.test is None:
            test = "data.test_manifest=FILE"
            if self.cfg.data.dataset == "shards":
                test = "data.test_shards=DIR (or data.test_manifest=FILE)"
            raise DataError(
                f"data.dataset={self.cfg.data.dataset} has no test split to evaluate on: set "
                f"{test}, or train with --no-eval and evaluate later with "
                f"debiascl eval RUN_DIR {test.split(' ')[0]}"
            )
        try:
            self._prepare_run_dir()
            if self.cfg.checkpoint.resume:
                self.resume(self.cfg.checkpoint.resume)
                if self._already_complete():  # no new files, no TensorBoard event file
                    return self._nothing_to_train()
            last_logged = self._trim_metrics()  # a fresh run keeps no records of an earlier one
            self._write_config()
            self._log_missing_record(last_logged)
            assert self.logger is not None
            try:
                return self._fit(evaluate)
            finally:
                self.logger.close()
        finally:
            self.close()  # persistent loader workers; a later fit() starts new ones
            self._lock.release()

    def _fit(self, evaluate: bool) -> dict[str, Any]:
        assert self.logger is not None
        start = time.perf_counter()
        epochs = self.cfg.train.epochs
        with self._signal_guard():
            while self.state.epoch < epochs and self.state.step < self.total_steps:
                record = self._run_epoch(self.state.epoch)
                if record is None:  # max_steps reached inside the epoch
                    break
                self.last_record = record
                self.state.epoch += 1
                self.state.batch = 0
                self.progress = EpochProgress()
                self._loader_rng = self._loader_generator_state()
                # Checkpoint (which carries the record) before logging: a failed save leaves
                # metrics.jsonl as it was, and a kill in between is repaired on resume.
                if self.state.epoch % self.cfg.checkpoint.every_epochs == 0 or (
                    self.state.epoch == epochs
                ):
                    loss = record.get("loss", math.nan)
                    is_best = math.isfinite(loss) and loss < self.best_loss
                    if is_best:
                        self.best_loss = loss
                    self.save(is_best=is_best)
                self.logger.epoch(record)
                if self.on_epoch is not None and self.is_main:
                    self.on_epoch(record)
                if self._sync_flags(None)[1]:
                    self._stop_for_signal()
                if (
                    evaluate
                    and self.cfg.train.eval_every
                    and self.state.epoch % self.cfg.train.eval_every == 0
                    and self.state.epoch < epochs
                ):
                    self.logger.scalars(
                        scalar_leaves(self.evaluate(references=False)),
                        self.state.step,
                        prefix="eval/",
                    )
            if self._saved_at != (
                self.state.epoch,
                self.state.step,
                self.state.batch,
            ):
                self.save()
        summary: dict[str, Any] = {
            "name": self.cfg.name,
            "seed": self.cfg.seed,
            "epochs": self.state.epoch,
            "steps": self.state.step,
            "train_seconds": time.perf_counter() - start,
            "world_size": self.world,
            "eval_split": self.data.eval_split,
            "versions": {"debiascl": __version__, "torch": torch.__version__},
        }
        detection = {
            k.removeprefix("negatives/"): v
            for k, v in self.last_record.items()
            if k.startswith("negatives/")
        }
        if detection:
            summary["fn_detection"] = detection
        skipped_images = getattr(self.data.train, "num_skipped", 0)
        if skipped_images:
            summary["skipped_images"] = int(skipped_images)  # reads skipped in this process
        if evaluate:
            summary.update(self.evaluate(references=self.cfg.eval.references))
        summary["wall_seconds"] = time.perf_counter() - start
        self.logger.summary(summary)
        return summary

    def _run_epoch(self, epoch: int) -> dict[str, Any] | None:
        """Train the rest of ``epoch`` (from batch ``state.batch``); None if stopped early."""
        self.model.train()
        # The resume position belongs to the epoch: any iteration of it starts there.
        self._skipper.set_epoch(epoch)
        self._skipper.set_start(epoch, self.state.batch * self.local_batch)
        progress = self.progress
        every_steps = self.cfg.checkpoint.every_steps
        self._epoch_t0 = time.perf_counter()
        # The bar never iterates the loader itself (tqdm.auto calls iter() on an iterable, which
        # would start -- and with workers prefetch -- a second pass of the epoch).
        bar = tqdm(
            desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
            disable=not progress_enabled(),
            leave=False,
            unit="batch",
            initial=self.state.batch,
            total=self.steps_per_epoch,
        )
        stopped = False
        with stop_signals_blocked():  # workers forked here start with the signals blocked
            batches = iter(self.train_loader)
        for batch in batches:
            bar.update(1)
            if self.state.step >= self.total_steps:
                stopped = True
                break
            complete, stop = self._sync_flags(batch)
            if stop:
                bar.close()
                self._stop_for_signal()
            self.state.batch += 1
            if not complete:
                progress.skipped += 1
                continue
            ctx = StepContext(
                epoch=epoch,
                step=self.state.step,
                training=True,
                progress=self.state.step / max(1, self.total_steps),
                # schedules in epochs (fairness terms' warm-up/ramp) move every step
                fractional_epoch=epoch + (self.state.batch - 1) / self.steps_per_epoch,
            )
            logs = self._guarded_step(batch, ctx)
            self.state.step += 1
            if logs.get("skipped"):
                progress.nonfinite += 1
            else:
                progress.count += 1
                for key, val in logs.items():
                    progress.totals[key] = progress.totals.get(key, 0.0) + float(val)
            if self.state.step % self.cfg.train.log_every == 0:
                assert self.logger is not None
                self.logger.scalars(logs, self.state.step, prefix="train/")
            if every_steps and self.state.step % every_steps == 0:
                self.save()
            elapsed = progress.seconds + time.perf_counter() - self._epoch_t0
            bar.set_postfix(
                loss=f"{logs['loss']:.3f}",
                img_s=f"{progress.count * self.cfg.train.batch_size / max(elapsed, 1e-9):.0f}",
            )
        bar.close()
        seconds = progress.seconds + time.perf_counter() - self._epoch_t0
        self._epoch_t0 = None
        progress.seconds = seconds
        if stopped:
            return None
        if progress.count == 0 and progress.nonfinite == 0 and progress.skipped > 0:
            self._no_readable_batch(epoch, progress.skipped)
        count = progress.count
        record: dict[str, Any] = {"epoch": epoch + 1, "step": self.state.step}
        record.update({k: v / max(1, count) for k, v in progress.totals.items()})
        record["images_per_second"] = count * self.cfg.train.batch_size / max(seconds, 1e-9)
        record["epoch_seconds"] = seconds
        if progress.skipped:
            record["skipped_batches"] = progress.skipped
        if progress.nonfinite:
            record["nonfinite_skipped_steps"] = progress.nonfinite
        record.update({f"negatives/{k}": v for k, v in self.objective.epoch_diagnostics().items()})
        save_removed_pairs(self.objective.removed_pairs, self.run_dir)  # every rank: gathers
        if self.fairness is not None:
            record.update(self.fairness.epoch_logs())
        return record

    def _no_readable_batch(self, epoch: int, batches: int) -> None:
        """An epoch in which every batch lost an image to data.on_bad_image=skip trains nothing."""
        skipped = int(getattr(self.data.train, "num_skipped", 0))
        files = getattr(getattr(self.data.train, "bad_images", None), "skipped_files", [])
        example = f", e.g. {files[0]}" if files else ""
        what = (
            f"all {len(self.data.train)} training images were unreadable and skipped"
            if skipped >= len(self.data.train)
            else f"{skipped} unreadable images were skipped and left no complete batch"
        )
        raise DataError(
            f"epoch {epoch + 1} trained no step: {what} (data.on_bad_image=skip, {batches} "
            f"batches dropped{example}); fix the files or their format (DICOM needs "
            "pip install 'debiascl[dicom]')"
        )

    def evaluate(self, references: bool = False) -> dict[str, Any]:
        """Frozen-feature evaluation of the current model (rank 0 computes, others wait).

        :func:`debiascl.eval.run.evaluate_model` on the model, the data and the loss's trained
        logit scale, with the run's ``eval`` settings; files go into the run directory.
        """
        results: dict[str, Any] = {}
        if self.is_main:
            results = evaluate_run_model(
                self.cfg,
                self.model,
                self.data,
                self.objective.logit_scale,
                self.device,
                self.run_dir,
                references,
            )
        dist_utils.barrier()
        return results

"""The training loop: data -> augment -> encode -> objective (+ fairness terms) -> optimiser step.

Runs on CPU or CUDA, in one process or under ``torchrun`` (DDP; gloo on CPU, NCCL on GPU). The
run directory receives the resolved config, ``metrics.jsonl``, TensorBoard events, checkpoints and
``summary.json``.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from debiascl import __version__
from debiascl import distributed as dist_utils
from debiascl.checkpoint.legacy import split_logit_scale
from debiascl.compose import build_augment, build_data, build_model, build_objective
from debiascl.compose.evaluation import evaluate_run_model
from debiascl.compose.objective import build_reference
from debiascl.config import RunConfig
from debiascl.data.augment import EvalTransform
from debiascl.data.build import DataBundle, make_loader
from debiascl.errors import CheckpointError, ConfigError, DataError, TrainingError
from debiascl.fairness_build import build_fairness_terms
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.train import checkpoint as ckpt
from debiascl.train.atomic import atomic_write_text, remove_stale_temp_files
from debiascl.train.logging import RunLogger
from debiascl.train.optim import build_optimizer, warmup_cosine
from debiascl.train.removed_pairs import attach_removed_pairs, save_removed_pairs
from debiascl.train.resume import (
    STOP_SIGNALS,
    ignore_stop_signals,
    make_resumable,
    stop_signals_blocked,
)
from debiascl.train.run_lock import RunDirLock
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
    epoch: int = 0  # completed epochs (= the epoch in progress or next to run)
    step: int = 0  # optimisation steps done
    batch: int = 0  # batches of epoch `epoch` consumed (incomplete batches included)


@dataclass
class EpochProgress:
    """Running sums of the epoch in progress (checkpointed so a resumed epoch logs the same)."""

    totals: dict[str, float] = field(default_factory=dict)
    count: int = 0  # steps whose logs are in totals
    skipped: int = 0  # incomplete batches (unreadable images) skipped
    nonfinite: int = 0  # steps skipped for a non-finite loss/gradient (on_nonfinite=skip)
    seconds: float = 0.0  # training time of this epoch before the current process


class RunInterrupted(TrainingError):
    """A stop signal arrived; a checkpoint was saved. Exit code 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


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

    # ----------------------------------------------------------------- one step
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

    def train_step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        ids = batch["index"].to(self.device)
        labels = batch.get("label")
        # -1 marks an unlabelled row: diagnostics and the oracle count only pairs whose labels
        # are both known; a dataset without any label passes None.
        if labels is not None and self.info.labels is not None:
            labels = labels.to(self.device)
        else:
            labels = None
        a, b = self._embed(batch)
        reference = self._embed_reference()  # None unless the detector needs stable embeddings
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
        """One device sync: the sum of gradient norms is finite iff every gradient is."""
        params = [*self.model.parameters(), *self.objective.parameters()]
        norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
        return not norms or bool(torch.isfinite(torch.stack(norms).sum()))

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
                "lower train.batch_size, use train.amp=bf16 or a smaller model"
            ) from err

    # ----------------------------------------------------------------- checkpoints
    def _loader_generator_state(self) -> torch.Tensor | None:
        gen = getattr(self.train_loader, "generator", None)
        return gen.get_state() if gen is not None else None

    def _stats_state(self) -> torch.Tensor:
        """(world, K) running detection sums, one row per rank (a collective: every rank)."""
        local = self.objective.stats.state().to(self.device).unsqueeze(0)
        return dist_utils.gather_no_grad(local).cpu()

    def _local_stats(self, saved: torch.Tensor) -> torch.Tensor:
        """This rank's row of saved (world, K) sums; another world size (or a 1-D tensor of an
        older checkpoint): rank 0 continues from the total, the others from zero."""
        if saved.dim() == 2 and saved.shape[0] == self.world:
            return saved[dist_utils.rank()]
        total = saved.reshape(-1, saved.shape[-1]).sum(0)
        return total if dist_utils.rank() == 0 else torch.zeros_like(total)

    def _fairness_log_state(self) -> dict[str, Any] | None:
        return self.fairness.log_state() if self.fairness is not None else None

    def state_dict(self, detection: torch.Tensor | None = None) -> dict[str, Any]:
        """Everything needed to continue bit-identically from the current step boundary.

        ``detection``: the (world, K) sums of :meth:`_stats_state`; without it they are gathered
        here, which under DDP must then be called on every rank.
        """
        rng = ckpt.capture_rng()
        rng["loader"] = self._loader_rng
        elapsed = self.progress.seconds
        if self._epoch_t0 is not None:
            elapsed += time.perf_counter() - self._epoch_t0
        return {
            "format": ckpt.FORMAT_VERSION,
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "fairness": self.fairness.state_dict() if self.fairness is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "batch": self.state.batch,
            "progress": {
                "totals": dict(self.progress.totals),
                "count": self.progress.count,
                "skipped": self.progress.skipped,
                "nonfinite": self.progress.nonfinite,
                "seconds": elapsed,
                "detection": self._stats_state() if detection is None else detection,
                "fairness_logs": self._fairness_log_state(),
            },
            "best_loss": self.best_loss,
            "last_record": dict(self.last_record),
            "rng": rng,
            "fingerprint": self.fingerprint,
            "fingerprint_parts": self.fingerprint_parts,
            "config": self.cfg.model_dump(mode="json"),
            "version": __version__,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            model_state, objective_state = split_logit_scale(
                state["model"], state["objective"], self.objective
            )
            self.model.load_state_dict(model_state)
            self.objective.load_state_dict(objective_state)
            if state.get("adversary") is not None:
                raise CheckpointError(
                    "the checkpoint holds the pre-terms adversary (before fairness.terms, issue "
                    "11); its run cannot be resumed with this version, train it again"
                )
            if self.fairness is not None and state.get("fairness") is not None:
                self.fairness.load_state_dict(state["fairness"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"the checkpoint does not fit this model/objective ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}); resume with the run's own config.yaml"
            ) from None
        batch = int(state.get("batch", 0))
        if batch > self.steps_per_epoch:
            raise CheckpointError(
                f"the checkpoint stopped after batch {batch} of an epoch that now has only "
                f"{self.steps_per_epoch}; resume with the run's batch size and data"
            )
        self.state = TrainState(epoch=state["epoch"], step=state["step"], batch=batch)
        prog = state.get("progress") or {}
        self.progress = EpochProgress(
            totals=dict(prog.get("totals") or {}),
            count=int(prog.get("count", 0)),
            skipped=int(prog.get("skipped", 0)),
            nonfinite=int(prog.get("nonfinite", 0)),
            seconds=float(prog.get("seconds", 0.0)),
        )
        saved_sums = prog.get("detection")
        if saved_sums is not None:
            self.objective.stats.load_state(self._local_stats(saved_sums))
        term_logs = prog.get("fairness_logs")
        if term_logs is not None and self.fairness is not None:
            self.fairness.load_log_state(term_logs)
        self.best_loss = float(state.get("best_loss", math.inf))
        self.last_record = dict(state.get("last_record") or {})
        ckpt.restore_rng(state["rng"])
        self._loader_rng = state["rng"].get("loader")
        if self._loader_rng is not None and getattr(self.train_loader, "generator", None):
            self.train_loader.generator.set_state(self._loader_rng)

    def save(self, is_best: bool = False) -> Path | None:
        """Checkpoint the current step boundary (rank 0 writes; every rank learns of failure)."""
        path = None
        error: TrainingError | None = None
        detection = self._stats_state()  # every rank's sums (gathered on every rank)
        if self.is_main:
            try:
                path = ckpt.save_checkpoint(
                    self.state_dict(detection),
                    self.run_dir / "checkpoints",
                    ckpt.checkpoint_name(self.state.epoch, self.state.step),
                    self.cfg.checkpoint.keep_last,
                    is_best=is_best and self.cfg.checkpoint.keep_best,
                )
            except TrainingError as err:
                error = err
        if dist_utils.is_distributed():
            failed = torch.tensor(float(error is not None), device=self.device)
            import torch.distributed as dist

            dist.all_reduce(failed, op=dist.ReduceOp.MAX)
            if failed.item() > 0 and error is None:
                error = TrainingError("rank 0 could not write a checkpoint; see its message")
        dist_utils.barrier()
        if error is not None:
            raise error
        self.last_checkpoint = path
        self._saved_at = (self.state.epoch, self.state.step, self.state.batch)
        return path

    def resume(self, resume: str) -> Path:
        path, state = ckpt.load_for_resume(
            resume, self.run_dir, self.fingerprint, self.fingerprint_parts
        )
        self.load_state_dict(state)
        self.last_checkpoint = path
        self._saved_at = (self.state.epoch, self.state.step, self.state.batch)
        return path

    # ----------------------------------------------------------------- signals
    @contextlib.contextmanager
    def _signal_guard(self) -> Iterator[None]:
        """While training, SIGTERM/SIGUSR1 only set a flag; the loop saves and stops."""
        self._stop_signal = None
        if not self.cfg.checkpoint.save_on_signal or (
            threading.current_thread() is not threading.main_thread()
        ):
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            self._stop_signal = signum

        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _sync_flags(self, batch: dict[str, Any] | None) -> tuple[bool, bool]:
        """(batch complete on every rank, stop requested on any rank) in one all-reduce.

        With ``data.on_bad_image=skip`` a batch can shrink (or vanish); every rank must see the
        same batch size for the all-gather, so such a step is skipped everywhere. A stop signal
        may reach only some ranks; all of them must stop at the same step.
        """
        size = 0 if batch is None else int(batch["index"].shape[0])
        flags = torch.tensor(
            [float(size == self.local_batch), -float(self._stop_signal or 0)],
            device=self.device,
        )
        if dist_utils.is_distributed():
            import torch.distributed as dist

            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        signum = int(-flags[1].item())
        if signum:
            self._stop_signal = signum  # every rank reports the signal some rank received
        return bool(flags[0].item() > 0), signum > 0

    def _batch_complete(self, batch: dict[str, Any] | None) -> bool:
        return self._sync_flags(batch)[0]

    def _stop_for_signal(self) -> None:
        """Save at this step boundary (unless just saved) and raise :class:`RunInterrupted`."""
        position = (self.state.epoch, self.state.step, self.state.batch)
        path = self.last_checkpoint
        if self._saved_at != position:
            path = self.save()
        signum = self._stop_signal or signal.SIGTERM
        name = signal.Signals(signum).name
        raise RunInterrupted(
            f"stopped by {name} at epoch {self.state.epoch + 1} step {self.state.step}; "
            f"checkpoint {path} saved — continue with --resume latest",
            signum,
        )

    # ----------------------------------------------------------------- loop
    def _prepare_run_dir(self) -> None:
        """Refuse a fresh run over an earlier run's checkpoints (every rank decides alike)."""
        ckpt_dir = self.run_dir / "checkpoints"
        existing = ckpt.list_checkpoints(ckpt_dir)
        if existing and not self.cfg.checkpoint.resume and not self.cfg.checkpoint.overwrite:
            raise CheckpointError(
                f"run directory {self.run_dir} already holds checkpoints "
                f"({existing[-1].name}); continue it with --resume latest, choose "
                "another --run-dir, or set checkpoint.overwrite=true to start over"
            )
        self._lock_run_dir()
        if self.is_main:
            remove_stale_temp_files(ckpt_dir)
            if existing and not self.cfg.checkpoint.resume:  # overwrite=true
                for old in [*existing, ckpt_dir / ckpt.BEST_NAME, self.run_dir / "metrics.jsonl"]:
                    old.unlink(missing_ok=True)
        dist_utils.barrier()

    def _lock_run_dir(self) -> None:
        """Rank 0 holds the run directory's lock until :meth:`fit` ends; a second run into the
        same directory stops here with one line (every rank learns of it)."""
        error: CheckpointError | None = None
        if self.is_main:
            try:
                self._lock.acquire()
            except CheckpointError as err:
                error = err
        if dist_utils.is_distributed():
            import torch.distributed as dist

            failed = torch.tensor(float(error is not None), device=self.device)
            dist.all_reduce(failed, op=dist.ReduceOp.MAX)
            if failed.item() > 0 and error is None:
                error = CheckpointError(f"run directory {self.run_dir} is in use by another run")
        if error is not None:
            raise error

    def _write_config(self) -> None:
        if self.is_main:
            text = yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False)
            atomic_write_text(self.run_dir / "config.yaml", text)
            self._write_artifacts()
        self.logger = RunLogger(self.run_dir, enabled=self.is_main)

    def _write_artifacts(self) -> None:
        """Files a method computes at build time (e.g. SSD's ``eta_summary.json``)."""
        import json

        for part in (self.objective.loss_fn, self.objective.detector):
            artifacts = getattr(part, "artifacts", None)
            for name, content in (artifacts() if callable(artifacts) else {}).items():
                atomic_write_text(self.run_dir / name, json.dumps(content, indent=2) + "\n")

    def _trim_metrics(self) -> int:
        """Drop epoch records beyond the resumed checkpoint (they will be redone) and torn lines;
        returns the last epoch still logged."""
        path = self.run_dir / "metrics.jsonl"
        if not self.is_main or not path.is_file():
            return 0
        import json

        text = path.read_text()
        kept, last = [], 0
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill while appending
            if isinstance(record, dict) and int(record.get("epoch", 0)) <= self.state.epoch:
                kept.append(line)
                last = max(last, int(record.get("epoch", 0)))
        new = "".join(f"{line}\n" for line in kept)
        if new != text:
            atomic_write_text(path, new)
        return last

    def _log_missing_record(self, last_logged: int) -> None:
        """A kill between the epoch checkpoint and its log line: log it from the checkpoint."""
        record = self.last_record
        if (
            self.logger is not None
            and self.state.batch == 0
            and record.get("epoch") == self.state.epoch
            and last_logged < self.state.epoch
        ):
            self.logger.epoch(record)

    def fit(self, evaluate: bool = True) -> dict[str, Any]:
        """Train for ``train.epochs`` (or ``max_steps``), checkpoint, evaluate, write summary.

        Resumes first when ``checkpoint.resume`` is set; the checkpoint is checked before
        anything in the run directory is written, so a refused resume changes nothing.
        """
        try:
            self._prepare_run_dir()
            if self.cfg.checkpoint.resume:
                self.resume(self.cfg.checkpoint.resume)
            last_logged = self._trim_metrics()  # a fresh run keeps no records of an earlier one
            self._write_config()
            self._log_missing_record(last_logged)
            assert self.logger is not None
            try:
                return self._fit(evaluate)
            finally:
                self.logger.close()
        finally:
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
                if self._sync_flags(None)[1]:
                    self._stop_for_signal()
                if (
                    evaluate
                    and self.cfg.train.eval_every
                    and self.state.epoch % self.cfg.train.eval_every == 0
                    and self.state.epoch < epochs
                ):
                    self.logger.scalars(
                        _flatten(self.evaluate(references=False)), self.state.step, prefix="eval/"
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


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, val in tree.items():
        name = f"{prefix}{key}"
        if isinstance(val, dict):
            flat.update(_flatten(val, name + "/"))
        elif isinstance(val, int | float) and not isinstance(val, bool) and math.isfinite(val):
            flat[name] = float(val)
    return flat


def _is_oom(err: BaseException) -> bool:
    """CUDA/CPU out-of-memory, whichever type the allocator raised."""
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(err)
    return "out of memory" in text or "can't allocate memory" in text

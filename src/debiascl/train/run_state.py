"""The trainer's position and its checkpoint round trip.

:class:`TrainState` (epoch, step, batch) and :class:`EpochProgress` (running sums of the epoch
in progress) are saved with everything else needed to continue bit-identically from a step
boundary; :class:`CheckpointMixin` builds and restores that state and writes/reads checkpoints
(rank 0 writes, every rank learns of a failure).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from debiascl import __version__
from debiascl import distributed as dist_utils
from debiascl.checkpoint.legacy import split_logit_scale
from debiascl.errors import CheckpointError
from debiascl.train import checkpoint as ckpt
from debiascl.train import table_shards


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


class CheckpointMixin:
    """The checkpoint methods of :class:`~debiascl.train.trainer.Trainer`."""

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
        """Checkpoint the current step boundary (rank 0 writes; every rank learns of failure).

        Sharded tables: every rank first writes its rows as a shard file beside the checkpoint
        (:mod:`debiascl.train.table_shards`).
        """
        detection = self._stats_state()  # every rank's sums (gathered on every rank)
        path = table_shards.save_with_shards(
            self.objective,
            self.run_dir / "checkpoints",
            ckpt.checkpoint_name(self.state.epoch, self.state.step),
            lambda: self.state_dict(detection),
            self.cfg.checkpoint.keep_last,
            is_best and self.cfg.checkpoint.keep_best,
            self.device,
        )
        self.last_checkpoint = path
        self._saved_at = (self.state.epoch, self.state.step, self.state.batch)
        return path

    def resume(self, resume: str) -> Path:
        path, state = ckpt.load_for_resume(
            resume, self.run_dir, self.fingerprint, self.fingerprint_parts
        )
        self.load_state_dict(table_shards.complete_state(state, path, self.objective))
        self.last_checkpoint = path
        self._saved_at = (self.state.epoch, self.state.step, self.state.batch)
        return path

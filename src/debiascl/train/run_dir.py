"""The run directory: refuse to train over an earlier run, lock it, write the config and
build-time artifacts, and keep ``metrics.jsonl`` consistent with the checkpoint resumed from."""

from __future__ import annotations

import torch
import yaml

from debiascl import distributed as dist_utils
from debiascl.config.loader import resolved_config
from debiascl.errors import CheckpointError
from debiascl.train import checkpoint as ckpt
from debiascl.train.atomic import atomic_write_text, remove_stale_temp_files
from debiascl.train.logging import RunLogger


class RunDirMixin:
    """The run-directory methods of :class:`~debiascl.train.trainer.Trainer`."""

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

    def _already_complete(self) -> bool:
        """True when the resumed checkpoint ends the run (``train.epochs`` or ``max_steps``
        reached) and the run finished (``summary.json`` written); rank 0 decides for all."""
        done = self.state.epoch >= self.cfg.train.epochs or self.state.step >= self.total_steps
        finished = done and (not self.is_main or (self.run_dir / "summary.json").is_file())
        return bool(dist_utils.broadcast_object(finished))

    def _nothing_to_train(self) -> dict:
        """Say so in one line (rank 0) and return the finished run's saved summary."""
        import json

        self.nothing_to_train = True
        if not self.is_main:
            return {}
        raise_what = "train.epochs"
        if self.state.epoch < self.cfg.train.epochs:  # stopped by train.max_steps
            raise_what = "train.max_steps"
        print(
            f"run already complete at epoch {self.state.epoch}; nothing to train (use eval, or "
            f"raise {raise_what})",
            flush=True,
        )
        try:
            return json.loads((self.run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            return {}

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
            text = yaml.safe_dump(resolved_config(self.cfg), sort_keys=False)
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

"""Pre-emption: stop signals become a checkpoint at the next step boundary.

While training, SIGTERM/SIGUSR1 only set a flag; every step all ranks agree (one all-reduce) on
whether the batch is complete everywhere and whether any rank was asked to stop, then save and
raise :class:`RunInterrupted` together.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch

from debiascl import distributed as dist_utils
from debiascl.errors import TrainingError
from debiascl.train.resume import STOP_SIGNALS


class RunInterrupted(TrainingError):
    """A stop signal arrived; a checkpoint was saved. Exit code 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class SignalMixin:
    """The stop-signal methods of :class:`~debiascl.train.trainer.Trainer`."""

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
        if not dist_utils.is_distributed():  # nothing to agree on: no tensor, no device sync
            return size == self.local_batch, bool(self._stop_signal)
        flags = torch.tensor(
            [float(size == self.local_batch), -float(self._stop_signal or 0)],
            device=self.device,
        )
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

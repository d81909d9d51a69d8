"""Copies between a CPU-placed table and GPU ids/rows are safe to read (issue 10, item 8).

With ``table_placement: cpu`` on a GPU, ``SampleTable.read``/``write`` move the batch's ids and
rows from the GPU to the host. ``tensor.to("cpu", non_blocking=True)`` from a GPU returns before
the copy has run, so the CPU ``index_select``/``index_copy_`` right after it read unfilled memory
(garbage ids, stale rows) unless something synchronises. The fix routes every table copy through
``debiascl.state.tables.to_device``, which is blocking whenever the destination is the CPU.

This machine may have no GPU: the CPU tests check the copy rule itself on a source tensor that
claims to live on another device (the ``meta`` device, through a recording tensor subclass, since
a real device-to-host copy needs a device), and that the table's own copies on CPU are exact. The
CUDA test is the real fault: it queues a long GPU kernel before the ids/rows are produced, so an
asynchronous device-to-host copy is still pending when the host reads; it fails with the old
non-blocking copies and is skipped without CUDA.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from debiascl.state import SampleTable
from debiascl.state.tables import to_device


class RecordingTensor(torch.Tensor):
    """Records each ``Tensor.to`` call's ``non_blocking`` and answers it with a CPU tensor."""

    calls: ClassVar[list[tuple[str, str, bool]]] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to:
            src, dst = args[0], torch.device(args[1])
            cls.calls.append((src.device.type, dst.type, bool(kwargs.get("non_blocking", False))))
            return torch.zeros(src.shape)
        return super().__torch_function__(func, types, args, kwargs)


def test_device_to_host_copies_are_blocking():
    RecordingTensor.calls.clear()
    source = torch.empty(3, device="meta").as_subclass(RecordingTensor)
    out = to_device(source, torch.device("cpu"))
    assert out.device.type == "cpu"
    assert RecordingTensor.calls == [("meta", "cpu", False)]
    cpu = torch.arange(3)
    assert to_device(cpu, torch.device("cpu")) is cpu  # same device: no copy at all


def test_cpu_table_reads_and_writes_are_exact():
    table = SampleTable(50, ["a", "b"], placement="cpu", sync=False)
    ids = torch.randperm(50)[:20]
    rows = torch.randn(20, 2)
    table.write(ids, rows)
    torch.testing.assert_close(table.read(ids), rows, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("trial", range(3))
def test_cpu_table_with_cuda_ids_waits_for_the_copy(trial):
    n, b = 1 << 16, 4096
    table = SampleTable(n, ["x"], placement="cpu", sync=False, validate=False)
    table.data[:, 0] = torch.arange(n, dtype=torch.float32)
    dev = torch.device("cuda")
    for step in range(5):
        torch.cuda._sleep(50_000_000)  # ~tens of ms of GPU work queued before the ids exist
        ids = (torch.arange(b, device=dev) * 7 + 11 * step + trial) % n
        got = table.read(ids)
        torch.testing.assert_close(got[:, 0].cpu(), ids.cpu().float(), rtol=0, atol=0)
        torch.cuda._sleep(50_000_000)
        rows = (ids.float() * -1.0 - step)[:, None]
        table.write(ids, rows)  # ids and rows come to the host after the sleep
        want = -(torch.arange(b) * 7 + 11 * step + trial).remainder(n).float() - step
        torch.testing.assert_close(table.data[ids.cpu(), 0], want, rtol=0, atol=0)
        table.data[ids.cpu(), 0] = ids.cpu().float()  # restore for the next step's read

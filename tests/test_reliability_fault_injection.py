"""Short version of scripts/fault_injection.py: SIGKILL a digits run twice (once during a
checkpoint write), resume each time, and compare with the uninterrupted run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fault_injection.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("fault_injection", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_injection"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)
def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
    fi = _load_script()
    lines: list[str] = []
    result = fi.run_fault_injection(
        tmp_path,
        kills=2,
        seed=3,
        extra_overrides=["data.train_size=128", "train.epochs=2"],
        write_delay=0.15,
        log=lines.append,
    )
    assert result["problems"] == [], result
    assert result["kills"] == 2, lines
    assert result["during_write"] >= 1, lines  # the second kill waits for a temporary file
    assert result["rounds"] >= 1
    assert result["unreadable"] == 0
    assert result["identical"] and result["metrics_equal"]
    assert result["ok"]


def test_comparison_detects_a_difference():
    """The equality used for the verdict is not vacuous."""
    import torch

    fi = _load_script()
    a = {"model": {"w": torch.zeros(3)}, "step": 4}
    assert fi._equal(a, {"model": {"w": torch.zeros(3)}, "step": 4})
    assert not fi._equal(a, {"model": {"w": torch.tensor([0.0, 0.0, 1e-30])}, "step": 4})
    assert not fi._equal(a, {"model": {"w": torch.zeros(3, dtype=torch.float64)}, "step": 4})
    assert not fi._equal(a, {"model": {"w": torch.zeros(3)}, "step": 5})

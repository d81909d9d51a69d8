"""The report and the explorer page in a real headless browser (Debian's chromium): each page
renders to a screenshot with no console message; a page that logs an error is caught."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from debiascl.report.explorer import write_explorer
from debiascl.report.html import write_report
from report_helpers import write_run

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
    reason="needs Debian's chromium (apt-get install -y chromium); CI does not install it",
)


def _shoot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_report_and_explorer_render_without_console_errors(tmp_path: Path) -> None:
    runs = [write_run(tmp_path, "simclr", s) for s in (0, 1)] + [write_run(tmp_path, "clip", 0)]
    report = write_report(runs, tmp_path / "report.html")
    explorer, _ = write_explorer(runs[0])
    shots = [tmp_path / "report.png", tmp_path / "explorer.png"]
    proc = _shoot(str(report), str(shots[0]), "1000x1400", str(explorer), str(shots[1]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for shot in shots:
        img = np.asarray(Image.open(shot).convert("L"))
        assert img.shape[1] >= 1000
        assert (img < 128).mean() > 0.01  # text and plots were drawn, not a blank page


def test_console_error_fails_the_check(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text('<html><body><p>x</p><script>console.error("broken")</script></body></html>')
    proc = _shoot(str(page), str(tmp_path / "bad.png"))
    assert proc.returncode == 1 and "broken" in proc.stderr

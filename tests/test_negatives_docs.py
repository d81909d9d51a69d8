"""The hand-written-loop example in docs/glofnd.md runs as documented."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "glofnd.md"


def test_glofnd_doc_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/glofnd.md has no python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(DOC), "exec"), {"__name__": "__doc_example__"})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and "removed_fraction" in printed[-1]
    assert (tmp_path / "ckpt.pt").exists()

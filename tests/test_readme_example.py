"""The README's own-loop example runs as written (with a tiny model and data around it)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_training_loop_example_runs() -> None:
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "GloFNDDetector" in code and "epoch_diagnostics" in code
    torch.manual_seed(0)
    images = torch.rand(64, 1, 8, 8)
    train_set = list(range(64))
    loader = [
        {"image": images[i : i + 16], "index": torch.arange(i, i + 16)} for i in range(0, 64, 16)
    ]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    namespace = {
        "train_set": train_set,
        "loader": loader,
        "model": model,
        "augment": lambda x: x + 0.05 * torch.randn_like(x),
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
        "epochs": 7,
        "print": lambda *a: printed.append(a),
    }
    printed: list = []
    before = [p.detach().clone() for p in model.parameters()]
    exec(compile(code, "README.md", "exec"), namespace)
    assert len(printed) == 7
    assert printed[-1][0]["removed_fraction"] > 0  # filtering started at epoch 5
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_readme_own_data_config_is_valid() -> None:
    import yaml

    from debiascl.config import config_from_dict

    block = re.search(r"```yaml\n(.*?)```", README.read_text(), re.S).group(1)
    cfg = config_from_dict(yaml.safe_load(block))
    assert cfg.data.dataset == "manifest" and cfg.negatives.name == "glofnd"
    assert [t.name for t in cfg.fairness.terms] == ["adversary"]
    assert cfg.fairness.attributes == ["sex", "race"]

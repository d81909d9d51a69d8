"""``train.micro_batch_size`` (gradient caching in the trainer) gives the full-batch step.

One optimisation step with micro-batches of B/4 must leave the same gradients, weights and
per-sample tables (SogCLR's u, GloFND's thresholds: updated once per global batch) as the same
step without micro-batching, in both modes; and 2 gloo processes with micro-batching must match
one process without it. Batch norm sees micro-batch statistics in training mode (documented), so
the small CNN runs with its batch norm in evaluation mode here: every other layer is exercised.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from debiascl.config import load_config
from debiascl.data.build import make_loader
from debiascl.errors import ConfigError
from debiascl.objectives import StepContext
from debiascl.train.trainer import Trainer
from distributed_helpers import run_distributed

CONFIGS = {"image_image": "digits_simclr", "image_text": "digits_clip"}
METHODS = {
    "infonce": ["loss.name=infonce"],
    "sogclr+glofnd": [
        "loss.name=sogclr",
        "negatives.name=glofnd",
        "negatives.alpha=0.1",
        "negatives.glofnd.init=batch_quantile",
    ],
    # the stable (EMA) reference embeddings are computed micro-batch by micro-batch too
    "sogclr+stable_glofnd": [
        "loss.name=sogclr",
        "negatives.name=stable_glofnd",
        "negatives.alpha=0.1",
        "negatives.stable_glofnd.init=batch_quantile",
    ],
}
B = 32


def _trainer(mode: str, method: str, run_dir: Path, batch: int, micro: int, more=()) -> Trainer:
    overrides = [
        "train.device=cpu",
        f"train.batch_size={batch}",
        "data.train_size=128",
        "data.num_workers=0",
        "optim.name=sgd",  # weights linear in the gradient (Adam's first step is ~ lr * sign)
        "optim.lr=0.05",
        f"train.micro_batch_size={micro}",
        *METHODS[method],
        *more,
    ]
    return Trainer(load_config(CONFIGS[mode], overrides), run_dir=run_dir)


def _one_step(trainer: Trainer, batch: dict) -> dict:
    trainer.model.eval()  # batch norm on running statistics: the same for any micro-batch
    rows: list[int] = []
    hook = trainer.model.register_forward_hook(
        lambda m, args, out: rows.append(int(args[0].shape[0]))
    )
    torch.manual_seed(7)  # the same augmentation draw in both runs
    ctx = StepContext(epoch=0, step=0, training=True, progress=0.0, fractional_epoch=0.0)
    logs = trainer.train_step(batch, ctx)
    hook.remove()
    return {
        "loss": logs["loss"],
        "rows": rows,
        "grads": {n: p.grad.clone() for n, p in trainer.model.named_parameters()},
        "weights": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
        "tables": {
            k: v.clone()
            for k, v in trainer.objective.state_dict().items()
            if isinstance(v, torch.Tensor)
        },
    }


def _assert_same_step(got: dict, want: dict) -> None:
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    moved = 0
    for name, w in want["weights"].items():
        torch.testing.assert_close(got["grads"][name], want["grads"][name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["weights"][name], w, rtol=1e-5, atol=1e-6)
        moved += int(want["grads"][name].abs().sum() > 0)
    assert moved == len(want["weights"])  # every parameter has a gradient to compare
    assert want["tables"].keys() == got["tables"].keys()
    for key, table in want["tables"].items():
        torch.testing.assert_close(got["tables"][key], table, rtol=1e-5, atol=1e-6, msg=key)


def _fixed_batch(trainer: Trainer, size: int) -> dict:
    return next(iter(make_loader(trainer.data.train, size, train=False, seed=0)))


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("mode", list(CONFIGS))
def test_micro_batches_give_the_full_batch_step(tmp_path: Path, mode: str, method: str) -> None:
    full = _trainer(mode, method, tmp_path / "full", B, 0)
    micro = _trainer(mode, method, tmp_path / "micro", B, B // 4)
    batch = _fixed_batch(full, B)
    want, got = _one_step(full, batch), _one_step(micro, batch)
    _assert_same_step(got, want)
    views = 2 if mode == "image_image" else 1  # SimCLR encodes both views in one forward
    assert want["rows"] == [views * B]
    assert got["rows"] == [views * B // 4] * 8  # 4 without graph, 4 re-run with the gradients
    if method != "infonce":  # the tables moved (once, on the global batch)
        assert any(
            not torch.equal(table, _trainer(mode, method, tmp_path / "init", B, 0)
                            .objective.state_dict()[key])
            for key, table in want["tables"].items()
        )  # fmt: skip


def test_micro_batch_size_must_divide_the_batch_per_process(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"micro_batch_size=5 does not divide the 32 samples"):
        _trainer("image_image", "infonce", tmp_path, B, 5)


def test_micro_batches_refuse_fairness_terms(tmp_path: Path) -> None:
    more = ["fairness.terms=[{name: fisher_gap, weight: 10}]"]
    with pytest.raises(ConfigError, match=r"cannot be combined with fairness.terms yet"):
        _trainer("image_image", "infonce", tmp_path, B, 8, more)


def _ddp_step(rank: int, world: int, root: str) -> dict:
    trainer = _trainer("image_image", "sogclr+glofnd", Path(root) / "ddp", B, B // world // 4,
                       ["data.augment=none"])  # fmt: skip
    batch = _fixed_batch(trainer, B)
    local = slice(rank * B // world, (rank + 1) * B // world)
    out = _one_step(trainer, {k: v[local] for k, v in batch.items()})
    out.pop("loss")  # the local share; the weights and tables are global
    return out


@pytest.mark.distributed
def test_two_processes_with_micro_batches_equal_one_process(tmp_path: Path) -> None:
    results = run_distributed(_ddp_step, 2, args=(str(tmp_path),), tmp_path=tmp_path)
    single = _trainer("image_image", "sogclr+glofnd", tmp_path / "one", B, 0, ["data.augment=none"])
    want = _one_step(single, _fixed_batch(single, B))
    for got in results:
        assert got["rows"] == [2 * B // 2 // 4] * 8
        got["loss"] = want["loss"]
        _assert_same_step(got, want)

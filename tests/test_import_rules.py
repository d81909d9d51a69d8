"""The package structure stays true (docs/architecture.md, "Layers and import rules").

Reads every module under ``src/debiascl`` with :mod:`ast` (imports inside functions count too)
and checks:

* no import circle between modules, nor between subpackages (``debiascl.<package>``);
* only the composition layer and above import :mod:`debiascl.config`: ``debiascl.compose``,
  ``debiascl.fairness_build``, ``debiascl.train``, ``debiascl.report`` (it reads run
  directories' ``config.yaml``), ``debiascl.cli`` and ``debiascl.demo`` (and ``config`` itself);
* nothing outside ``debiascl.train``, ``debiascl.cli`` and ``debiascl.demo`` imports
  :mod:`debiascl.train`.

The last test adds a toy detector touching only its own definition plus a registration and
trains two steps through the normal config path.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest
import torch

from debiascl.negatives.context import StepContext
from debiascl.negatives.detector import FalseNegativeDetector
from debiascl.pairs import PairwiseBatch

SRC = Path(__file__).resolve().parents[1] / "src"

#: Modules (and their submodules) allowed to import debiascl.config.
CONFIG_READERS = (
    "debiascl.config",
    "debiascl.compose",
    "debiascl.fairness_build",
    "debiascl.train",
    "debiascl.report",
    "debiascl.cli",
    "debiascl.demo",
)
#: Modules (and their submodules) allowed to import debiascl.train.
TRAIN_IMPORTERS = ("debiascl.train", "debiascl.cli", "debiascl.demo")


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "debiascl").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _known(name: str) -> str:
    """The longest module of the package that ``name`` lies in (``a.b.func`` -> ``a.b``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _targets(module: str, node: ast.AST) -> set[str]:
    out: set[str] = set()
    if isinstance(node, ast.Import):
        out = {a.name for a in node.names if a.name.split(".")[0] == "debiascl"}
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if MODULES[module].name != "__init__.py":
                package = package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        if base.split(".")[0] == "debiascl":
            out = {
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            }
    return {_known(t) for t in out}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = collections.defaultdict(set)
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _targets(module, node):
                if target != module:
                    graph[module].add(target)
    return graph


GRAPH = _graph()


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_the_checker_sees_real_imports() -> None:
    # guards against a checker that finds nothing: known edges, relative and function-level
    assert "debiascl.objectives.objective" in GRAPH["debiascl.compose.objective"]
    assert "debiascl.negatives.detector" in GRAPH["debiascl.objectives.base"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_module_circles() -> None:
    circles = _cycles(GRAPH)
    assert not circles, f"import circles between modules: {circles}"


def test_evaluation_and_checkpoints_sit_below_training() -> None:
    # eval/ takes a model and data (issue 11, item 4); checkpoint/ is read by train and eval
    assert "debiascl.eval.run" in GRAPH["debiascl.compose.evaluation"]  # the checker sees it
    low = ("debiascl.eval", "debiascl.checkpoint")
    above = ("debiascl.train", "debiascl.compose", "debiascl.config", "debiascl.fairness_build")
    offenders = sorted(
        (m, t)
        for m, targets in GRAPH.items()
        if _within(m, low)
        for t in targets
        if _within(t, above)
    )
    assert not offenders, f"eval/ or checkpoint/ import training or the config: {offenders}"


def test_no_package_circles() -> None:
    packages: dict[str, set[str]] = collections.defaultdict(set)
    for module, targets in GRAPH.items():
        for target in targets:
            if _package(target) != _package(module):
                packages[_package(module)].add(_package(target))
    assert not _cycles(packages), f"import circles between packages: {_cycles(packages)}"


def test_only_the_composition_layer_and_above_read_the_config() -> None:
    readers = sorted(
        m
        for m, targets in GRAPH.items()
        if any(_within(t, ("debiascl.config",)) for t in targets) and not _within(m, CONFIG_READERS)
    )
    assert not readers, f"modules below the composition layer import debiascl.config: {readers}"


def test_nothing_below_train_imports_train() -> None:
    importers = sorted(
        m
        for m, targets in GRAPH.items()
        if any(_within(t, ("debiascl.train",)) for t in targets) and not _within(m, TRAIN_IMPORTERS)
    )
    assert not importers, f"modules outside train/, cli, demo import debiascl.train: {importers}"


# ---------------------------------------------------------------- adding a detector: one file
class MostSimilarDetector(FalseNegativeDetector):
    """Toy detector: from ``start_epoch`` on, removes each anchor's most similar negative.

    Its definition and the one registration line below are all it takes to be trained from a
    config (``negatives.name=toy_most_similar``); ``start_epoch`` arrives from the config.
    """

    def __init__(self, start_epoch: int = 0) -> None:
        super().__init__()
        self.start_epoch = start_epoch
        self.calls = 0

    @torch.no_grad()
    def forward(self, batch: PairwiseBatch, ctx: StepContext) -> torch.Tensor:
        self.calls += int(ctx.training)
        keep = torch.ones_like(batch.neg_mask)
        if ctx.epoch >= self.start_epoch:
            sim = batch.sim.detach().float().masked_fill(~batch.neg_mask, float("-inf"))
            keep[torch.arange(sim.shape[0]), sim.argmax(dim=1)] = False
        return keep


def test_a_toy_detector_trains_from_the_config(tmp_path: Path) -> None:
    from debiascl.config import load_config
    from debiascl.registry import DETECTORS
    from debiascl.train.trainer import Trainer

    if "toy_most_similar" not in DETECTORS.names():
        DETECTORS.register("toy_most_similar")(MostSimilarDetector)  # the registration
    batch = 32
    cfg = load_config(
        "digits_simclr",
        [
            "negatives.name=toy_most_similar",
            "negatives.start_epoch=0",
            "data.train_size=128",
            f"train.batch_size={batch}",
            "train.max_steps=2",
            "train.log_every=1",
            f"output_dir={tmp_path}",
        ],
    )
    trainer = Trainer(cfg)
    detector = trainer.objective.detector
    assert isinstance(detector, MostSimilarDetector)
    removed = trainer.objective.stats  # detection sums of the steps to come
    trainer.fit(evaluate=False)
    assert detector.calls == 2  # one image_image direction per step
    # SimCLR layout: 2B anchors, each with 2B - 2 negatives, exactly one removed per anchor
    assert removed.compute()["removed_fraction"] == pytest.approx(1 / (2 * batch - 2))

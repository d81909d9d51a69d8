"""The composition layer: every setting reaches a component, each component sees only its own
section, and ``loss.directions`` is decoded once for the objective, the loss and the detector."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

from debiascl.compose import build_objective, detector_options, loss_options, run_facts
from debiascl.config import load_config
from debiascl.config.schema import LossConfig, ModelConfig, NegativesConfig
from debiascl.config.sections.methods import _signature_model
from debiascl.config.sections.negatives import COMPOSE_SETTINGS
from debiascl.data.info import DatasetInfo
from debiascl.models.build import create_model
from debiascl.registry import DETECTORS, LOSSES, Registry

RENAMED = {"table_placement": "placement", "table_sharding": "sharding"}
#: constructor arguments the config deliberately does not offer: SogCLR's ``relative`` (the
#: anchor-relative variant, chosen by code), and DCL's ``beta`` (must be 0; HCL's hardness)
UNSET = {"sogclr": {"relative"}, "dcl": {"beta"}}
#: config defaults that differ from the constructor's on purpose: text_sim's init is ``one``
#: through the config (as in every saved run) and ``batch_quantile`` when built directly
DEFAULTS = {("text_sim", "init")}


def _parameters(registry: Registry) -> set[str]:
    return {p for n in registry.names() for p in inspect.signature(registry.get(n)).parameters}


def _read_by_compose(section: str) -> set[str]:
    """Settings the composition layer reads itself (``cfg.<section>.<name>``)."""
    root = Path(__file__).resolve().parents[1] / "src" / "debiascl" / "compose"
    text = "".join(p.read_text() for p in root.glob("*.py"))
    return set(re.findall(rf"cfg\.{section}\.(\w+)", text))


@pytest.mark.parametrize(
    ("key", "section", "registry"),
    [("loss", LossConfig, LOSSES), ("negatives", NegativesConfig, DETECTORS)],
)
def test_every_setting_reaches_a_registered_component(key, section, registry) -> None:
    # components are built by matching argument names: a setting that no entry names and the
    # composition layer does not read itself would be dead
    wanted = {RENAMED.get(k, k) for k in section.model_fields} - {"name"} - _read_by_compose(key)
    assert not wanted - _parameters(registry)


@pytest.mark.parametrize(
    ("section", "registry"), [(LossConfig, LOSSES), (NegativesConfig, DETECTORS)]
)
def test_each_typed_method_model_is_its_registered_constructor(section, registry) -> None:
    # a method's own settings are exactly the constructor arguments its entry names that are
    # neither shared section keys nor run facts (plus what compose reads for it): a setting
    # the component ignores, or an argument the config cannot set, fails here
    assert set(section.TYPED_SETTINGS) <= set(registry.names())  # (toys may be registered too)
    for name, model in section.TYPED_SETTINGS.items():
        derived = set(
            _signature_model(section.KIND, name, frozenset(section.model_fields)).model_fields
        )
        compose_only = COMPOSE_SETTINGS.get(name, frozenset())
        if name == "none":  # NoDetector takes (and ignores) anything
            derived = set()
        assert set(model.model_fields) - compose_only == derived - UNSET.get(name, set()), name
        for field in set(model.model_fields) - compose_only:
            default = inspect.signature(registry.get(name)).parameters[field].default
            assert model.model_fields[field].default == default or (name, field) in DEFAULTS, (
                name,
                field,
            )


def test_every_model_setting_reaches_the_model() -> None:
    assert not set(ModelConfig.model_fields) - set(inspect.signature(create_model).parameters)


def test_the_detector_never_sees_the_loss_section() -> None:
    cfg = load_config("fmnist_clip_glofnd")
    info = DatasetInfo(num_samples=10)
    offered = set(detector_options(cfg, info))
    own = {RENAMED.get(k, k) for k in NegativesConfig.model_fields} - {"name"}
    own |= set(cfg.negatives.settings)  # negatives.glofnd
    assert offered == own | set(run_facts(cfg, info))
    loss_only = {RENAMED.get(k, k) for k in LossConfig.model_fields} - own - {"directions", "name"}
    loss_only |= set(cfg.loss.settings)  # loss.sogclr
    assert loss_only <= set(loss_options(cfg, info)) and not loss_only & offered


@pytest.mark.parametrize("direction", ["image_to_text", "text_to_image"])
def test_directions_reach_objective_loss_and_detector(direction: str) -> None:
    cfg = load_config("fmnist_clip_glofnd", ["loss.name=sogclr", f"loss.directions={direction}"])
    objective = build_objective(cfg, DatasetInfo(num_samples=16))
    assert list(objective.loss_fn.tables) == [direction]
    assert list(objective.detector.tables) == [direction]
    a = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    out = objective(a, a.roll(1, 0), torch.arange(8))
    assert set(out.keep_masks) == {direction}


@pytest.mark.parametrize(
    ("statement", "new_home"),
    [
        ("from debiascl.models import build_model", "debiascl.compose.build_model"),
        ("from debiascl.data.build import build_data", "debiascl.compose.build_data"),
        ("from debiascl.data.augment import build_augment", "debiascl.compose.build_augment"),
    ],
)
def test_moved_config_readers_name_their_new_home(statement: str, new_home: str) -> None:
    with pytest.raises(ImportError, match=new_home):
        exec(statement, {})

"""What every fairness term shares: settings, schedule, the per-step inputs and the registry.

A fairness term is a small ``nn.Module`` that owns its state (running moments, a discriminator
and its optimiser) and its weight schedule, and maps one step's :class:`TermInputs` to named loss
terms (name -> scalar tensor, already weighted) plus float logs. The trainer adds the named terms
to the contrastive loss and logs each (open_clip's pattern), so a new term needs its own file and
a ``@register_term("name")`` line, nothing in the trainer::

    @register_term("my_gap")
    class MyGap(FairnessTerm):
        class Settings(TermSettings):
            name: Literal["my_gap"]

        def forward(self, x: TermInputs) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
            gap = ...  # from x.z, x.attrs
            return {self.name: self.weight_at(x.epoch) * gap}, {"my_gap/value": float(gap)}

The config names it: ``fairness.terms: [{name: my_gap, weight: 2}]``; ``TermSettings`` (and the
term's own subclass) validates the entry's keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from debiascl.errors import ConfigError
from debiascl.fairness.adversary import AttributeSpec, adversarial_weight
from debiascl.registry import Registry

#: A term's weight at a (fractional) epoch: 0 during warm-up, then constant, linear or dann ramp.
scheduled_weight = adversarial_weight


class TermSettings(BaseModel):
    """Settings every term takes; a term's ``Settings`` subclass adds its own (extra keys fail)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str
    weight: float = Field(1.0, ge=0, description="the term's weight after warm-up")
    schedule: Literal["constant", "linear", "dann"] = Field(
        "constant", description="how the weight rises after warm-up"
    )
    warmup_epochs: float = Field(0, ge=0, description="(fractional) epochs with weight 0")
    ramp_epochs: float = Field(0, ge=0, description="epochs of the linear/dann ramp")


@dataclass(frozen=True)
class TermSetup:
    """What a term may need from the run, as plain values (built by the composition layer).

    attributes: the sensitive attributes, in the column order of ``TermInputs.attrs``.
    input_dim: D of the rows the terms see.
    num_classes: classes of the training labels (0 without labels).
    training_set: ``() -> (z (N, D), attrs (N, A), labels (N,) or None)``: the whole training
        set's clean inputs, without gradients (only for terms that refit; None if unavailable).
    sample_weights: ``(labels (n,) or None, attrs (n, A)) -> (n, A) weights or None``: the
        run's per-row weights (``fairness.balance``), for terms that draw their own rows.
    """

    attributes: Sequence[AttributeSpec]
    input_dim: int
    num_classes: int = 0
    training_set: Callable[[], tuple[torch.Tensor, torch.Tensor, Any]] | None = None
    sample_weights: Callable[[Any, torch.Tensor], torch.Tensor | None] | None = None


@dataclass
class TermInputs:
    """One step's rows for the fairness terms.

    z: (n, D) rows (the embedding or feature ``fairness.on`` names, in the encoder's graph).
    attrs: (n, A) attribute codes, -1 = missing.
    weights: (n, A) sample weights (``fairness.balance=label``; 0 where the label is -1) or None.
    labels: (n,) class codes (-1 = missing) or None when the batch has none.
    epoch: the fractional epoch the schedules read (0 outside training).
    step_epoch: the integer epoch of the step.
    training: False for evaluation passes (running state is read, not updated).
    """

    z: torch.Tensor
    attrs: torch.Tensor
    weights: torch.Tensor | None
    labels: torch.Tensor | None
    epoch: float
    step_epoch: int = 0
    training: bool = True


class FairnessTerm(nn.Module):
    """Base class: holds validated settings and the schedule; subclasses write :meth:`forward`."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type[TermSettings]] = TermSettings

    def __init__(self, settings: TermSettings, setup: TermSetup) -> None:
        super().__init__()
        self.settings = settings
        self.attributes = list(setup.attributes)

    def weight_at(self, epoch: float) -> float:
        """The scheduled weight at (fractional) ``epoch`` (see :func:`scheduled_weight`)."""
        s = self.settings
        return scheduled_weight(epoch, s.weight, s.schedule, s.warmup_epochs, s.ramp_epochs)

    def forward(self, x: TermInputs) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        raise NotImplementedError

    def after_step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """Called after the encoder's optimiser step, before ``scaler.update()`` (default no-op)."""


#: name -> term class; the config's ``fairness.terms[*].name`` must be one of these.
FAIRNESS_TERMS: Registry = Registry("fairness term")


def register_term(name: str) -> Callable[[type[FairnessTerm]], type[FairnessTerm]]:
    """Class decorator: register a :class:`FairnessTerm` subclass under ``name``."""

    def decorator(cls: type[FairnessTerm]) -> type[FairnessTerm]:
        cls.name = name
        FAIRNESS_TERMS.register(name)(cls)
        return cls

    return decorator


def parse_term_settings(entry: Any, where: str = "fairness.terms") -> TermSettings:
    """Validate one ``fairness.terms`` entry by its registered term's ``Settings``.

    Raises:
        ConfigError: not a mapping, no or an unknown ``name``, unknown keys or bad values.
    """
    from pydantic import ValidationError

    if isinstance(entry, TermSettings):
        return entry
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(
            f"{where}: each entry must be a mapping with a name, e.g. {{name: fisher_gap, "
            f"weight: 10}} (got {entry!r})"
        )
    cls = FAIRNESS_TERMS.get(str(entry["name"]))
    try:
        return cls.Settings.model_validate(entry)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                problems.append(f"unknown key {key!r}")
            else:
                problems.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
        raise ConfigError(f"{where} ({entry['name']}): " + "; ".join(problems)) from None

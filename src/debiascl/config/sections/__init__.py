"""The run config's sections, one module per part of the library (assembled in
:mod:`debiascl.config.schema`)."""

from debiascl.config.sections.base import Section
from debiascl.config.sections.data import DataConfig
from debiascl.config.sections.loss import LossConfig
from debiascl.config.sections.model import ModelConfig
from debiascl.config.sections.negatives import NegativesConfig

__all__ = ["DataConfig", "LossConfig", "ModelConfig", "NegativesConfig", "Section"]

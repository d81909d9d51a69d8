"""The composition layer: the one place that reads a :class:`~debiascl.config.RunConfig`.

Components below it (losses, detectors, fairness terms, models, datasets, augmentation) take
plain, typed arguments, so a user's own training loop never needs a run config. This package
turns the config's sections into those arguments and builds the named entries of the registries
in :mod:`debiascl.registry`:

* :func:`build_objective` / :func:`build_loss` / :func:`build_detector`: ``loss.name`` from
  ``LOSSES`` and ``negatives.name`` from ``DETECTORS``, wrapped in a
  :class:`~debiascl.objectives.ContrastiveObjective`;
* :func:`build_data`: ``data.dataset`` from ``DATASETS``, assembled into a ``DataBundle``;
* :func:`build_model` and :func:`build_augment`: the ``model`` and augmentation settings.

Each registered entry receives the settings of its section that its signature names, plus the
run facts of :func:`run_facts` (``num_samples``, ``mode``, ``directions``, ...). ``loss.directions``
is decoded here, once. Importing this package registers every built-in component.
"""

from debiascl.compose.data import build_augment, build_data
from debiascl.compose.model import build_model
from debiascl.compose.objective import (
    build_detector,
    build_loss,
    build_objective,
    detector_options,
    loss_options,
    run_directions,
    run_facts,
)

__all__ = [
    "build_augment",
    "build_data",
    "build_detector",
    "build_loss",
    "build_model",
    "build_objective",
    "detector_options",
    "loss_options",
    "run_directions",
    "run_facts",
]

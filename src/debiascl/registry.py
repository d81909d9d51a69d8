"""Name -> component registries so a config string picks an implementation.

Entries are classes or factories taking plain, typed keyword arguments (numbers, strings,
tensors), never a run config: ``LOSSES`` -> :class:`~debiascl.objectives.base.PairLoss`,
``DETECTORS`` -> :class:`~debiascl.negatives.detector.FalseNegativeDetector`, ``DATASETS`` ->
``(train, test | None)`` :class:`~debiascl.data.datasets.SampleDataset` pairs. The composition
layer (:mod:`debiascl.compose`) reads the run config and calls :meth:`Registry.build_with`, which
passes each entry exactly the options its signature names. Tests iterate over ``names()`` to run
every registered combination.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from debiascl.errors import ConfigError

T = TypeVar("T")


def call_with_options(fn: Callable[..., T], options: Mapping[str, object], what: str = "") -> T:
    """Call ``fn`` with the entries of ``options`` that its signature names by keyword (a
    ``**kwargs`` catch-all receives nothing); ``what`` names ``fn`` in the error.

    Raises:
        ConfigError: a required parameter of ``fn`` is missing from ``options``.
    """
    params = inspect.signature(fn).parameters
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    kwargs = {k: options[k] for k, p in params.items() if k in options and p.kind in named}
    missing = [
        k for k, p in params.items() if k not in kwargs and p.default is p.empty and p.kind in named
    ]
    if missing:
        raise ConfigError(
            f"{what or getattr(fn, '__name__', 'component')} needs {', '.join(missing)}, which "
            f"the configuration does not provide (available: {', '.join(sorted(options))})"
        )
    return fn(**kwargs)


class Registry(Generic[T]):
    """A mapping from names to builders with a helpful error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            return builder

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._builders:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            )
        return self._builders[name]

    def build(self, name: str, *args: object, **kwargs: object) -> T:
        return self.get(name)(*args, **kwargs)

    def build_with(self, name: str, options: Mapping[str, object]) -> T:
        """Build ``name`` passing the entries of ``options`` that its signature names.

        Options it does not name are ignored (a section's shared settings serve several entries).

        Raises:
            ConfigError: unknown ``name``, or a required parameter missing from ``options``.
        """
        return call_with_options(self.get(name), options, f"{self.kind} {name!r}")

    def names(self) -> list[str]:
        return sorted(self._builders)


LOSSES: Registry = Registry("loss")
DETECTORS: Registry = Registry("false-negative detector")
DATASETS: Registry = Registry("dataset")

"""Name -> builder registries so a config string picks an implementation.

``LOSSES`` builders have the signature ``(cfg: RunConfig, info: DatasetInfo) -> PairLoss`` and
``DETECTORS`` builders ``(cfg: RunConfig, info: DatasetInfo) -> FalseNegativeDetector``. Tests
iterate over ``names()`` to run every registered combination.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from debiascl.errors import ConfigError

T = TypeVar("T")


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

    def names(self) -> list[str]:
        return sorted(self._builders)


LOSSES: Registry = Registry("loss")
DETECTORS: Registry = Registry("false-negative detector")

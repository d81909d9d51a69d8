"""User-facing errors.

Every problem caused by the user's input (a config, a data file, a tensor passed to the public
API) raises :class:`DebiasclError` or a subclass. The CLI prints these as one line and exits with
a non-zero code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DebiasclError(Exception):
    """An error in what the user gave us, with a message that says how to fix it."""

    exit_code: int = 2


class ConfigError(DebiasclError):
    """Invalid configuration: unknown key, wrong type, value out of range."""


class DataError(DebiasclError):
    """Missing or malformed data: paths, manifests, images, sample ids."""


class CheckpointError(DebiasclError):
    """A checkpoint that cannot be read or does not match the run."""


class TrainingError(DebiasclError):
    """A training run that cannot continue (non-finite loss, exhausted disk)."""

    exit_code = 3


def check(condition: bool, message: str, error: type[DebiasclError] = DebiasclError) -> None:
    """Raise ``error(message)`` unless ``condition`` holds."""
    if not condition:
        raise error(message)

"""Exception types. Every error vlsafe raises on bad user input is a ``VlsafeError``.

Messages name the bad value and the rule it breaks, so that a user never has to read a
stack trace from deep inside transformers to learn what went wrong.
"""

from __future__ import annotations


class VlsafeError(Exception):
    """Base class of all errors vlsafe raises deliberately."""


class ConfigError(VlsafeError, ValueError):
    """A configuration value breaks a documented rule."""


class InputError(VlsafeError, ValueError):
    """User-supplied data (an image, a row, a tensor) is unusable."""


class ModelLoadError(VlsafeError, RuntimeError):
    """A model could not be found, recognised or loaded."""


class OutputError(VlsafeError, OSError):
    """An output location cannot be written (missing permission, not a folder, read-only, full disk)."""

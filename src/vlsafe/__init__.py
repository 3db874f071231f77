"""vlsafe: measure, localise, repair and prove the safety of vision-language models.

The public API is re-exported here; see README.md for a tour.
"""

from __future__ import annotations

__version__ = "0.1.0"

from vlsafe.core.errors import ConfigError, InputError, ModelLoadError, VlsafeError

__all__ = [
    "__version__",
    "VlsafeError",
    "ConfigError",
    "InputError",
    "ModelLoadError",
]

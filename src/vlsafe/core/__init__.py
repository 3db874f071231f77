"""vlsafe.core: the bottom layer. Errors, registries (with lazy entries and entry points), config and file IO,
figure/table/HTML rendering primitives, worker processes and resource helpers. Imports nothing else of vlsafe."""

from vlsafe.core.errors import ConfigError, InputError, ModelLoadError, VlsafeError
from vlsafe.core.registry import Registry

__all__ = ["ConfigError", "InputError", "ModelLoadError", "Registry", "VlsafeError"]

"""vlsafe.core: the bottom layer. Errors, registries (with lazy entries and entry points), YAML configs, file IO
(JSON, JSON lines, atomic writes), artefact file names, worker processes and torch thread helpers. Imports
nothing else of vlsafe."""

from vlsafe.core.errors import ConfigError, InputError, ModelLoadError, VlsafeError
from vlsafe.core.registry import Registry

__all__ = ["ConfigError", "InputError", "ModelLoadError", "Registry", "VlsafeError"]

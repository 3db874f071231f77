"""Reading pydantic configs from YAML with errors that name the bad value and the broken rule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from vlsafe.core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The mapping held by the YAML file ``path``; ``ConfigError`` if missing, unparsable or not a mapping."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what} file {str(file)!r} does not exist")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} file {str(file)!r} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} file {str(file)!r} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} file {str(file)!r} must hold a mapping of fields, got {type(data).__name__}"
        )
    return data


def validation_problems(exc: ValidationError, root: str = "config") -> str:
    """``field.path: message`` for each error in ``exc``, joined by ``"; "``; ``root`` names a whole-object error."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or root}: {err['msg']}" for err in exc.errors())


def validate_config(cls: type[M], data: dict[str, Any], what: str | None = None) -> M:
    """``cls.model_validate(data)``, turning pydantic's errors into one ``ConfigError`` naming each field."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {what or cls.__name__}: {validation_problems(exc)}") from None


def one_of(value: Any, allowed: Sequence[str]) -> Any:
    """``value`` when it is one of ``allowed`` (for pydantic validators: otherwise a ValueError naming the value
    and the allowed ones)."""
    if value not in allowed:
        raise ValueError(f"{value!r} is unknown; it must be one of {', '.join(allowed)}")
    return value


def comma_items(text: str) -> list[str]:
    """The items of a comma-separated list, stripped, blanks dropped (``"1, 2,,3"`` -> ``["1", "2", "3"]``): the
    one place where vlsafe splits such lists (command-line flags, text fields of configs)."""
    return [item.strip() for item in str(text).split(",") if item.strip()]

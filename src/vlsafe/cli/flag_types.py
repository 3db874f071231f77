"""Click parameter types for config fields, and the flag kind of each field annotation.

:func:`flag_kind` decides how a pydantic field is read from the command line (see :mod:`vlsafe.cli.options`
for the table); :class:`CommaList` and :class:`KeyValue` are the one place where comma-separated lists and
``KEY=VALUE`` pairs are parsed, with errors that name the bad item and the rule.
"""

from __future__ import annotations

import enum
import inspect
import json
import types
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import click
from pydantic import BaseModel

from vlsafe.core.config import comma_items

__all__ = ["CommaList", "FlagKind", "KeyValue", "LiteralChoice", "choice_text", "convert_item", "flag_kind"]

# -- parameter types ------------------------------------------------------------------------
_NUMBER_WORDS = {int: "an integer", float: "a number"}


def convert_item(item: str, kind: Any) -> Any:
    """One list item or dict value as ``kind``; ``ValueError`` with the rule when it does not parse."""
    if kind is int or kind is float:
        try:
            return kind(item)
        except ValueError:
            raise ValueError(f"is not {_NUMBER_WORDS[kind]}") from None
    if kind is Path:
        return Path(item)
    if kind is Any:
        try:
            return json.loads(item)
        except json.JSONDecodeError:
            return item
    if isinstance(kind, tuple):  # choices
        for choice in kind:
            if item == choice_text(choice):
                return choice
        raise ValueError(f"is not one of {', '.join(repr(choice_text(c)) for c in kind)}")
    return item


def choice_text(value: Any) -> str:
    return str(value.value) if isinstance(value, enum.Enum) else str(value)


class CommaList(click.ParamType):
    """A comma-separated list; each item is converted to ``item`` (``int``, ``float``, ``str``, ``Path`` or a
    tuple of choices). Empty items are dropped; a bad item fails naming the item and the rule."""

    name = "list"

    def __init__(self, item: Any) -> None:
        self.item = item

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        out = []
        for text in comma_items(value):
            try:
                out.append(convert_item(text, self.item))
            except ValueError as exc:
                self.fail(f"item {text!r} of {value!r} {exc}", param, ctx)
        return out


class KeyValue(click.ParamType):
    """One ``KEY=VALUE`` pair; the value is converted to ``value`` (as :class:`CommaList` items; ``Any``:
    parsed as JSON when it can be, else kept as text)."""

    name = "key=value"

    def __init__(self, key: Any = str, value: Any = Any) -> None:
        self.key = key
        self.value = value

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        key, sep, text = str(value).partition("=")
        if not sep or not key.strip():
            self.fail(f"{value!r} must look like KEY=VALUE", param, ctx)
        try:
            return convert_item(key.strip(), self.key), convert_item(text.strip(), self.value)
        except ValueError as exc:
            self.fail(f"{value!r}: {exc}", param, ctx)


class LiteralChoice(click.Choice):  # type: ignore[type-arg]
    """A choice among ``Literal`` values that returns the value itself (not its text)."""

    def __init__(self, values: Sequence[Any]) -> None:
        self._values = {choice_text(v): v for v in values}
        super().__init__(list(self._values))

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return self._values[str(super().convert(value, param, ctx))]


# -- annotation -> flag kind ----------------------------------------------------------------
@dataclass(frozen=True)
class FlagKind:
    """How one field is read from the command line."""

    param_type: click.ParamType | None = None  # None: a --x/--no-x flag
    multiple: bool = False
    collect: str = "value"  # "value", "list" (join the occurrences' lists) or "dict" (pairs)
    metavar: str | None = None
    model: type[BaseModel] | None = None  # a nested model (flattened or YAML-only)


def _strip(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _members(annotation: Any) -> list[Any]:
    annotation = _strip(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return [_strip(a) for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _item_kind(annotation: Any) -> Any:
    """What a list item / dict key or value is converted to: a scalar type, a tuple of choices, or None."""
    members = _members(annotation)
    if len(members) != 1:
        return None
    a = members[0]
    if a in (int, float, str) or a is Any:
        return a
    if inspect.isclass(a) and issubclass(a, Path):
        return Path
    if get_origin(a) is Literal:
        return tuple(get_args(a))
    if inspect.isclass(a) and issubclass(a, enum.Enum):
        return tuple(a)
    return None


def _metavar(item: Any) -> str:
    if isinstance(item, tuple):
        return "[" + "|".join(choice_text(c) for c in item) + "]"
    return {int: "INT", float: "FLOAT", Path: "PATH"}.get(item, "TEXT")


def _single_kind(a: Any) -> FlagKind | None:
    if a is bool:
        return FlagKind()
    if a in (int, float, str):
        return FlagKind(param_type=click.types.convert_type(a))
    if inspect.isclass(a) and issubclass(a, Path):
        return FlagKind(param_type=click.Path(path_type=Path))
    if get_origin(a) is Literal:
        return FlagKind(param_type=LiteralChoice(get_args(a)))
    if inspect.isclass(a) and issubclass(a, enum.Enum):
        return FlagKind(param_type=click.Choice([choice_text(m) for m in a]))
    if inspect.isclass(a) and issubclass(a, BaseModel):
        return FlagKind(model=a)
    origin, args = get_origin(a), get_args(a)
    if origin in (list, tuple, set, frozenset, Sequence, Collection) and args:
        item = _item_kind(args[0])
        if item is None or item is Any:
            return None
        return FlagKind(
            param_type=CommaList(item), multiple=True, collect="list", metavar=f"{_metavar(item)}[,...]"
        )
    if origin in (dict, Mapping) and len(args) == 2:
        key, value = _item_kind(args[0]), _item_kind(args[1])
        if key is None or value is None:
            return None
        return FlagKind(param_type=KeyValue(key, value), multiple=True, collect="dict", metavar="KEY=VALUE")
    return None


def flag_kind(annotation: Any) -> FlagKind | None:
    """The flag kind of a field annotation; ``None`` for a field without a flag form (YAML-only)."""
    kinds = [k for k in (_single_kind(m) for m in _members(annotation)) if k is not None]
    if len(kinds) <= 1:
        return kinds[0] if kinds else None
    if any(k.model is not None for k in kinds):
        return None
    return FlagKind(param_type=click.STRING, metavar="TEXT")  # several kinds: the model parses the text

"""Click options generated from pydantic config models, so every option is declared once: as a config field.

:func:`config_options` decorates a click command with one flag per field of a config model; the command
receives the flags it was given as one :class:`ConfigFlags` mapping and turns it into the config with
:func:`config_from_flags`, which lays the flags over an optional YAML file and validates. A flag that is not
given is absent from the mapping, so the model's own default applies; ``--help`` shows that default.

How a field becomes a flag (``--field-name``; help from the field's ``description`` or the ``Attributes:``
entry of the model's docstring):

==============================================  ====================================================
annotation (``X | None`` as ``X``)              flag
==============================================  ====================================================
``int``, ``float``, ``str``, ``Path``           ``--name VALUE``
``bool``                                        ``--name / --no-name``
``Literal[...]``, ``Enum``                      ``--name [a|b|c]`` (a choice)
``list[int | float | str | Path | Literal]``    ``--name A,B,C``: comma-separated, repeatable
``dict[K, V]``                                  ``--name KEY=VALUE``, repeatable (``Any`` values: JSON)
a union of several of the kinds above           ``--name TEXT``: the model's validators parse the text
a nested model named in ``flatten``             its fields, each ``--<prefix>-<field>``
anything else (other nested models, lists of    no flag: set it in the YAML file
models, ``Any``)
==============================================  ====================================================

A bad list item, a bad choice or a malformed ``KEY=VALUE`` is a click usage error naming the flag and the
item; the ``vlsafe`` group prints it as one ``error:`` line with exit code 2, like a ``ConfigError``.

Example::

    @click.command("eval")
    @config_options(EvalConfig, config_file=True)
    @click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
    def eval_cmd(out_dir: Path, flags: ConfigFlags) -> None:
        run_eval(config_from_flags(EvalConfig, flags), out_dir)
"""

from __future__ import annotations

import enum
import functools
import inspect
import json
import re
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from vlsafe.core.config import read_yaml_mapping, validate_config
from vlsafe.core.errors import ConfigError

__all__ = [
    "CommaList",
    "ConfigFlags",
    "KeyValue",
    "config_from_flags",
    "config_options",
    "field_help",
]

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=BaseModel)


class ConfigFlags(dict[str, Any]):
    """The config fields a command was given as flags (fields of flattened models as nested mappings).

    Attributes:
        config_file: the ``--config`` YAML file, when the command has that option and it was given.
        names: field path (``apply.layers``) -> its flag (``--cmrm-layers``), for messages.
    """

    def __init__(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        config_file: Path | None = None,
        names: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(values or {})
        self.config_file = config_file
        self.names: dict[str, str] = dict(names or {})

    def set_path(self, path: Sequence[str], value: Any) -> None:
        """Set a (nested) field: ``set_path(("apply", "layers"), [1])`` -> ``{"apply": {"layers": [1]}}``."""
        node: dict[str, Any] = self
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value


# -- parameter types ------------------------------------------------------------------------
_NUMBER_WORDS = {int: "an integer", float: "a number"}


def _convert_item(item: str, kind: Any) -> Any:
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
            if item == _choice_text(choice):
                return choice
        raise ValueError(f"is not one of {', '.join(repr(_choice_text(c)) for c in kind)}")
    return item


def _choice_text(value: Any) -> str:
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
        for raw in str(value).split(","):
            text = raw.strip()
            if not text:
                continue
            try:
                out.append(_convert_item(text, self.item))
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
            return _convert_item(key.strip(), self.key), _convert_item(text.strip(), self.value)
        except ValueError as exc:
            self.fail(f"{value!r}: {exc}", param, ctx)


class _LiteralChoice(click.Choice):  # type: ignore[type-arg]
    """A choice among ``Literal`` values that returns the value itself (not its text)."""

    def __init__(self, values: Sequence[Any]) -> None:
        self._values = {_choice_text(v): v for v in values}
        super().__init__(list(self._values))

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return self._values[str(super().convert(value, param, ctx))]


# -- annotation -> flag kind ----------------------------------------------------------------
@dataclass(frozen=True)
class _Kind:
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
        return "|".join(_choice_text(c) for c in item)
    return {int: "INT", float: "FLOAT", Path: "PATH"}.get(item, "TEXT")


def _single_kind(a: Any) -> _Kind | None:
    if a is bool:
        return _Kind()
    if a in (int, float, str):
        return _Kind(param_type=click.types.convert_type(a))
    if inspect.isclass(a) and issubclass(a, Path):
        return _Kind(param_type=click.Path(path_type=Path))
    if get_origin(a) is Literal:
        return _Kind(param_type=_LiteralChoice(get_args(a)))
    if inspect.isclass(a) and issubclass(a, enum.Enum):
        return _Kind(param_type=click.Choice([_choice_text(m) for m in a]))
    if inspect.isclass(a) and issubclass(a, BaseModel):
        return _Kind(model=a)
    origin, args = get_origin(a), get_args(a)
    if origin in (list, tuple, set, frozenset, Sequence, Collection) and args:
        item = _item_kind(args[0])
        if item is None or item is Any:
            return None
        return _Kind(param_type=CommaList(item), multiple=True, collect="list", metavar=f"{_metavar(item)}[,...]")
    if origin in (dict, Mapping) and len(args) == 2:
        key, value = _item_kind(args[0]), _item_kind(args[1])
        if key is None or value is None:
            return None
        return _Kind(param_type=KeyValue(key, value), multiple=True, collect="dict", metavar="KEY=VALUE")
    return None


def _kind(annotation: Any) -> _Kind | None:
    """The flag kind of a field annotation; ``None`` for a field without a flag form (YAML-only)."""
    kinds = [k for k in (_single_kind(m) for m in _members(annotation)) if k is not None]
    if len(kinds) <= 1:
        return kinds[0] if kinds else None
    if any(k.model is not None for k in kinds):
        return None
    return _Kind(param_type=click.STRING, metavar="TEXT")  # several kinds: the model parses the text


# -- help -----------------------------------------------------------------------------------
_ROLE = re.compile(r":[a-z:]+:`~?([^`]+)`")


def _clean(text: str) -> str:
    """Docstring text as help: roles and literals unwrapped, whitespace folded, the first letter capitalised."""
    text = " ".join(_ROLE.sub(lambda m: m.group(1), text).replace("``", "").split())
    return text[:1].upper() + text[1:]


def _docstring_attributes(cls: type) -> dict[str, str]:
    """``name -> text`` of the ``Attributes:`` section of ``cls``'s own docstring (Google style)."""
    lines = inspect.cleandoc(cls.__dict__.get("__doc__") or "").splitlines()
    out: dict[str, str] = {}
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return out
    base = len(lines[start]) - len(lines[start].lstrip())
    entry_indent: int | None = None
    names: list[str] = []
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= base:
            break
        entry_indent = indent if entry_indent is None else entry_indent
        head, sep, text = line.strip().partition(":")
        if indent == entry_indent and sep:
            names = [re.sub(r"\s*\(.*\)$", "", n).strip() for n in head.split(",")]
            for name in names:
                out[name] = text.strip()
        else:
            for name in names:
                out[name] = f"{out[name]} {line.strip()}"
    return out


def field_help(model: type[BaseModel], name: str) -> str:
    """A field's help text: its ``description``, else its ``Attributes:`` entry in the docstring of ``model``
    or of the first base class that documents it; ``""`` when none does."""
    info = model.model_fields[name]
    if info.description:
        return _clean(info.description)
    for cls in model.__mro__:
        if inspect.isclass(cls) and issubclass(cls, BaseModel):
            text = _docstring_attributes(cls).get(name)
            if text:
                return _clean(text)
    return ""


def _default_text(info: FieldInfo, flag: str) -> str | None:
    if info.is_required():
        return None
    value = info.get_default(call_default_factory=True)
    if value is None or (isinstance(value, (list, tuple, dict, set)) and not value):
        return None
    if isinstance(value, bool):
        return flag[2:] if value else f"no-{flag[2:]}"
    if isinstance(value, BaseModel):
        return None
    if isinstance(value, dict):
        return ",".join(f"{k}={_choice_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return ",".join(_choice_text(v) for v in value)
    return _choice_text(value)


# -- the decorator ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    path: tuple[str, ...]
    flag: str
    param: str
    kind: _Kind
    help: str
    argument: bool


def _flag_name(name: str) -> str:
    name = name if name.startswith("--") else "--" + name
    return name.replace("_", "-")


def _collect_specs(
    model: type[BaseModel],
    *,
    include: Collection[str] | None,
    exclude: Collection[str],
    rename: Mapping[str, str],
    help_text: Mapping[str, str],
    flatten: Mapping[str, str],
    prefix: str,
    arguments: Sequence[str],
    dest: str,
) -> list[_Spec]:
    named = {*(include or ()), *exclude, *rename, *help_text, *flatten, *arguments}
    known: set[str] = set()
    specs: list[_Spec] = []

    def walk(cls: type[BaseModel], path: tuple[str, ...], flag_prefix: tuple[str, ...]) -> None:
        for name, info in cls.model_fields.items():
            p = (*path, name)
            dotted = ".".join(p)
            known.add(dotted)
            kind = _kind(info.annotation)
            if dotted in flatten:
                if kind is None or kind.model is None:
                    raise ValueError(
                        f"flatten names {dotted!r}, which is not a nested model of {model.__name__}"
                    )
                walk(kind.model, p, (*flag_prefix, flatten[dotted]))
                continue
            if dotted in exclude or (include is not None and dotted not in include):
                continue
            if kind is None or kind.model is not None:
                if dotted in named:
                    raise ValueError(
                        f"field {dotted!r} of {model.__name__} ({info.annotation}) has no flag form"
                    )
                continue
            flag = _flag_name(rename.get(dotted) or "-".join(x for x in (*flag_prefix, name) if x))
            text = help_text.get(dotted) or field_help(cls, name)
            specs.append(_Spec(p, flag, f"{dest}__{'__'.join(p)}", kind, text, dotted in arguments))

    walk(model, (), (prefix,))
    unknown = sorted(named - known)
    if unknown:
        raise ValueError(f"{model.__name__} has no field(s) {unknown} (fields: {sorted(known)})")
    flags = [s.flag for s in specs if not s.argument]
    twice = sorted({f for f in flags if flags.count(f) > 1})
    if twice:
        raise ValueError(f"flags {twice} of {model.__name__} are generated twice; rename or exclude one")
    return specs


def _click_param(spec: _Spec, info: FieldInfo, required: bool) -> Callable[[F], F]:
    kind = spec.kind
    if spec.argument:
        return click.argument(spec.param, type=kind.param_type, required=True, metavar=spec.path[-1].upper())
    help_text = spec.help
    default = _default_text(info, spec.flag)
    if default is not None:
        help_text = f"{help_text} [default: {default}]".strip()
    must = required and info.is_required()
    if info.is_required() and not must:
        help_text = f"{help_text} [required]".strip()
    if kind.multiple:
        help_text = f"{help_text} (repeatable)" if kind.collect == "dict" else help_text
    attrs: dict[str, Any] = {"help": help_text, "required": must, "default": None}
    if kind.param_type is None:
        decls = [f"{spec.flag}/--no-{spec.flag[2:]}", spec.param]
    else:
        decls = [spec.flag, spec.param]
        attrs.update(type=kind.param_type, multiple=kind.multiple, metavar=kind.metavar)
        if kind.multiple:
            attrs["default"] = ()
    return click.option(*decls, **attrs)


def _value(spec: _Spec, value: Any) -> Any:
    if spec.kind.collect == "list":
        return [item for chunk in value for item in chunk]
    if spec.kind.collect == "dict":
        return dict(value)
    return value


def _field_info(model: type[BaseModel], path: Sequence[str]) -> FieldInfo:
    cls = model
    info = cls.model_fields[path[0]]
    for name in path[1:]:
        kind = _kind(info.annotation)
        assert kind is not None and kind.model is not None
        cls = kind.model
        info = cls.model_fields[name]
    return info


def config_options(
    model: type[BaseModel],
    *,
    include: Collection[str] | None = None,
    exclude: Collection[str] = (),
    rename: Mapping[str, str] | None = None,
    help: Mapping[str, str] | None = None,
    flatten: Mapping[str, str] | None = None,
    prefix: str = "",
    arguments: Sequence[str] = (),
    config_file: bool = False,
    required: bool | None = None,
    dest: str = "flags",
) -> Callable[[F], F]:
    """Decorate a click command with one flag per field of ``model``.

    The command receives, as the keyword ``dest``, a :class:`ConfigFlags` holding the fields whose flags
    were given (and the ``--config`` file); pass it to :func:`config_from_flags`. Field paths below are
    field names, dotted for the fields of flattened models (``"apply.alpha"``).

    Args:
        model: the pydantic config model.
        include: only these fields get flags (default: every field that has a flag form).
        exclude: fields that get no flag.
        rename: field -> flag name (``{"out_dir": "--out"}``), in place of ``--<prefix>-<field-name>``.
        help: field -> help text, in place of the field's own.
        flatten: nested-model field -> prefix of its fields' flags (``{"apply": "cmrm"}`` gives
            ``--cmrm-layers``; ``""``: no prefix). Nested models not named here are YAML-only.
        prefix: prefix of every flag of this model (``"cmrm"`` -> ``--cmrm-<field>``).
        arguments: fields read as positional arguments (in this order), not flags.
        config_file: add ``--config FILE`` (a YAML mapping of fields that the flags override).
        required: make the flags of required fields required by click (default: unless ``config_file``,
            where the file may hold them; :func:`config_from_flags` then names any that are missing).
        dest: the keyword argument the command receives the flags as.

    Raises:
        ValueError: a name above that is not a field, a named field without a flag form, or two fields
            that map to the same flag (mistakes in the command's declaration, found at import).
    """
    specs = _collect_specs(
        model,
        include=None if include is None else set(include),
        exclude=set(exclude),
        rename=dict(rename or {}),
        help_text=dict(help or {}),
        flatten=dict(flatten or {}),
        prefix=prefix,
        arguments=list(arguments),
        dest=dest,
    )
    click_required = (not config_file) if required is None else required
    config_param = f"{dest}__config_file"
    names = {".".join(s.path): (s.path[-1].upper() if s.argument else s.flag) for s in specs}
    ordered = sorted(
        specs, key=lambda s: (not s.argument, arguments.index(".".join(s.path)) if s.argument else 0)
    )

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            flags = ConfigFlags(config_file=kwargs.pop(config_param, None), names=names)
            for spec in specs:
                value = kwargs.pop(spec.param)
                if value is None or (spec.kind.multiple and not value):
                    continue
                flags.set_path(spec.path, _value(spec, value))
            kwargs[dest] = flags
            return fn(*args, **kwargs)

        decorators: list[Callable[[F], F]] = [
            _click_param(s, _field_info(model, s.path), click_required) for s in ordered
        ]
        if config_file:
            decorators.insert(
                sum(1 for s in ordered if s.argument),
                click.option(
                    "--config",
                    config_param,
                    type=click.Path(dir_okay=False, path_type=Path),
                    help=f"YAML file of {model.__name__} fields; the flags override its values.",
                ),
            )
        out: Any = wrapper
        for deco in reversed(decorators):
            out = deco(out)
        return out  # type: ignore[no-any-return]

    return decorate


# -- flags -> config --------------------------------------------------------------------------
def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _base_data(
    model: type[BaseModel], base: str | Path | Mapping[str, Any] | BaseModel | None
) -> dict[str, Any]:
    if base is None:
        return {}
    if isinstance(base, BaseModel):
        return base.model_dump(exclude_unset=True)
    if isinstance(base, Mapping):
        return dict(base)
    return read_yaml_mapping(base, f"{model.__name__} config")


def config_from_flags(
    model: type[M],
    flags: Mapping[str, Any],
    base: str | Path | Mapping[str, Any] | BaseModel | None = None,
) -> M:
    """Validate ``model`` from ``base`` overridden by ``flags``.

    Args:
        model: the config model.
        flags: given fields (a :class:`ConfigFlags` from :func:`config_options`, or any mapping); nested
            mappings override the matching fields of nested models one by one.
        base: a YAML file, a mapping or a config instance (its explicitly set fields) under the flags
            (default: the ``--config`` file of ``flags``, if any).

    Raises:
        ConfigError: a required field given neither as a flag nor in ``base`` (named by its flag); an
            unreadable YAML file; a field that breaks its rule, or one the model does not have.
    """
    if base is None:
        base = getattr(flags, "config_file", None)
    data = _merge(_base_data(model, base), flags)
    names = getattr(flags, "names", {})
    missing = [
        names.get(name, _flag_name(name))
        for name, info in model.model_fields.items()
        if info.is_required() and data.get(name) is None
    ]
    if missing:
        where = "as flags or in the config file" if len(missing) > 1 else "as a flag or in the config file"
        raise ConfigError(f"{', '.join(missing)} {'are' if len(missing) > 1 else 'is'} required ({where})")
    return validate_config(model, data)

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

import functools
import inspect
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from vlsafe.cli.flag_types import CommaList, FlagKind, KeyValue, choice_text, flag_kind
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
        return ",".join(f"{k}={choice_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return ",".join(choice_text(v) for v in value)
    return choice_text(value)


# -- the decorator ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    path: tuple[str, ...]
    flag: str
    param: str
    kind: FlagKind
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
            kind = flag_kind(info.annotation)
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


def _click_param(spec: _Spec, info: FieldInfo, required: bool, mark_required: bool) -> Callable[[F], F]:
    kind = spec.kind
    if spec.argument:
        return click.argument(spec.param, type=kind.param_type, required=True, metavar=spec.path[-1].upper())
    help_text = spec.help
    default = _default_text(info, spec.flag)
    if default is not None:
        help_text = f"{help_text} [default: {default}]".strip()
    must = required and info.is_required()
    if info.is_required() and not must and mark_required:
        help_text = f"{help_text} [required]".strip()
    if kind.multiple:
        help_text = f"{help_text} (repeatable)" if kind.collect == "dict" else help_text
    attrs: dict[str, Any] = {"help": help_text, "required": must}
    if kind.param_type is None:  # without a default a flag reads False; None marks "not given"
        decls = [f"{spec.flag}/--no-{spec.flag[2:]}", spec.param]
        attrs["default"] = None
    else:  # no default: an absent option reads None (an explicit default would satisfy ``required``)
        decls = [spec.flag, spec.param]
        attrs.update(type=kind.param_type, multiple=kind.multiple, metavar=kind.metavar)
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
        kind = flag_kind(info.annotation)
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
            where the file may hold them: their help says ``[required]`` and :func:`config_from_flags` names
            any that are missing). ``False`` for fields that another part of the command provides.
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
            _click_param(s, _field_info(model, s.path), click_required, config_file) for s in ordered
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

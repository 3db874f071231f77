"""Named registries for loaders, judges, merge methods, families and model references.

A registry maps names to objects. An entry can also be *lazy*: registered as ``"package.module:attribute"`` and
imported only when it is first looked up (as lm-evaluation-harness registers its tasks and models), either by
:meth:`Registry.register_lazy` or through a package's entry points (``entry_points=GROUP``), so that listing or
resolving one name never imports the modules behind the others, and a client package (e.g. the model organism)
can add entries without the library importing it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from vlsafe.core.errors import ConfigError

T = TypeVar("T")

__all__ = ["Registry", "load_object"]


def load_object(target: str) -> Any:
    """Import ``"package.module:attribute"`` (the attribute may be dotted) and return the attribute.

    Raises:
        ConfigError: ``target`` has no ``:``, or the module or attribute cannot be imported.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{target!r} must have the form 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {target!r}: {exc}") from exc
    return obj


class Registry(Generic[T]):
    """Maps names to objects; unknown names get an error listing the known ones.

    Args:
        kind: what the registry holds, used in error messages ("judge", "benchmark").
        entry_points: an entry-point group whose entries (``name = "module:attribute"``) become lazy entries
            the first time the registry is searched or listed.
    """

    def __init__(self, kind: str, entry_points: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._group = entry_points
        self._scanned = entry_points is None

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, item: T) -> T: ...

    def register(self, name: str, item: Any = None) -> Any:
        """Register ``item`` under ``name``; usable as a decorator when ``item`` is omitted."""

        def _add(obj: T) -> T:
            if name in self._items or name in self._lazy:
                raise ConfigError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        if item is None:
            return _add
        return _add(item)

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:attribute"`` under ``name``; it is imported on first :meth:`get`."""
        if name in self._items or name in self._lazy:
            raise ConfigError(f"{self.kind} {name!r} is already registered")
        if ":" not in target:
            raise ConfigError(f"lazy {self.kind} {name!r}: {target!r} must have the form 'package.module:attribute'")
        self._lazy[name] = target

    def _scan(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        for ep in importlib.metadata.entry_points(group=self._group or ""):
            if ep.name not in self._items and ep.name not in self._lazy:
                self._lazy[ep.name] = ep.value

    def get(self, name: str) -> T:
        """Return the item registered as ``name`` (importing it first if it is lazy)."""
        if name in self._items:
            return self._items[name]
        self._scan()
        if name in self._lazy:
            obj = load_object(self._lazy.pop(name))
            self._items[name] = obj
            return obj
        known = ", ".join(self.names()) or "(none)"
        raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}")

    def names(self) -> list[str]:
        """Every registered name, lazy ones included (nothing is imported)."""
        self._scan()
        return sorted({*self._items, *self._lazy})

    def __contains__(self, name: object) -> bool:
        if name in self._items:
            return True
        self._scan()
        return name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

"""One :class:`Registry` per plugin kind: strategies by name, with availability."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import attrs

from laden.errors import (
    DuplicateStrategyError,
    MissingDependencyError,
    RegistryError,
    UnknownStrategyError,
)

__all__ = ["Entry", "Registry"]


def _importable(module: str) -> bool:
    # find_spec of the top-level package does not import it: listing plugins
    # must not pull torch into the process.
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


@attrs.frozen(kw_only=True)
class Entry:
    """A registered strategy: its class, the plugin that added it, availability."""

    kind: str
    name: str
    cls: type[Any]
    plugin: str | None
    missing: tuple[str, ...]
    extra: str | None

    @property
    def available(self) -> bool:
        return not self.missing

    @property
    def qualname(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"


class Registry:
    """The strategies of one kind, keyed by their ``name`` class attribute.

    Plugins receive a registry in their ``laden_register_<kind>s`` hook and call
    :meth:`add`. A duplicate name is an error, never a silent override.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._plugin: str | None = None  # the plugin whose hook is running

    def add(self, cls: type[Any]) -> type[Any]:
        """Register ``cls`` under ``cls.name``; returns ``cls`` (usable as a decorator)."""
        name = getattr(cls, "name", None)
        if not isinstance(cls, type):
            raise RegistryError(f"{self.kind} registry: expected a class, got {cls!r}")
        if not isinstance(name, str) or not name.isidentifier():
            raise RegistryError(
                f"{self.kind} {cls.__qualname__} needs a class attribute `name` that is an "
                f"identifier, got {name!r}"
            )
        if not attrs.has(cls):
            raise RegistryError(
                f"{self.kind} {name!r} ({cls.__qualname__}) must be an attrs class: its fields "
                "are its config"
            )
        if name in self._entries:
            old = self._entries[name]
            raise DuplicateStrategyError(
                f"{self.kind} {name!r} is registered twice: by plugin {old.plugin!r} "
                f"({old.qualname}) and by plugin {self._plugin!r} "
                f"({cls.__module__}.{cls.__qualname__})"
            )
        requires = tuple(getattr(cls, "requires", ()))
        self._entries[name] = Entry(
            kind=self.kind,
            name=name,
            cls=cls,
            plugin=self._plugin,
            missing=tuple(m for m in requires if not _importable(m)),
            extra=getattr(cls, "extra", None),
        )
        return cls

    def names(self, *, available_only: bool = False) -> list[str]:
        """Registered names, sorted; with ``available_only`` those whose extras are installed."""
        return sorted(n for n, e in self._entries.items() if e.available or not available_only)

    def entry(self, name: str) -> Entry:
        """The entry of ``name``, whether available or not."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownStrategyError(self.kind, name, self.names()) from None

    def get(self, name: str) -> type[Any]:
        """The class registered as ``name``; raises if unknown or its extra is missing."""
        entry = self.entry(name)
        if entry.missing:
            raise MissingDependencyError(self.kind, name, entry.missing, entry.extra)
        return entry.cls

    def available(self, name: str) -> bool:
        return self.entry(name).available

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Registry {self.kind}: {', '.join(self.names())}>"

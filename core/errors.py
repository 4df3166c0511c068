"""Every failure laden reports to a user is a :class:`LadenError`.

Each message names the place: the plugin and its distribution, the config key
path (``sampler.token_budget``), or the file and line of bad input.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "ConfigError",
    "DataError",
    "DuplicateStrategyError",
    "LadenError",
    "MissingDependencyError",
    "PluginLoadError",
    "RegistryError",
    "UnknownStrategyError",
    "add_note",
]


class LadenError(Exception):
    """Base class of every error laden raises on purpose."""


class PluginLoadError(LadenError):
    """A plugin could not be imported or failed validation against the hook specs."""


class RegistryError(LadenError):
    """A strategy registry was used wrongly."""


class DuplicateStrategyError(RegistryError):
    """Two plugins registered a strategy of the same kind under the same name."""


class UnknownStrategyError(RegistryError):
    """A strategy name is not registered; the message lists the known names."""

    def __init__(self, kind: str, name: object, known: Sequence[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = tuple(known)
        listed = ", ".join(repr(n) for n in self.known) or "none"
        super().__init__(f"unknown {kind} {name!r}; known {kind}s: {listed}")


class MissingDependencyError(RegistryError, ImportError):
    """A strategy needs an optional dependency (an extra) that is not installed."""

    def __init__(self, kind: str, name: str, missing: Iterable[str], extra: str | None) -> None:
        self.kind = kind
        self.name = name
        self.missing = tuple(missing)
        self.extra = extra
        fix = f'pip install "laden[{extra}]"' if extra else "pip install " + " ".join(self.missing)
        super().__init__(
            f"{kind} {name!r} needs {', '.join(self.missing)}, which is not installed; run: {fix}"
        )


class ConfigError(LadenError, ValueError):
    """A configuration value is wrong.

    ``path`` is the key path inside the config (``("sampler", "token_budget")``),
    ``source`` the file it came from, if any. ``str()`` gives
    ``run.toml: sampler.token_budget: must be > 0, got -5``.
    """

    def __init__(
        self, reason: str, *, path: Sequence[str | int] = (), source: str | None = None
    ) -> None:
        self.reason = reason
        self.path = tuple(path)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.source:
            parts.append(self.source)
        if self.path:
            parts.append(format_path(self.path))
        parts.append(self.reason)
        return ": ".join(parts)

    def within(self, *prefix: str | int, source: str | None = None) -> ConfigError:
        """The same error, seen from an enclosing mapping (or file)."""
        return ConfigError(self.reason, path=(*prefix, *self.path), source=source or self.source)


class DataError(LadenError, ValueError):
    """Input data is malformed; the message names the file and line."""

    def __init__(self, reason: str, *, file: str | None = None, line: int | None = None) -> None:
        self.reason = reason
        self.file = file
        self.line = line
        where = file or ""
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        super().__init__(f"{where}: {reason}" if where else reason)


def format_path(path: Sequence[str | int]) -> str:
    """``("sampler", "bucket_edges", 2)`` -> ``sampler.bucket_edges[2]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` on every Python (3.10 has no add_note; ``__notes__`` is the same).

    laden notes what can be resumed on a KeyboardInterrupt; the CLI prints the notes.
    """
    exc.__dict__.setdefault("__notes__", []).append(note)

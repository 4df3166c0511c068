"""The private cattrs converter and strict structuring (digests live in :mod:`laden.digest`).

User config is strict: unknown keys are errors and numbers are not coerced
(``3.5`` is no ``int``, ``"8"`` is no number). Errors come back as
:class:`~laden.errors.ConfigError` with the key path.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from laden.chunks import Chunksize
from laden.digest import canonical_json, digest  # re-exported: their home is laden.digest
from laden.errors import ConfigError

__all__ = [
    "canonical_json",
    "combine_problems",
    "config_of",
    "digest",
    "make_converter",
    "structure_config",
]


def _strict_int(value: Any, _type: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"expected an integer, got {value!r}")
    return value


def _strict_float(value: Any, _type: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"expected a number, got {value!r}")
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError("expected a number, got NaN")
    return float(value)


def _strict_bool(value: Any, _type: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, got {value!r}")
    return value


def _strict_str(value: Any, _type: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {value!r}")
    return value


def _chunksize(value: Any, _type: Any) -> Any:
    """An executor's ``chunksize``: ``"auto"`` or an integer (checked by its validator)."""
    return value if value == "auto" else _strict_int(value, int)


def make_converter() -> cattrs.Converter:
    """A fresh strict converter (one per kernel; never cattrs' global one)."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(Chunksize, _chunksize)
    return converter


def _unknown_key(key: Any, fields: Sequence[str], path: tuple[str | int, ...]) -> ConfigError:
    """``unknown key 'token_bugdet' (did you mean 'token_budget'?); known keys: ...``."""
    close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    known = ", ".join(fields) or "none"
    return ConfigError(f"unknown key {key!r}{hint}; known keys: {known}", path=path)


def _problems(exc: BaseException, path: tuple[str | int, ...]) -> list[ConfigError]:
    """Flatten a cattrs error tree into ConfigErrors carrying key paths.

    Unknown keys come first (a misspelt key is usually why a required one is
    missing), each with the closest known key as a suggestion.
    """
    if isinstance(exc, ConfigError):
        return [exc.within(*path)]
    if isinstance(exc, ForbiddenExtraKeysError):
        fields = sorted(a.name for a in attrs.fields(exc.cl)) if attrs.has(exc.cl) else []
        return [_unknown_key(k, fields, path) for k in sorted(exc.extra_fields, key=str)]
    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        unknown = [p for sub in without for p in _problems(sub, path)]
        out = []
        for sub, note in with_notes:
            if isinstance(sub, KeyError) and sub.args == (note.name,):
                # cattrs' way of saying a field without a default was not given
                out.append(ConfigError(f"missing required key {note.name!r}", path=path))
            else:
                out += _problems(sub, (*path, note.name))
        return unknown + out
    if isinstance(exc, IterableValidationError):
        items, rest = exc.group_exceptions()
        out = [p for sub, item in items for p in _problems(sub, (*path, int(item.index)))]
        return out + [p for sub in rest for p in _problems(sub, path)]
    if isinstance(exc, (ValueError, TypeError, KeyError)):
        return [ConfigError(str(exc) or type(exc).__name__, path=path)]
    raise exc


def structure_config(
    converter: cattrs.Converter, data: Any, cls: type[Any], path: Sequence[str | int] = ()
) -> Any:
    """Structure ``data`` into ``cls``; any problem becomes one ConfigError naming its path.

    When several keys are wrong, the first is in the message and all are in
    ``error.problems``.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a table of settings, got {data!r}", path=tuple(path))
    try:
        return converter.structure(dict(data), cls)
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        problems = _problems(exc, tuple(path))
    except ConfigError as exc:
        problems = [exc.within(*path)]
    raise combine_problems(problems) from None


def combine_problems(problems: Sequence[ConfigError]) -> ConfigError:
    """One error for several: the first in the message, the rest as ``also:`` lines.

    All of them are in ``error.problems``.
    """
    first = problems[0]
    err = ConfigError(first.reason, path=first.path, source=first.source)
    err.problems = list(problems)  # type: ignore[attr-defined]
    if len(problems) > 1:
        err.args = (str(err) + "".join(f"\n  also: {p}" for p in problems[1:]),)
    return err


def config_of(strategy: Any) -> dict[str, Any]:
    """The config of a strategy instance as plain data, ``name`` first."""
    fields = attrs.asdict(strategy, recurse=True)
    return {"name": type(strategy).name, **fields}

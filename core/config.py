"""Run configs: one TOML or YAML file, one section per plugin kind.

.. code-block:: toml

    seed = 42
    epochs = 3

    [sampler]
    name = "token_budget"
    token_budget = 16384
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import yaml

from laden.errors import ConfigError
from laden.kinds import KINDS
from laden.serde import combine_problems, config_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from laden.kernel import Kernel

__all__ = ["RunConfig", "load_config", "read_config_file"]

#: Top-level settings beside the per-kind sections, with their types.
SETTINGS: dict[str, type] = {"seed": int, "epochs": int}


@attrs.frozen(kw_only=True)
class RunConfig:
    """A validated run config: built strategies per kind plus run settings."""

    strategies: Mapping[str, Any] = attrs.field(factory=dict)
    seed: int = 0
    epochs: int = 1
    #: ``[memory_budget]``: a cap on each batch's collated bytes (:mod:`laden.memory`).
    memory_budget: Any = None
    source_file: str | None = None

    def get(self, kind: str) -> Any:
        """The strategy configured for ``kind``, or None."""
        return self.strategies.get(kind)

    def __getattr__(self, kind: str) -> Any:
        # config.sampler, config.packer, ... read like the file does.
        if kind in KINDS:
            return self.strategies.get(kind)
        raise AttributeError(kind)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_mapping` turns back into an equal config."""
        out: dict[str, Any] = {"seed": self.seed, "epochs": self.epochs}
        out.update({kind: config_of(s) for kind, s in sorted(self.strategies.items())})
        if self.memory_budget is not None:
            out["memory_budget"] = attrs.asdict(self.memory_budget)
        return out

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, kernel: Kernel | None = None, source: str | None = None
    ) -> RunConfig:
        """Validate ``data`` (as read from a file) and build its strategies.

        :param kernel: the plugins whose strategies ``data`` may name (default:
            laden's builtins only, :func:`~laden.kernel.builtin_kernel`).
        """
        from laden.kernel import builtin_kernel

        kernel = kernel or builtin_kernel()
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a table of sections, got {data!r}", source=source)
        strategies: dict[str, Any] = {}
        settings: dict[str, Any] = {}
        for key, value in data.items():
            if key in KINDS:
                try:
                    strategies[key] = kernel.create(key, value, path=(key,))
                except ConfigError as exc:
                    problems = getattr(exc, "problems", None) or [exc]
                    raise combine_problems([p.within(source=source) for p in problems]) from None
            elif key == "memory_budget":
                from laden.memory import MemoryBudget

                try:
                    settings[key] = MemoryBudget.from_mapping(value)
                except ConfigError as exc:
                    problems = getattr(exc, "problems", None) or [exc]
                    raise combine_problems([p.within(source=source) for p in problems]) from None
            elif key in SETTINGS:
                want = SETTINGS[key]
                if isinstance(value, bool) or not isinstance(value, want):
                    raise ConfigError(
                        f"expected {want.__name__}, got {value!r}", path=(key,), source=source
                    )
                settings[key] = value
            else:
                names = [*KINDS, *SETTINGS, "memory_budget"]
                close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"unknown section or setting {key!r}{hint}; known: {', '.join(names)}",
                    source=source,
                )
        if settings.get("epochs", 1) < 1:
            raise ConfigError(
                f"must be >= 1, got {settings['epochs']}", path=("epochs",), source=source
            )
        return cls(strategies=strategies, source_file=source, **settings)


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML or YAML file into plain data; syntax errors name file and line."""
    p = Path(path)
    where = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", source=where) from exc
    suffix = p.suffix.lower()
    if suffix == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {exc}", source=where) from None
    elif suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise ConfigError(f"invalid YAML: {at}{exc.problem}", source=where) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML: {exc}", source=where) from None
        if data is None:
            data = {}
    else:
        raise ConfigError("config files must end in .toml, .yaml or .yml", source=where)
    if not isinstance(data, dict):
        raise ConfigError(f"expected a table of sections, got {type(data).__name__}", source=where)
    return data


def load_config(path: str | os.PathLike[str], *, kernel: Kernel | None = None) -> RunConfig:
    """Load and validate a run config; errors name the file and the key path.

    ``kernel`` names the plugins it may use (default: laden's builtins only).
    """
    return RunConfig.from_mapping(read_config_file(path), kernel=kernel, source=str(path))

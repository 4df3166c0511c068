"""Sweep files: what to generate, checked strictly before anything runs.

A sweep file (YAML through ``safe_load``, or TOML)::

    metadata: {name: gaussian_demo, description: ..., version: "1.0"}
    base: {grid_size: 32}                 # parameters shared by every point
    sweep:
      stimuli:                            # or ``points``: a list of blocks
        - type: gaussian_sweep            # a generator name; ``_sweep`` accepted
          name: small                     # optional; defaults to the type
          parameters:
            amplitude: [10.0, 20.0]       # a list of values,
            sigma: {start: 0.3, stop: 1.5, num: 5}   # a linspace,
            noise: {values: [0.0]}        # or {values: [...]}
          repetitions: 3
          base_seed: 42
    output: {dir: out, writer: npz, points_per_file: 100}
    executor: {name: local, workers: 2}

Every mistake (a typo'd key, an empty value list, an unknown generator, a
parameter the generator does not take) is a :class:`~laden.errors.ConfigError`
naming the file and the key path, e.g.
``sweep.yaml: sweep.stimuli[0].parameters.sigmaa: gaussian takes no parameter
'sigmaa' (did you mean 'sigma'?)``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from laden.config import read_config_file
from laden.errors import ConfigError

if TYPE_CHECKING:
    from laden.kernel import Kernel

__all__ = ["WRITERS", "Block", "SweepSpec", "load_sweep", "parse_sweep"]

#: The writers a sweep can write points with.
WRITERS = ("npz", "pt", "h5")
_TOP = ("metadata", "base", "sweep", "output", "executor")
_METADATA = ("name", "description", "version", "author", "date")
_SWEEP = ("stimuli", "points", "base_seed")
_BLOCK = ("type", "name", "parameters", "repetitions", "base_seed")
_OUTPUT = ("dir", "writer", "points_per_file", "compress")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


@attrs.frozen(kw_only=True)
class Block:
    """One block of a sweep: a generator and the values of each of its parameters.

    :param name: the block's name (ids start with it; seeds derive from it).
    :param generator: the generator plugin's name.
    :param parameters: parameter name -> the tuple of its values, in file order.
    :param repetitions: points per combination of values.
    :param base_seed: the block's base seed.
    """

    name: str
    generator: str
    parameters: dict[str, tuple[Any, ...]]
    repetitions: int
    base_seed: int

    @property
    def size(self) -> int:
        """The block's number of points (the product of the axes times the repetitions)."""
        return math.prod(len(v) for v in self.parameters.values()) * self.repetitions


@attrs.frozen(kw_only=True)
class SweepSpec:
    """A checked sweep file: metadata, shared parameters, blocks, output and executor."""

    metadata: dict[str, Any]
    base: dict[str, Any]
    blocks: tuple[Block, ...]
    output_dir: str | None
    writer: str
    points_per_file: int
    compress: bool
    executor: dict[str, Any]
    source: str | None = None

    @property
    def total(self) -> int:
        """Points in the whole sweep."""
        return sum(b.size for b in self.blocks)

    def identity(self) -> dict[str, Any]:
        """What a resumed run must match: everything that decides the points' content."""
        return {
            "metadata": self.metadata,
            "base": self.base,
            "blocks": [
                {
                    "name": b.name,
                    "generator": b.generator,
                    "parameters": {k: list(v) for k, v in b.parameters.items()},
                    "repetitions": b.repetitions,
                    "base_seed": b.base_seed,
                }
                for b in self.blocks
            ],
            "writer": self.writer,
            "points_per_file": self.points_per_file,
            "compress": self.compress,
        }


def _check_keys(table: Any, allowed: Sequence[str], path: tuple[str | int, ...]) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigError(f"expected a table, got {_show(table)}", path=path)
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown key{hint}; allowed: {', '.join(allowed)}", path=(*path, str(key))
            )
    return dict(table)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value: Any, path: tuple[str | int, ...], *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"expected an integer >= {minimum}, got {_show(value)}", path=path)
    return value


def _plain_value(value: Any, path: tuple[str | int, ...]) -> Any:
    """A parameter value: a number, string, bool or a (nested) list of them."""
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"expected a finite number, got {value!r}", path=path)
        return value
    if isinstance(value, list | tuple):
        return [_plain_value(v, (*path, i)) for i, v in enumerate(value)]
    raise ConfigError(
        f"expected a number, string, bool or list, got {type(value).__name__}", path=path
    )


def _values(spec: Any, path: tuple[str | int, ...]) -> tuple[Any, ...]:
    """A parameter's values: a list, ``{values: [...]}``, ``{start, stop, num}`` or one value."""
    if isinstance(spec, Mapping):
        keys = set(spec)
        if keys == {"values"}:
            spec = spec["values"]
            path = (*path, "values")
            if not isinstance(spec, list):
                raise ConfigError(f"expected a list of values, got {_show(spec)}", path=path)
        elif keys == {"start", "stop", "num"}:
            num = _int(spec["num"], (*path, "num"), minimum=1)
            bounds = []
            for key in ("start", "stop"):
                v = spec[key]
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise ConfigError(f"expected a number, got {_show(v)}", path=(*path, key))
                bounds.append(float(v))
            return tuple(float(x) for x in np.linspace(bounds[0], bounds[1], num))
        else:
            raise ConfigError(
                "expected a list of values, {values: [...]} or {start, stop, num}; "
                f"got keys {', '.join(map(str, spec))}",
                path=path,
            )
    if not isinstance(spec, list):
        spec = [spec]  # a single value does not multiply the sweep
    if not spec:
        raise ConfigError("an empty list of values gives no points", path=path)
    values = tuple(_plain_value(v, (*path, i)) for i, v in enumerate(spec))
    seen: set[str] = set()
    for i, v in enumerate(values):
        key = repr(v)
        if key in seen:
            raise ConfigError(f"the value {v!r} is listed twice", path=(*path, i))
        seen.add(key)
    return values


def _generator_class(kernel: Kernel, name: str, path: tuple[str | int, ...]) -> Any:
    registry = kernel.registry("generator")
    if name not in registry:
        known = ", ".join(repr(n) for n in registry.names()) or "none"
        raise ConfigError(f"unknown generator {name!r}; known generators: {known}", path=path)
    return registry.get(name)


def _check_params(
    cls: Any, generator: str, names: Sequence[str], path: tuple[str | int, ...]
) -> None:
    accepted = getattr(cls, "parameters", None)
    if accepted is None:
        return  # the generator does not say: it takes anything
    for name in names:
        if name not in accepted:
            close = difflib.get_close_matches(name, list(accepted), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{generator} takes no parameter {name!r}{hint}; it takes: " + ", ".join(accepted),
                path=(*path, name),
            )


def parse_sweep(data: Mapping[str, Any], *, kernel: Kernel, source: str | None = None) -> SweepSpec:
    """Check a sweep file's parsed content; errors name ``source`` and the key path."""
    try:
        return _parse(data, kernel)
    except ConfigError as exc:
        raise exc.within(source=source) from None


def _parse(data: Mapping[str, Any], kernel: Kernel) -> SweepSpec:
    top = _check_keys(data, _TOP, ())
    if "sweep" not in top:
        raise ConfigError("missing the 'sweep' section (a list of blocks under sweep.stimuli)")
    metadata = _check_keys(top.get("metadata") or {}, _METADATA, ("metadata",))
    metadata = {k: _plain_value(v, ("metadata", k)) for k, v in metadata.items()}
    base_table = top.get("base") or {}
    if not isinstance(base_table, Mapping):
        raise ConfigError(
            f"expected a table of parameters, got {_show(base_table)}", path=("base",)
        )
    base = {str(k): _plain_value(v, ("base", str(k))) for k, v in base_table.items()}

    sweep = _check_keys(top["sweep"], _SWEEP, ("sweep",))
    if ("stimuli" in sweep) == ("points" in sweep):
        raise ConfigError(
            "give the blocks under 'stimuli' or 'points' (one of them)", path=("sweep",)
        )
    key = "stimuli" if "stimuli" in sweep else "points"
    default_seed = _int(sweep.get("base_seed", 0), ("sweep", "base_seed"), minimum=0)
    raw_blocks = sweep[key]
    if not isinstance(raw_blocks, list) or not raw_blocks:
        raise ConfigError("expected a non-empty list of blocks", path=("sweep", key))
    blocks: list[Block] = []
    names: dict[str, int] = {}
    for i, raw in enumerate(raw_blocks):
        path: tuple[str | int, ...] = ("sweep", key, i)
        table = _check_keys(raw, _BLOCK, path)
        kind = table.get("type")
        if not isinstance(kind, str) or not kind:
            raise ConfigError("missing 'type' (a generator name)", path=(*path, "type"))
        generator = kind.removesuffix("_sweep") if kind.endswith("_sweep") else kind
        cls = _generator_class(kernel, generator, (*path, "type"))
        name = table.get("name", generator)
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                "a block name starts with a letter and holds letters, digits, '_', '.', '-'; "
                f"got {_show(name)}",
                path=(*path, "name"),
            )
        if name in names:
            raise ConfigError(
                f"block {names[name]} has the name {name!r} too: give each block of the same "
                "type its own 'name' (seeds and ids derive from it)",
                path=(*path, "name"),
            )
        names[name] = i
        params_table = table.get("parameters") or {}
        if not isinstance(params_table, Mapping):
            raise ConfigError(
                f"expected a table of parameters, got {_show(params_table)}",
                path=(*path, "parameters"),
            )
        parameters = {
            str(p): _values(v, (*path, "parameters", str(p))) for p, v in params_table.items()
        }
        _check_params(cls, generator, list(parameters), (*path, "parameters"))
        _check_params(cls, generator, list(base), ("base",))
        blocks.append(
            Block(
                name=name,
                generator=generator,
                parameters=parameters,
                repetitions=_int(table.get("repetitions", 1), (*path, "repetitions"), minimum=1),
                base_seed=_int(
                    table.get("base_seed", default_seed), (*path, "base_seed"), minimum=0
                ),
            )
        )

    output = _check_keys(top.get("output") or {}, _OUTPUT, ("output",))
    out_dir = output.get("dir")
    if out_dir is not None and not isinstance(out_dir, str):
        raise ConfigError(
            f"expected a directory path, got {_show(out_dir)}", path=("output", "dir")
        )
    writer = output.get("writer", "npz")
    if writer not in WRITERS:
        raise ConfigError(
            f"unknown writer {writer!r}; sweeps write {', '.join(WRITERS)}",
            path=("output", "writer"),
        )
    kernel.registry("writer").get(writer)  # a missing extra names the pip install
    compress = output.get("compress", False)
    if not isinstance(compress, bool):
        raise ConfigError(
            f"expected true or false, got {_show(compress)}", path=("output", "compress")
        )
    executor = top.get("executor") or {"name": "local"}
    if isinstance(executor, str):
        executor = {"name": executor}
    if not isinstance(executor, Mapping) or not isinstance(executor.get("name"), str):
        raise ConfigError("expected a table with a 'name' key", path=("executor",))
    kernel.create("executor", dict(executor), path=("executor",))  # check it now
    return SweepSpec(
        metadata=metadata,
        base=base,
        blocks=tuple(blocks),
        output_dir=out_dir,
        writer=writer,
        points_per_file=_int(
            output.get("points_per_file", 100), ("output", "points_per_file"), minimum=1
        ),
        compress=compress,
        executor=dict(executor),
    )


def load_sweep(path: str | os.PathLike[str], *, kernel: Kernel) -> SweepSpec:
    """Read and check a sweep file (YAML or TOML); errors name the file and key path."""
    source = str(path)
    spec = parse_sweep(read_config_file(path), kernel=kernel, source=source)
    out_dir = spec.output_dir
    if out_dir is not None and not Path(out_dir).is_absolute():
        out_dir = str(Path(path).parent / out_dir)  # relative to the sweep file
    return attrs.evolve(spec, source=source, output_dir=out_dir)

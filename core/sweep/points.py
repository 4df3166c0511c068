"""A sweep's points: the cartesian product of each block's values, times its repetitions.

**Order** (stable, documented): blocks in file order; inside a block, the
parameters' values in file order with the *last* parameter varying fastest and
the repetitions fastest of all, so ``amplitude: [10, 20]``, ``sigma: [0.5, 1.0]``,
``repetitions: 3`` gives ``(10, 0.5, rep0), (10, 0.5, rep1), (10, 0.5, rep2),
(10, 1.0, rep0), ...``.

**Ids**: ``<block>_<p1><v1>_<p2><v2>_rep<r>``, each parameter abbreviated to
its shortest prefix that no other parameter of the block shares
(``gaussian_a10.0_s0.3_rep0``); unique across the sweep (checked).

**Seeds**: ``SeedSequence([base_seed, block key, value key of each parameter
(sorted by name), repetition]).generate_state(1, uint64)``, where the block
key hashes the block's name and generator and a value key hashes the
parameter's name and value. A point's seed depends on its own values only,
never on its position, so adding a block, a value or a repetition leaves
every existing point's seed as it was. The SeedSequence algorithm runs
vectorized over all points at once (a test checks it against numpy's own).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from laden.errors import ConfigError
from laden.sweep.spec import Block, SweepSpec

__all__ = ["Points", "block_entropy", "expand", "seed_sequence_state"]

_MASK = 0xFFFFFFFF
# numpy's SeedSequence constants (numpy/random/bit_generator.pyx)
_INIT_A = 0x43B0D7E5
_MULT_A = 0x931E8875
_INIT_B = 0x8B51F9DD
_MULT_B = 0x58F38DED
_MIX_MULT_L = 0xCA01F9DD
_MIX_MULT_R = 0x4973F715
_POOL = 4
_LABEL_BAD = re.compile(r"[^A-Za-z0-9.+-]")  # no "_": it separates an id's parts

try:  # numpy >= 2: variable-width strings, fast concatenation
    from numpy.dtypes import StringDType

    _STR: Any = StringDType()
    _add: Any = np.strings.add
except ImportError:  # pragma: no cover - numpy 1.x
    _STR = np.str_
    _add = np.char.add


def _words(value: int) -> list[int]:
    """An int as numpy coerces it into SeedSequence entropy (32-bit words, low first)."""
    if value == 0:
        return [0]
    out = []
    while value:
        out.append(value & _MASK)
        value >>= 32
    return out


def _key(*parts: Any) -> list[int]:
    """Two 32-bit words hashing ``parts`` (JSON, so 10 and 10.0 differ)."""
    digest = hashlib.blake2b(json.dumps(parts).encode(), digest_size=8).digest()
    return [int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")]


def seed_sequence_state(entropy: Sequence[np.ndarray | int], n: int) -> np.ndarray:
    """``SeedSequence(entropy_i).generate_state(1, np.uint64)`` for ``n`` entropies at once.

    ``entropy`` is a list of 32-bit words, each an int (the same for every
    point) or a uint32 array of length ``n`` (one word per point).
    """
    with np.errstate(over="ignore"):
        words = [np.full(n, w, dtype=np.uint32) if isinstance(w, int) else w for w in entropy]
        hash_const = _INIT_A

        def hashmix(value: np.ndarray) -> np.ndarray:
            nonlocal hash_const
            value = value ^ np.uint32(hash_const)
            hash_const = (hash_const * _MULT_A) & _MASK
            value = value * np.uint32(hash_const)
            mixed: np.ndarray = value ^ (value >> np.uint32(16))
            return mixed

        def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            result = np.uint32(_MIX_MULT_L) * x - np.uint32(_MIX_MULT_R) * y
            mixed: np.ndarray = result ^ (result >> np.uint32(16))
            return mixed

        zero = np.zeros(n, dtype=np.uint32)
        pool = [hashmix(words[i] if i < len(words) else zero) for i in range(_POOL)]
        for src in range(_POOL):
            for dst in range(_POOL):
                if src != dst:
                    pool[dst] = mix(pool[dst], hashmix(pool[src]))
        for src in range(_POOL, len(words)):
            for dst in range(_POOL):
                pool[dst] = mix(pool[dst], hashmix(words[src]))
        out = []
        const = _INIT_B
        for i in range(2):
            value = pool[i] ^ np.uint32(const)
            const = (const * _MULT_B) & _MASK
            value = value * np.uint32(const)
            out.append(value ^ (value >> np.uint32(16)))
        state: np.ndarray = out[0].astype(np.uint64) | (out[1].astype(np.uint64) << np.uint64(32))
        return state


def _label(value: Any) -> str:
    """A value as it appears in an id."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "x".join(_label(v) for v in value)
    return _LABEL_BAD.sub("-", str(value)) or "-"


def _abbreviations(names: Sequence[str]) -> list[str]:
    """Each name's shortest prefix that no other name starts with (the whole name at most)."""
    out = []
    for name in names:
        others = [o for o in names if o != name]
        for size in range(1, len(name) + 1):
            prefix = name[:size]
            if not any(o.startswith(prefix) for o in others):
                break
        out.append(_LABEL_BAD.sub("-", prefix))
    return out


def block_entropy(block: Block, indices: Sequence[np.ndarray], repetition: np.ndarray) -> list[Any]:
    """The SeedSequence entropy words of a block's points (see the module docstring)."""
    words: list[Any] = [*_words(block.base_seed), *_key("block", block.name, block.generator)]
    for name in sorted(block.parameters):
        axis = list(block.parameters).index(name)
        keys = np.array([_key(name, v) for v in block.parameters[name]], dtype=np.uint32).reshape(
            -1, 2
        )
        words += [keys[indices[axis], 0], keys[indices[axis], 1]]
    words.append(repetition.astype(np.uint32))
    return words


class Points:
    """Every point of a sweep, columnar: block, index in the block, seed and id.

    ``len(points)``; ``points[i]`` is one point as a dict (``id``, ``block``,
    ``generator``, ``parameters``, ``repetition``, ``seed``).
    """

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec
        sizes = [b.size for b in spec.blocks]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        total = int(self.starts[-1])
        self.block = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
        self.seeds = np.empty(total, dtype=np.uint64)
        self.repetition = np.empty(total, dtype=np.int64)
        #: per block: per parameter, the value index of each of the block's points
        self.value_index: list[list[np.ndarray]] = []
        self._ids_cache: np.ndarray | None = None
        self._labels = [self._block_labels(block) for block in spec.blocks]
        names = [block.name for block in spec.blocks]
        for name in names:  # ids are unique when no block name extends another's with '_'
            if any(o != name and o.startswith(name + "_") for o in names):
                self._check_unique = True
                break
        else:
            self._check_unique = False
        for b, block in enumerate(spec.blocks):
            local = np.arange(block.size, dtype=np.int64)
            stride = block.repetitions
            indices: list[np.ndarray] = []
            for values in reversed(block.parameters.values()):
                indices.append((local // stride) % len(values))
                stride *= len(values)
            indices.reverse()
            rep = local % block.repetitions
            lo, hi = int(self.starts[b]), int(self.starts[b + 1])
            self.repetition[lo:hi] = rep
            self.value_index.append(indices)
            self.seeds[lo:hi] = seed_sequence_state(block_entropy(block, indices, rep), block.size)
        self.total = total

    @property
    def ids(self) -> np.ndarray:
        """Every point's id (built on first use, vectorized)."""
        if self._ids_cache is None:
            parts = [
                self._ids(block, self._labels[b], self.value_index[b], self.repetition[lo:hi])
                for b, block in enumerate(self.spec.blocks)
                for lo, hi in [(int(self.starts[b]), int(self.starts[b + 1]))]
            ]
            ids = np.concatenate(parts) if parts else np.array([], dtype=_STR)
            if self._check_unique and len(np.unique(ids)) != len(ids):
                raise ConfigError(
                    "two points get the same id; give the blocks distinct names", path=("sweep",)
                )
            self._ids_cache = ids
        return self._ids_cache

    def id(self, i: int) -> str:
        """Point ``i``'s id, without building them all."""
        b = int(self.block[i])
        local = i - int(self.starts[b])
        labels = self._labels[b]
        out = self.spec.blocks[b].name
        for axis, axis_labels in enumerate(labels):
            out += axis_labels[int(self.value_index[b][axis][local])]
        return f"{out}_rep{int(self.repetition[i])}"

    @staticmethod
    def _block_labels(block: Block) -> list[list[str]]:
        """Per parameter, the id part of each value (``_a10.0``); unique per parameter
        and free of ``_``, so ids inside a block are unique."""
        names = list(block.parameters)
        out = []
        for name, abbr in zip(names, _abbreviations(names), strict=True):
            labels = [_label(v) for v in block.parameters[name]]
            if len(set(labels)) != len(labels):
                raise ConfigError(
                    "two values read the same in a point id: " + ", ".join(labels),
                    path=("sweep", block.name, "parameters", name),
                )
            out.append([f"_{abbr}{lab}" for lab in labels])
        return out

    @staticmethod
    def _ids(
        block: Block, labels: list[list[str]], indices: list[np.ndarray], rep: np.ndarray
    ) -> np.ndarray:
        ids = np.full(block.size, block.name, dtype=_STR)
        for axis, axis_labels in enumerate(labels):
            ids = _add(ids, np.array(axis_labels, dtype=_STR)[indices[axis]])
        reps = np.array([f"_rep{r}" for r in range(block.repetitions)], dtype=_STR)
        return np.asarray(_add(ids, reps[rep]))

    def __len__(self) -> int:
        return self.total

    def per_block(self) -> list[tuple[Block, int]]:
        """Each block with its number of points."""
        return [(b, b.size) for b in self.spec.blocks]

    def parameters(self, i: int) -> dict[str, Any]:
        """Point ``i``'s full parameters: ``base``, then its block's values."""
        b = int(self.block[i])
        block = self.spec.blocks[b]
        local = i - int(self.starts[b])
        out = dict(self.spec.base)
        for axis, (name, values) in enumerate(block.parameters.items()):
            out[name] = values[int(self.value_index[b][axis][local])]
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        block = self.spec.blocks[int(self.block[i])]
        return {
            "id": self.id(i),
            "block": block.name,
            "generator": block.generator,
            "parameters": self.parameters(i),
            "repetition": int(self.repetition[i]),
            "seed": int(self.seeds[i]),
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]


def expand(spec: SweepSpec) -> Points:
    """The points of ``spec`` (see the module docstring for order, ids and seeds)."""
    return Points(spec)

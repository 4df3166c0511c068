"""The plugin kinds and the protocol every strategy of a kind satisfies.

A strategy is a class with ``name: ClassVar[str]`` and an attrs config (its
own fields). One that needs an optional dependency also sets
``requires: ClassVar[tuple[str, ...]]`` (importable module names) and
``extra: ClassVar[str]`` (the ``laden[extra]`` that installs them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from laden.records import EpochPlan, LengthTable, PackPlan

__all__ = [
    "KINDS",
    "Backend",
    "Executor",
    "Generator",
    "Packer",
    "Sampler",
    "Source",
    "Strategy",
    "Tokenizer",
    "Writer",
    "hook_name",
]

#: Every plugin kind, in pipeline order. Each has a hook ``laden_register_<kind>s``.
KINDS: tuple[str, ...] = (
    "source",
    "tokenizer",
    "packer",
    "sampler",
    "writer",
    "backend",
    "executor",
    "generator",
)


def hook_name(kind: str) -> str:
    """The registration hook of ``kind``: ``sampler`` -> ``laden_register_samplers``."""
    return f"laden_register_{kind}s"


T = TypeVar("T")
R = TypeVar("R")


@runtime_checkable
class Strategy(Protocol):
    """What every registered class has."""

    name: ClassVar[str]


class Tokenizer(Strategy, Protocol):
    """Text -> token ids, and lengths without materialising ids where it can."""

    def encode(self, text: str) -> np.ndarray: ...

    def count(self, texts: Sequence[str]) -> np.ndarray: ...

    def fingerprint(self) -> str: ...


class Packer(Strategy, Protocol):
    """A length table -> packs of segments that fit ``max_length``."""

    def pack(self, table: LengthTable) -> PackPlan: ...


class Sampler(Strategy, Protocol):
    """A length table -> the batches of one epoch."""

    def plan_epoch(self, table: LengthTable, *, epoch: int = 0, seed: int = 0) -> EpochPlan: ...


class Source(Strategy, Protocol):
    """Anything -> a stream of samples (mappings of fields)."""

    def __iter__(self) -> Iterator[Mapping[str, Any]]: ...


class Writer(Strategy, Protocol):
    """Collated batches -> files (with a reader half).

    ``write`` gets an open binary file (laden writes it under a temporary name,
    fsyncs and renames it), the batch's arrays and its metadata (``epoch``,
    ``step``, ``rank``, ``padding``, ``fingerprint``); ``read`` returns the
    arrays of a file it wrote, never unpickling.
    """

    suffix: ClassVar[str]

    def write(
        self, file: BinaryIO, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None: ...

    def read(self, path: str) -> dict[str, np.ndarray]: ...


class Backend(Strategy, Protocol):
    """Host arrays -> framework arrays on a device."""

    def convert(self, arrays: Mapping[str, np.ndarray]) -> Mapping[str, Any]: ...


class Executor(Strategy, Protocol):
    """A map of work over processes (or a cluster), in order, with progress."""

    def map(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        total: int | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> Iterator[R]: ...


class Generator(Strategy, Protocol):
    """Parameters + seed -> one generated sample (parameter sweeps)."""

    def generate(self, params: Mapping[str, Any], seed: int) -> Mapping[str, Any]: ...

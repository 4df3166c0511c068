"""The plugin kinds and the contract every strategy of a kind keeps.

A strategy is a class with ``name: ClassVar[str]`` and an attrs config (its
own fields). One that needs an optional dependency also sets
``requires: ClassVar[tuple[str, ...]]`` (importable module names) and
``extra: ClassVar[str]`` (the ``laden[extra]`` that installs them).

Each protocol's docstring lists, under *Rules*, what its conformance check in
:mod:`laden.testing` (``check_<kind>``) enforces; a strategy that passes its
check works wherever laden uses that kind. Rules shared by every kind:

- **Deterministic**: the same config and inputs (and seed) give the same
  output on every run, process and supported Python and numpy version.
- **Picklable**: strategies travel to worker processes; a copy behaves as
  the original.
- **No pickle on load**: nothing a strategy reads back is unpickled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from laden.records import ChunkMeasure, EpochPlan, LengthTable, PackPlan

__all__ = [
    "BATCH_META",
    "KINDS",
    "SAMPLE_FIELDS",
    "AsyncSource",
    "Backend",
    "Executor",
    "Generator",
    "IndexedSource",
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

#: The batch metadata a writer stores beside the columns and its reader returns
#: (as 0-d arrays): the batch's identity, checked against the manifest on read,
#: and never part of a batch's content digest.
BATCH_META: tuple[str, ...] = ("epoch", "step", "rank", "padding")

#: laden's names for the fields of a sample (see :class:`Source`).
SAMPLE_FIELDS: tuple[str, ...] = ("input_ids", "text", "loss_mask", "id", "key")


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
    """Text -> token ids, and lengths without materialising ids where it can.

    Rules (``check_tokenizer``):

    - ``encode(text)`` returns a 1-D array of integer ids, each ``>= 0`` (and
      below ``vocab_size`` where the tokenizer declares one);
    - ``count(texts)`` returns one integer per text, equal to
      ``len(encode(text))``: length caches are measured with ``count`` and
      batches are filled with ``encode``, so they must agree; ``count([])``
      is empty;
    - both are deterministic, also in a copy made by pickling (workers);
    - ``fingerprint()`` is a string, the same on every call and for an equal
      config; it changes whenever ids may change (length caches are keyed by it).
    """

    def encode(self, text: str) -> np.ndarray: ...

    def count(self, texts: Sequence[str]) -> np.ndarray: ...

    def fingerprint(self) -> str: ...


class Packer(Strategy, Protocol):
    """A length table -> packs of segments that fit ``max_length``.

    Rules (``check_packer``): every sample is placed exactly once, or split
    into segments that cover it exactly (starts ``0, L, 2L, ...``), or dropped
    or truncated by the ``overflow`` policy and reported; no pack is longer
    than ``max_length`` or empty (or has more than ``max_segments_per_pack``
    segments); the same table gives the identical plan; an empty table gives
    no packs.
    """

    def pack(self, table: LengthTable) -> PackPlan: ...


class Sampler(Strategy, Protocol):
    """A length table -> the batches of one epoch.

    Rules (``check_sampler``): every sample appears exactly once per epoch,
    unless dropped by policy (then it is in ``plan.dropped`` and counted in
    ``plan.report["dropped"]``); a batch's ``max_length`` is its longest member
    (or less where truncated); ``token_budget``, ``max_batch_size`` or
    ``batch_size`` are respected (a sample over the budget alone in its batch,
    bucket ``-1``); the same seed and epoch give an identical plan; a sampler
    that shuffles gives another order for another epoch or seed, and never
    derives the order from ``seed + epoch`` (use :func:`laden.seeding.rng_for`);
    an empty table gives no batches, a single sample one batch or a drop.
    """

    def plan_epoch(self, table: LengthTable, *, epoch: int = 0, seed: int = 0) -> EpochPlan: ...


class Source(Strategy, Protocol):
    """Anything -> a stream of samples: mappings of field name to value.

    laden's field names (:data:`SAMPLE_FIELDS`) mean the same in every source:
    ``input_ids`` (token ids, used instead of tokenizing), ``text`` (to be
    tokenized), ``loss_mask`` (one 0 or 1 per token), ``id`` (a string or an
    integer) and ``key`` (a bucket key); a source whose data names them
    otherwise renames them. Other fields pass through; stream sources add
    ``prompt`` + ``completion`` (strings, tokenized in that order) and the
    scalar fields of a stream sample (``sample_id``, ``reward``, ...: see
    :mod:`laden.stream.record`). A stream source may also offer ``__aiter__``
    (the same samples, for asyncio).

    Rules (``check_source``):

    - iterating yields mappings with string keys; ``input_ids`` when present
      is a 1-D sequence of non-negative integers; without it, ``text``,
      ``prompt`` and ``completion`` are strings; ``loss_mask`` has one 0 or
      1 per token of ``input_ids``;
    - a finite source iterated twice yields the same samples;
    - the source is picklable and a copy yields the same samples.
    """

    def __iter__(self) -> Iterator[Mapping[str, Any]]: ...


class AsyncSource(Source, Protocol):
    """A stream source that can also be read from asyncio (``async for``)."""

    def __aiter__(self) -> AsyncIterator[Mapping[str, Any]]: ...


@runtime_checkable
class IndexedSource(Source, Protocol):
    """A file read by byte offsets: measured in parallel, then read back at random.

    Length caches are built from it (:func:`laden.lengths.build_lengths`) and
    batches read their samples from it (:class:`laden.collate.SourceSamples`);
    core uses it only through these members.

    :ivar path: the file; length caches record it (absolute) and its size.
    :ivar on_error: ``"error"``: a malformed row stops a build (naming file
        and line); ``"skip"``: it is left out and counted.

    Its config is part of a length cache's identity, except fields declared
    ``attrs.field(..., metadata={"identity": False})``: settings that change
    how the file is read, not what it holds (``jsonl``'s ``chunk_bytes``).

    Rules (``check_source``, beside the :class:`Source` rules):

    - ``fingerprint()`` is the digest of the file's bytes,
      :func:`laden.digest.file_digest` of ``path`` (length caches and plans
      are matched against it); ``progress``, when given, is called with the
      number of bytes hashed as hashing goes (a big file's bar);
    - ``chunks()`` are ``(start, end)`` byte ranges that start at line starts
      and cover ``[0, size)`` in order, without gap or overlap, the same on
      every call;
    - ``measure(start, end, tokenizer)`` returns a
      :class:`~laden.records.ChunkMeasure` whose columns have one entry per
      kept row, offsets inside ``[start, end)`` and ascending; measuring the
      chunks one by one gives what measuring ``[0, size)`` at once gives
      (lines and errors counted from each range's start);
    - ``read_at(offsets)`` returns the samples at those offsets in that
      order, in laden's field names; at the offsets ``measure`` found they are
      the samples iteration yields, in file order, and each has the measured
      number of tokens (``len(input_ids)``, else ``tokenizer.count([text])``);
    - ``field_name(column)`` is what the file calls one of laden's fields
      (used in messages), ``column`` itself when it is not renamed.
    """

    @property
    def path(self) -> str: ...

    @property
    def on_error(self) -> str: ...

    def fingerprint(self, *, progress: Callable[[int], object] | None = None) -> str: ...

    def chunks(self) -> list[tuple[int, int]]: ...

    def measure(self, start: int, end: int, tokenizer: Tokenizer) -> ChunkMeasure: ...

    def read_at(self, offsets: Sequence[int] | np.ndarray) -> Sequence[Mapping[str, Any]]: ...

    def field_name(self, column: str) -> str: ...


class Writer(Strategy, Protocol):
    """Collated batches -> files (with a reader half).

    ``write`` gets an open binary file (laden writes it under a temporary
    name, fsyncs and renames it), the batch's arrays and its metadata (the
    keys of :data:`BATCH_META`, plus ``fingerprint``); ``read`` returns the
    arrays of a file it wrote. A writer may also offer ``read_bytes(buffer,
    name)``: the same from the file's bytes already in memory (``uint8``).

    Rules (``check_writer``):

    - ``suffix`` is the file name's ending, starting with ``.``;
    - ``read`` returns every column with its values, dtype and shape
      (0-d, empty and multi-dimensional ones included), plus each
      :data:`BATCH_META` key of the metadata as a 0-d array; ``read_bytes``,
      where offered, returns the same;
    - nothing is pickled: an object array is refused when written, and
      reading never calls the unpickler (``np.load(..., allow_pickle=False)``,
      ``torch.load(..., weights_only=True)``);
    - the same batch written twice, at another time, gives identical bytes
      (no timestamps), so a rewritten file has the same checksum.
    """

    suffix: ClassVar[str]

    def write(
        self, file: BinaryIO, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None: ...

    def read(self, path: str) -> dict[str, np.ndarray]: ...


class Backend(Strategy, Protocol):
    """Host arrays -> framework arrays on a device.

    Rules (``check_backend``, for a :class:`laden.collate.CollatingBackend`):
    in padded and packed layouts, with and without loss masks, every column
    has the shape, values and dtype the ``numpy`` reference gives (integers in
    the configured width, ``cu_seqlens`` int32, ``sample_ids`` int64, masks
    bool), and ``max_seqlen`` is a plain ``int``.
    """

    def convert(self, arrays: Mapping[str, np.ndarray]) -> Mapping[str, Any]: ...


class Executor(Strategy, Protocol):
    """A map of work over processes (or a cluster), in order, with progress.

    Rules (``check_executor``):

    - ``map(fn, items)`` yields ``fn(item)`` for every item, in input order,
      whatever order the work finishes in; no items, no results;
    - it is lazy and bounded: it pulls at most a bounded number of items
      ahead of the results read, so an endless iterator can be mapped, and
      closing the result iterator early returns promptly;
    - a task that raises surfaces as that exception (same type and message)
      in the caller, when its result is reached;
    - ``progress(done, total)`` is called once per result, ``done`` counting
      up from 1, ``total`` as given.
    """

    def map(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        total: int | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> Iterator[R]: ...


class Generator(Strategy, Protocol):
    """Parameters + seed -> one generated sample (parameter sweeps).

    Rules (``check_generator``): ``generate(params, seed)`` returns a mapping
    of field name to numeric array (bool, integer, float or complex; never
    objects); the same params and seed give identical arrays (also in a copy
    made by pickling, as on an executor); different seeds give different
    samples. Random choices come from :func:`laden.seeding.rng_for`.
    """

    def generate(self, params: Mapping[str, Any], seed: int) -> Mapping[str, Any]: ...

"""Chunked maps: what every executor shares to send many items per task.

A task per item costs an executor a round trip (pickling, a queue, a wake-up:
0.1-0.7 ms), which dwarfs tiny work. Executors group items into chunks, run a
chunk as one task with :func:`run_chunk`, and unpack the results in order with
:func:`unchunk`, so callers still see one result, and one progress call, per
item. With ``chunksize="auto"``, :class:`ChunkSizer` starts with one item per
task, measures how long items take in the workers, and groups as many as make a
task last at least :data:`TARGET_SECONDS` (capped, so work stays spread over the
workers and an endless input is pulled a bounded amount ahead).

A failing item ends its chunk: the items before it keep their results, and its
exception (same type and message, the worker's traceback as its cause) is
raised when its turn comes, as if each item had been a task of its own.
"""

from __future__ import annotations

import math
import pickle
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, Generic, Literal, TypeVar

import attrs

from laden.errors import ConfigError

__all__ = [
    "MAX_AUTO_CHUNK",
    "TARGET_SECONDS",
    "ChunkResult",
    "ChunkSizer",
    "Chunksize",
    "RemoteTraceback",
    "check_chunksize",
    "chunk_items",
    "run_chunk",
    "unchunk",
]

T = TypeVar("T")
R = TypeVar("R")

#: ``chunksize="auto"`` groups items so a task lasts at least this long (seconds).
TARGET_SECONDS = 0.005
#: The most items ``chunksize="auto"`` puts in one task.
MAX_AUTO_CHUNK = 1024
#: With a known total, ``auto`` leaves at least this many chunks per worker (load balance).
CHUNKS_PER_WORKER = 4

Chunksize = int | Literal["auto"]


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, set as its ``__cause__``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


@attrs.frozen
class ChunkResult(Generic[R]):
    """What a worker sends back for one chunk.

    :param results: the results of the items before the first failure (all, if none failed).
    :param seconds: how long the worker spent on those items.
    :param error: the exception of the item after the last result, or None.
    :param trace: the worker's traceback of ``error``, as text.
    """

    results: list[R]
    seconds: float
    error: BaseException | None = None
    trace: str = ""


def _sendable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling, else a RuntimeError that says what it was."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def run_chunk(fn: Callable[[T], R], chunk: list[T]) -> ChunkResult[R]:
    """Run ``fn`` over ``chunk`` in a worker, stopping at the first item that raises."""
    results: list[R] = []
    started = time.perf_counter()
    for item in chunk:
        try:
            results.append(fn(item))
        except Exception as exc:
            trace = "".join(traceback.format_exception(exc))
            seconds = time.perf_counter() - started
            return ChunkResult(results, seconds, _sendable(exc), trace)
    return ChunkResult(results, time.perf_counter() - started)


def check_chunksize(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """The validator of an executor's ``chunksize``: ``"auto"`` or an integer >= 1."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return
    raise ConfigError(f'must be "auto" or an integer >= 1, got {value!r}', path=(attribute.name,))


class ChunkSizer:
    """Decides how many items go into the next task, from what the workers measured.

    :param chunksize: ``"auto"`` or a fixed number of items per task.
    :param workers: how many tasks run at once (for the load-balance cap).
    :param total: how many items there are, when known (for the load-balance cap).
    """

    def __init__(self, chunksize: Chunksize, *, workers: int, total: int | None) -> None:
        self.fixed = None if chunksize == "auto" else int(chunksize)
        cap = MAX_AUTO_CHUNK
        if total is not None:
            cap = min(cap, max(1, math.ceil(total / (max(1, workers) * CHUNKS_PER_WORKER))))
        self.cap = cap
        self.items = 0
        self.seconds = 0.0

    def observe(self, items: int, seconds: float) -> None:
        """Record that a worker ran ``items`` items in ``seconds``."""
        self.items += items
        self.seconds += seconds

    def next_size(self) -> int:
        """Items for the next task: one until something was measured, then enough for
        :data:`TARGET_SECONDS`, at most the cap."""
        if self.fixed is not None:
            return self.fixed
        if self.items == 0:
            return 1
        per_item = self.seconds / self.items
        if per_item <= 0:
            return self.cap
        return max(1, min(self.cap, math.ceil(TARGET_SECONDS / per_item)))


def chunk_items(items: Iterable[T], sizer: ChunkSizer) -> Iterator[list[T]]:
    """``items`` in lists, each as long as ``sizer`` says when it is pulled (lazily)."""
    iterator = iter(items)
    while True:
        chunk = list(islice(iterator, sizer.next_size()))
        if not chunk:
            return
        yield chunk


def unchunk(
    chunks: Iterable[ChunkResult[R]],
    sizer: ChunkSizer,
    *,
    total: int | None,
    progress: Callable[[int, int | None], None] | None,
) -> Iterator[R]:
    """Every item's result from the chunks' results, in order, with a progress call each.

    A chunk's error is raised (its worker traceback as the cause) after the
    results of the items before it.
    """
    done = 0
    for chunk in chunks:
        sizer.observe(len(chunk.results) + (chunk.error is not None), chunk.seconds)
        for result in chunk.results:
            done += 1
            if progress is not None:
                progress(done, total)
            yield result
        if chunk.error is not None:
            raise chunk.error from RemoteTraceback(chunk.trace)

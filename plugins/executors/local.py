"""``local``: a map over a pool of worker processes on this machine."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import Future, ProcessPoolExecutor
from typing import ClassVar, TypeVar

import attrs

from laden.hookspecs import hookimpl
from laden.registry import Registry
from laden.validators import at_least, one_of, optional

T = TypeVar("T")
R = TypeVar("R")


@attrs.frozen(kw_only=True)
class LocalExecutor:
    """Runs ``fn`` over items in worker processes and yields results in input order.

    At most ``workers * prefetch`` items are in flight, so an endless or huge
    input is consumed lazily. The first failure cancels what has not started
    and is raised in the caller.

    :param workers: worker processes; None for one per CPU, 0 to run in this process.
    :param start_method: ``spawn`` (safe default), ``forkserver`` or ``fork``.
    :param prefetch: items queued per worker ahead of the results being read.
    """

    name: ClassVar[str] = "local"

    workers: int | None = attrs.field(default=None, validator=optional(at_least(0)))
    start_method: str = attrs.field(
        default="spawn", validator=one_of("spawn", "forkserver", "fork")
    )
    prefetch: int = attrs.field(default=2, validator=at_least(1))

    @property
    def effective_workers(self) -> int:
        return (os.cpu_count() or 1) if self.workers is None else self.workers

    def map(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        total: int | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> Iterator[R]:
        """Yield ``fn(item)`` for every item, in order, calling ``progress(done, total)``."""
        if total is None and isinstance(items, Sized):
            total = len(items)
        workers = self.effective_workers
        if workers == 0:
            yield from self._inline(fn, items, total, progress)
            return
        context = multiprocessing.get_context(self.start_method)
        pending: deque[Future[R]] = deque()
        done = 0
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            try:
                iterator = iter(items)
                limit = workers * self.prefetch
                exhausted = False
                while True:
                    while not exhausted and len(pending) < limit:
                        try:
                            item = next(iterator)
                        except StopIteration:
                            exhausted = True
                            break
                        pending.append(pool.submit(fn, item))
                    if not pending:
                        break
                    result = pending.popleft().result()
                    done += 1
                    if progress is not None:
                        progress(done, total)
                    yield result
            finally:
                for future in pending:
                    future.cancel()

    @staticmethod
    def _inline(
        fn: Callable[[T], R],
        items: Iterable[T],
        total: int | None,
        progress: Callable[[int, int | None], None] | None,
    ) -> Iterator[R]:
        for done, item in enumerate(items, 1):
            result = fn(item)
            if progress is not None:
                progress(done, total)
            yield result


@hookimpl
def laden_register_executors(registry: Registry) -> None:
    registry.add(LocalExecutor)

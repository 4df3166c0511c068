"""The one ordered, bounded prefetch loop: work submitted ahead, results in input order.

Every part of laden that overlaps work with its consumer uses :func:`ordered_prefetch`:
the ``local`` executor (process futures), :class:`~laden.files.read.BatchReader`
(thread futures), and later the Ray executor and streams. It pulls the input
lazily (an endless input is fine), keeps at most ``ahead`` items in flight and,
with ``weigh``, their weight within ``budget`` (one item always fits, so a
huge one cannot stall it), and yields ``(item, result)`` in input order. A
failed item's exception is raised when its turn comes; closing the iterator
early, or an error, cancels what has not started.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from typing import Protocol, TypeVar

__all__ = ["Pending", "ordered_prefetch"]

T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Pending(Protocol[R_co]):
    """Work under way: a ``concurrent.futures.Future``, or anything shaped like one."""

    def result(self) -> R_co: ...

    def cancel(self) -> bool: ...


_END = object()


def ordered_prefetch(
    submit: Callable[[T], Pending[R]],
    items: Iterable[T],
    *,
    ahead: int,
    weigh: Callable[[T], int] | None = None,
    budget: int | None = None,
) -> Generator[tuple[T, R], None, None]:
    """Yield ``(item, result)`` for every item, in order, submitting up to ``ahead`` ahead.

    :param submit: starts the work of one item and returns its future.
    :param items: the input, pulled only as room frees up.
    :param ahead: items in flight at most (>= 1).
    :param weigh: an item's weight (bytes, say), counted while it is in flight.
    :param budget: the weight in flight at most, beyond the first item.
    """
    if ahead < 1:
        raise ValueError(f"ahead must be >= 1, got {ahead}")
    pending: deque[tuple[T, int, Pending[R]]] = deque()
    held = 0
    iterator = iter(items)
    waiting: object = _END  # an item pulled but not yet submitted (it did not fit)
    exhausted = False
    try:
        while True:
            while len(pending) < ahead:
                if waiting is _END:
                    if exhausted:
                        break
                    waiting = next(iterator, _END)
                    if waiting is _END:
                        exhausted = True
                        break
                item: T = waiting  # type: ignore[assignment]
                weight = weigh(item) if weigh is not None else 0
                if pending and budget is not None and held + weight > budget:
                    break
                pending.append((item, weight, submit(item)))
                held += weight
                waiting = _END
            if not pending:
                return
            item, weight, future = pending.popleft()
            result = future.result()
            held -= weight
            yield item, result
    finally:
        for _, _, future in pending:
            future.cancel()

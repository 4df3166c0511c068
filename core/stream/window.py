"""Rolling plan windows: snapshots of a stream become fingerprinted batch plans.

Every ``window_size - overlap`` new samples, the last ``window_size`` samples
(by stream position) become a :class:`~laden.plan.BatchPlan` built with the
given sampler and packer, exactly as offline data would. Each window gets a
fingerprint (its plan's fingerprint and a digest of its tokens: no
timestamps, so the same data and seed give the same fingerprint) and a log
entry with its stream position, so a run can be audited and resumed.

Collection and planning run in background threads: while the training loop
iterates the batches of the ready window, the next one is collected and
planned, so a training step never waits on the network.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import zlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from laden.collate import BatchLayout
from laden.digest import array_digest, digest
from laden.errors import ConfigError, DataError
from laden.io import plain_json
from laden.plan import BatchPlan
from laden.records import LengthTable, Ragged
from laden.serde import config_of
from laden.stateful import check_state
from laden.stream.buffer import ReplayBuffer

if TYPE_CHECKING:
    from laden.kernel import Kernel

__all__ = ["KIND", "RollingPlanWindow", "Window"]

#: The ``kind`` of a rolling window's state.
KIND = "laden.rolling_window"
_POLL = 0.05  # seconds between checks for close() while a thread waits


def window_seed(seed: int, index: int) -> int:
    """The plan seed of window ``index``: derived through SeedSequence, never ``seed + index``."""
    tag = zlib.crc32(b"rolling_window.plan")
    return int(np.random.SeedSequence([seed, index, tag]).generate_state(1, np.uint32)[0])


@attrs.frozen(kw_only=True, eq=False)
class Window:
    """One rolling window: its samples, their plan, and where they came from.

    ``start``/``stop`` are stream positions (``[start, stop)``); ``count`` may
    be below ``stop - start`` when a replay buffer evicted some of them.
    Units of ``plan`` index the rows of ``tokens`` (and ``table``).
    """

    index: int
    start: int
    stop: int
    table: LengthTable
    tokens: Ragged
    loss_mask: Ragged | None
    plan: BatchPlan
    seed: int
    tokens_digest: str
    fingerprint: str

    @property
    def count(self) -> int:
        return len(self.table)

    def record(self) -> dict[str, Any]:
        """The window's log entry (plain data, no timestamp)."""
        ids = self.table.ids
        return {
            "index": self.index,
            "fingerprint": self.fingerprint,
            "plan_fingerprint": self.plan.fingerprint,
            "tokens_digest": self.tokens_digest,
            "start": self.start,
            "stop": self.stop,
            "count": self.count,
            "first_sample_id": int(ids[0]) if ids is not None and ids.size else None,
            "last_sample_id": int(ids[-1]) if ids is not None and ids.size else None,
            "seed": self.seed,
            "steps": self.plan.total_steps,
            "tokens": int(self.table.num_tokens),
        }

    def layout(self, spec: Any) -> BatchLayout:
        return BatchLayout.for_batch(spec, self.table.length, self.plan.pack)

    def batches(self, backend: Any, *, epoch: int = 0, step: int = 0) -> Iterator[dict[str, Any]]:
        """The plan's batches collated by ``backend`` (from ``(epoch, step)``), tagged
        with ``window``, ``epoch``, ``step`` and ``padding``."""
        for e, s, spec in self.plan.iter_from(epoch, step):
            batch = dict(backend.collate(self.layout(spec), self.tokens, loss_mask=self.loss_mask))
            batch.update(window=self.index, epoch=e, step=s, padding=spec.padding)
            yield batch


_END = object()


class RollingPlanWindow:
    """Windows of a stream (or of a replay buffer other threads fill), planned in the background.

    :param source: a :class:`~laden.stream.ReplayBuffer` that collectors add
        to (positions are its adds, counted from when the window is made), or
        a stream: any iterable of sample dicts, a source plugin (sync, or async
        only), collected by a background thread into a FIFO buffer of its own.
    :param window_size: samples per window.
    :param overlap: samples a window shares with the one before; a window is
        cut every ``window_size - overlap`` new samples.
    :param sampler: the sampler strategy of every window's plan.
    :param packer: an optional packer strategy.
    :param seed: window ``i``'s plan seed derives from ``(seed, i)``.
    :param epochs: epochs per window plan.
    :param kernel: announces each plan through ``laden_plan_built``.
    :param max_pending: windows planned ahead of the consumer (the collector
        pauses beyond that: backpressure, nothing is dropped).
    :param drop_last: when a stream ends, leave out the last, partial window.
    :param tokenizer: for streams of ``text`` or ``prompt``/``completion`` samples.
    :param max_restarts: a stream that raises is resumed (with its
        ``iter_from(position)``) up to this many times; errors are counted.
    """

    def __init__(
        self,
        source: Any,
        *,
        window_size: int,
        sampler: Any,
        overlap: int = 0,
        packer: Any = None,
        seed: int = 0,
        epochs: int = 1,
        kernel: Kernel | None = None,
        max_pending: int = 1,
        drop_last: bool = False,
        tokenizer: Any = None,
        max_restarts: int = 0,
    ) -> None:
        if window_size < 1:
            raise ConfigError(f"must be >= 1, got {window_size}", path=("window_size",))
        if not 0 <= overlap < window_size:
            raise ConfigError(
                f"must be in 0..window_size-1 ({window_size - 1}), got {overlap}",
                path=("overlap",),
            )
        if epochs < 1:
            raise ConfigError(f"must be >= 1, got {epochs}", path=("epochs",))
        if max_pending < 1:
            raise ConfigError(f"must be >= 1, got {max_pending}", path=("max_pending",))
        self.window_size, self.overlap = window_size, overlap
        self.stride = window_size - overlap
        self.sampler, self.packer = sampler, packer
        self.seed, self.epochs, self.kernel = seed, epochs, kernel
        self.max_pending, self.drop_last = max_pending, drop_last
        self.max_restarts = max_restarts
        self.tokenizer = tokenizer
        if isinstance(source, ReplayBuffer):
            self.buffer: ReplayBuffer = source
            self.stream: Any = None
            self.base = source.adds
        else:
            self.stream = source
            self.base = 0
            self.buffer = self._stream_buffer()
        self._offset = 0  # stream position of the buffer's first add (stream mode)
        self.next_index = 0  # the next window handed out
        self.log: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.restarts = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._closed = threading.Event()
        self._ended = threading.Event()  # the stream is exhausted (or failed)
        self._failure: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._started = False
        self._progress = threading.Condition()
        self._cut_stop = 0  # stop of the next window to cut (stream mode backpressure)

    def _stream_buffer(self) -> ReplayBuffer:
        capacity = self.window_size + self.stride * (self.max_pending + 2)
        return ReplayBuffer(
            capacity,
            eviction="fifo",
            flush_every=max(1, min(4096, self.stride)),
            tokenizer=self.tokenizer,
        )

    # -------------------------------------------------------------- windows

    def bounds(self, index: int) -> tuple[int, int]:
        """Stream positions ``[start, stop)`` of window ``index``."""
        stop = self.base + self.window_size + index * self.stride
        return stop - self.window_size, stop

    def build(self, index: int, start: int, stop: int) -> Window:
        """Window ``index`` over the buffered samples at positions ``[start, stop)``."""
        lo, hi = start - self._offset, stop - self._offset
        table, tokens, mask = self.buffer.snapshot(seq_range=(max(lo, 0), hi))
        seed = window_seed(self.seed, index)
        plan = BatchPlan.build(
            table, self.sampler, self.packer, epochs=self.epochs, seed=seed, kernel=self.kernel
        )
        tokens_digest = array_digest(
            tokens.values, tokens.offsets, None if mask is None else mask.values
        )
        return Window(
            index=index,
            start=start,
            stop=stop,
            table=table,
            tokens=tokens,
            loss_mask=mask,
            plan=plan,
            seed=seed,
            tokens_digest=tokens_digest,
            fingerprint=digest(plan.fingerprint, tokens_digest),
        )

    # -------------------------------------------------------------- threads

    def start(self) -> None:
        """Start collecting and planning (iteration does it on first use)."""
        if self._started:
            return
        self._started = True
        self._cut_stop = self.bounds(self.next_index)[1]
        if self.stream is not None:
            # From one stride before the next window: a last, partial window may reach back there.
            self._offset = max(self.bounds(self.next_index)[0] - self.stride, self.base)
            collector = threading.Thread(
                target=self._collect, name="laden-window-collector", daemon=True
            )
            self._threads.append(collector)
        planner = threading.Thread(target=self._plan, name="laden-window-planner", daemon=True)
        self._threads.append(planner)
        for thread in self._threads:
            thread.start()

    def _may_add(self, position: int) -> bool:
        """Backpressure: wait while the collector is too far ahead of the windows."""
        limit = self._cut_stop + self.stride * self.max_pending
        if position < limit:
            return True
        with self._progress:
            while not self._closed.is_set():
                limit = self._cut_stop + self.stride * self.max_pending
                if position < limit:
                    return True
                self._progress.wait(_POLL)
        return False

    def _collect(self) -> None:
        position = self._offset
        try:
            while True:
                try:
                    position = self._drain(position)
                    return
                except Exception as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    resumable = hasattr(self.stream, "iter_from")
                    if (
                        self._closed.is_set()
                        or not resumable
                        or (self.restarts >= self.max_restarts)
                    ):
                        self._failure = exc
                        return
                    self.restarts += 1
                    position = self._offset + self.buffer.adds
        finally:
            self._ended.set()
            self.buffer.flush()
            with self.buffer._cond:  # wake the planner
                self.buffer._cond.notify_all()

    def _iterator(self, position: int) -> Any:
        stream = self.stream
        if hasattr(stream, "iter_from"):
            return stream.iter_from(position)
        if hasattr(stream, "__iter__"):
            it = iter(stream)
            for _ in range(position):  # a stream that cannot seek: skip what was seen
                next(it)
            return it
        return None

    def _drain(self, position: int) -> int:
        add = self.buffer.add
        it = self._iterator(position)
        if it is None:  # an async-only source
            return asyncio.run(self._drain_async(position))
        for sample in it:
            if not self._may_add(position):
                return position
            add(sample)
            position += 1
        return position

    async def _drain_async(self, position: int) -> int:
        add = self.buffer.add
        seen = 0
        async for sample in self.stream:
            seen += 1
            if seen <= position:
                continue
            while not self._may_add_nowait(position):
                if self._closed.is_set():
                    return position
                await asyncio.sleep(_POLL)
            add(sample)
            position += 1
        return position

    def _may_add_nowait(self, position: int) -> bool:
        return position < self._cut_stop + self.stride * self.max_pending

    def _plan(self) -> None:
        index = self.next_index
        last_stop = self.bounds(index)[0] + self.overlap if index else self.base
        try:
            while not self._closed.is_set():
                start, stop = self.bounds(index)
                need = stop - self._offset
                while not self.buffer.wait_for_adds(need, _POLL):
                    if self._closed.is_set():
                        return
                    if self._ended.is_set() and self.buffer.adds < need:
                        break
                have = self._offset + self.buffer.adds
                if have < stop:  # the stream ended before this window filled
                    if self._failure is not None:
                        self._put(self._failure)
                        return
                    if self.drop_last or have <= last_stop:
                        self._put(_END)
                        return
                    stop = have
                    start = max(stop - self.window_size, self.base)
                    self._put(self.build(index, start, stop))
                    self._put(_END)
                    return
                window = self.build(index, start, stop)
                last_stop = stop
                index += 1
                with self._progress:
                    self._cut_stop = self.bounds(index)[1]
                    self._progress.notify_all()
                if not self._put(window):
                    return
        except BaseException as exc:  # hand any failure to the consumer
            self._put(exc)

    def _put(self, item: Any) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    # ------------------------------------------------------------ consumer

    def next_window(self, timeout: float | None = None) -> Window | None:
        """The next window (None once the stream ended); ``timeout`` seconds at most
        (then a TimeoutError)."""
        self.start()
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"no window within {timeout} s (window {self.next_index} needs stream "
                f"position {self.bounds(self.next_index)[1]}, at {self.position})"
            ) from None
        if item is _END:
            self._queue.put(_END)  # later calls see the end too
            return None
        if isinstance(item, BaseException):
            self._queue.put(item)
            raise item
        self.log.append(item.record())
        self.next_index = item.index + 1
        return item  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Window]:
        while (window := self.next_window()) is not None:
            yield window

    @property
    def position(self) -> int:
        """Stream position of the samples collected so far."""
        return self._offset + self.buffer.adds

    def close(self) -> None:
        """Stop the background threads (a stalled stream's thread is left to die with
        the process: it is a daemon and holds nothing)."""
        self._closed.set()
        with self._progress:
            self._progress.notify_all()
        for thread in self._threads:
            thread.join(timeout=1.0)

    def __enter__(self) -> RollingPlanWindow:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- state

    def _identity(self) -> dict[str, Any]:
        return {
            "window_size": self.window_size,
            "overlap": self.overlap,
            "seed": self.seed,
            "epochs": self.epochs,
            "sampler": config_of(self.sampler),
            "packer": config_of(self.packer) if self.packer is not None else None,
        }

    def state_dict(self) -> dict[str, Any]:
        """The config, the stream base, the next window and the log of windows handed out."""
        return {
            "kind": KIND,
            "format_version": 1,
            **self._identity(),
            "base": self.base,
            "next_index": self.next_index,
            "log": [dict(r) for r in self.log],
            "errors": len(self.errors),
            "restarts": self.restarts,
        }

    def load_state_dict(self, state: Mapping[str, Any], *, next_index: int | None = None) -> None:
        """Resume: the next window handed out is ``state['next_index']`` (or ``next_index``).

        Call before iterating. The config must match; a stream is re-read from
        the start of that window (``iter_from``, or by skipping samples).
        """
        if self._started:
            raise ConfigError("load_state_dict must come before the window is started")
        check_state(state, kind=KIND)
        # As plain JSON data, so a state saved as JSON (tuples read back as lists) fits.
        mine = plain_json(self._identity())
        theirs = plain_json({key: state.get(key) for key in mine})
        if theirs != mine:
            diff = sorted(k for k in mine if theirs[k] != mine[k])
            raise DataError(f"the state is of a window configured differently ({', '.join(diff)})")
        self.base = int(state["base"])
        self.next_index = int(state["next_index"] if next_index is None else next_index)
        self.log = [dict(r) for r in state.get("log", [])[: self.next_index]]
        self.restarts = int(state.get("restarts", 0))
        if self.stream is not None:
            self.buffer = self._stream_buffer()

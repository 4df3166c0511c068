"""A bounded, columnar replay buffer for stream samples.

Storage is columnar: token ids (and loss masks) live in one paged arena
(:class:`~laden.stream.arena.PagedArena`), metadata JSON in another, and
every per-sample field in a numpy column indexed by *slot*; no Python object
is kept per sample. Sampling weights live in a sum tree over the slots
(:class:`~laden.stream.sumtree.SumTree`), so a prioritized draw of ``k``
samples costs ``k log N`` in a handful of vectorized numpy steps.

``add`` stages samples in plain lists and flushes them into the columns in
blocks (every ``flush_every`` adds, and before anything reads the buffer);
eviction is decided per block, so one-at-a-time adds cost a few list appends.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import attrs
import numpy as np

from laden.errors import ConfigError, DataError
from laden.io import (
    atomic_directory,
    check_format,
    plain_json,
    read_array,
    read_json,
    write_array,
    write_json,
)
from laden.records import LengthTable, Ragged, offsets_from_sizes
from laden.seeding import rng_for
from laden.stateful import check_state
from laden.stream.arena import PagedArena
from laden.stream.record import SCALAR_COLUMNS, TOKEN_DTYPE, SampleChunk, SampleRows
from laden.stream.sumtree import SumTree
from laden.validators import at_least, one_of, optional, positive

__all__ = ["FORMAT_VERSION", "KIND", "BufferConfig", "Draw", "ReplayBuffer", "Snapshot"]

#: Version of the saved layout; a newer one is refused.
FORMAT_VERSION = 1
#: The ``kind`` in a saved buffer's meta.json.
KIND = "laden.replay_buffer"

EVICTIONS = ("fifo", "priority", "random", "reservoir")
_META_PAGE = 1 << 20
_EMPTY = np.zeros(0, dtype=np.int64)


def _power_of_two(_instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if not isinstance(value, int) or value < 64 or value & (value - 1):
        raise ConfigError(f"must be a power of two >= 64, got {value!r}", path=(attribute.name,))


@attrs.frozen(kw_only=True)
class BufferConfig:
    """What a :class:`ReplayBuffer` keeps, evicts and draws.

    :param capacity: at most this many samples.
    :param max_tokens: at most this many tokens (None: bounded by ``capacity`` only).
    :param eviction: what leaves when a bound is reached: ``fifo`` (oldest),
        ``priority`` (lowest priority first, oldest among equals), ``random``
        (uniformly among the stored samples) or ``reservoir`` (Algorithm R: a
        uniform sample of everything ever added).
    :param alpha: a sample's weight for prioritized draws is ``(p + epsilon) ** alpha``,
        ``p`` its ``difficulty`` until :meth:`ReplayBuffer.update_priorities` sets one.
    :param epsilon: keeps samples of priority 0 drawable.
    :param seed: every random choice (draws, eviction) derives from it.
    :param page_tokens: tokens per arena page (a power of two); a sample may not be longer.
    :param slack: garbage (tokens of evicted samples still in partly used pages)
        allowed, as a fraction of the live tokens, before pages are compacted.
    :param flush_every: staged one-at-a-time adds that are flushed as one block.
    """

    capacity: int = attrs.field(validator=positive)
    max_tokens: int | None = attrs.field(default=None, validator=optional(positive))
    eviction: str = attrs.field(default="fifo", validator=one_of(*EVICTIONS))
    alpha: float = attrs.field(default=1.0, validator=at_least(0))
    epsilon: float = attrs.field(default=1e-3, validator=at_least(0))
    seed: int = attrs.field(default=0, validator=at_least(0))
    page_tokens: int = attrs.field(default=1 << 22, validator=_power_of_two)
    slack: float = attrs.field(default=0.125, validator=positive)
    flush_every: int = attrs.field(default=4096, validator=positive)


@attrs.frozen(kw_only=True, eq=False)
class Draw:
    """Samples drawn from a buffer: their slots (handles) and ids.

    ``seq`` is each sample's position in the buffer's add order; with the
    slot it tells whether the slot still holds the drawn sample (for
    :meth:`ReplayBuffer.update_priorities`). ``weight`` is the sampling weight
    at draw time; ``pass_number`` is set for draws without replacement, and
    ``end_of_pass`` when this draw finished the pass.
    """

    slots: np.ndarray
    seq: np.ndarray
    sample_id: np.ndarray
    weight: np.ndarray
    pass_number: int | None = None
    end_of_pass: bool = False

    def __len__(self) -> int:
        return int(self.slots.size)


class Snapshot(NamedTuple):
    """A buffer's samples in add order: lengths and ids, tokens, loss masks."""

    table: LengthTable
    tokens: Ragged
    loss_mask: Ragged | None


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return dict(rng.bit_generator.state)


def _rng_from(state: Mapping[str, Any]) -> np.random.Generator:
    bit = np.random.PCG64()
    bit.state = dict(state)  # type: ignore[assignment]
    return np.random.Generator(bit)


class ReplayBuffer:
    """A bounded buffer of stream samples with eviction, prioritized sampling and passes.

    Keyword arguments are those of :class:`BufferConfig`, or give ``config=``.

    :param tokenizer: tokenizes samples that carry ``text`` or ``prompt`` +
        ``completion`` rather than ``input_ids``.

    Safe to ``add`` from several threads; every method takes one lock.
    """

    name: ClassVar[str] = "replay_buffer"

    def __init__(
        self,
        capacity: int | None = None,
        *,
        config: BufferConfig | None = None,
        tokenizer: Any = None,
        **settings: Any,
    ) -> None:
        if config is None:
            if capacity is None:
                raise ConfigError("a replay buffer needs a capacity", path=("capacity",))
            try:
                config = BufferConfig(capacity=capacity, **settings)
            except TypeError as exc:
                raise ConfigError(str(exc), path=("buffer",)) from None
        elif capacity is not None or settings:
            raise ConfigError("give either config= or the settings, not both", path=("buffer",))
        self.config = config
        self.tokenizer = tokenizer
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0
        self._reset()

    def _reset(self) -> None:
        c = self.config
        self._rows = SampleRows(self.tokenizer, where="ReplayBuffer.add")
        self._tokens = PagedArena(
            {"tokens": TOKEN_DTYPE}, c.page_tokens, what="tokens", setting="page_tokens"
        )
        self._meta = PagedArena({"meta": np.uint8}, _META_PAGE, what="meta bytes")
        self._slot_cap = 0
        self._cols: dict[str, np.ndarray] = {}
        self._tree = SumTree(min(c.capacity, 1024))
        self._ensure_slots(min(c.capacity, 1024))
        self._n_slots = 0
        self._free_slots: list[int] = []
        self._size = 0
        self._seq = 0  # samples flushed (the next sample's seq)
        self._evictions = 0
        self._rejected = 0
        self._has_mask = False
        self._source_names: list[str] = []
        self._source_codes: dict[str, int] = {}
        self._evict_rng = rng_for(c.seed, 0, "replay_buffer.evict")
        self._sample_rng = rng_for(c.seed, 0, "replay_buffer.sample")
        self._pass: dict[str, Any] | None = None
        self._passes = 0
        self._id_index: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------- columns

    def _ensure_slots(self, needed: int) -> None:
        if needed <= self._slot_cap:
            return
        cap = min(max(needed, 2 * self._slot_cap, 1024), max(self.config.capacity, needed))
        specs = {
            "live": np.dtype(bool),
            "seq": np.dtype(np.int64),
            "tok_pos": np.dtype(np.int64),
            "tok_len": np.dtype(np.int32),
            "meta_pos": np.dtype(np.int64),
            "meta_len": np.dtype(np.int32),
            **SCALAR_COLUMNS,
        }
        for name, dtype in specs.items():
            new = np.zeros(cap, dtype=dtype)
            old = self._cols.get(name)
            if old is not None:
                new[: old.size] = old
            self._cols[name] = new
        self._slot_cap = cap
        self._tree.grow(cap)

    def _weights(self, priority: np.ndarray) -> np.ndarray:
        c = self.config
        p = np.asarray(priority, dtype=np.float64) + c.epsilon
        return p if c.alpha == 1.0 else p**c.alpha

    # ----------------------------------------------------------------- add

    def add(self, sample: Mapping[str, Any]) -> None:
        """Add one sample dict (stream sample contract); staged, flushed in blocks."""
        with self._lock:
            self._rows.append(sample)
            if self._rows.count >= self.config.flush_every:
                self._flush()
            if self._waiting:
                self._cond.notify_all()

    def extend(self, samples: Iterable[Mapping[str, Any]]) -> None:
        """Add sample dicts one after another."""
        for sample in samples:
            self.add(sample)

    def add_chunk(self, chunk: SampleChunk) -> None:
        """Add many samples at once (after any staged ones)."""
        with self._lock:
            self._flush()
            self._insert(chunk)
            if self._waiting:
                self._cond.notify_all()

    def flush(self) -> None:
        """Move staged adds into storage (every read does this first)."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if self._rows.count:
            chunk = self._rows.build()
            self._rows.clear()
            self._insert(chunk)

    @property
    def adds(self) -> int:
        """Samples added so far (staged ones included)."""
        with self._lock:
            return self._seq + self._rows.count

    def wait_for_adds(self, count: int, timeout: float | None = None) -> bool:
        """Block until ``adds >= count`` (True) or ``timeout`` seconds pass (False)."""
        with self._cond:
            self._waiting += 1
            try:
                return self._cond.wait_for(lambda: self.adds >= count, timeout)
            finally:
                self._waiting -= 1

    def _source_map(self, names: tuple[str, ...]) -> np.ndarray:
        codes = []
        for name in names:
            code = self._source_codes.get(name)
            if code is None:
                code = self._source_codes[name] = len(self._source_names)
                self._source_names.append(name)
            codes.append(code)
        return np.asarray(codes or [0], dtype=np.int16)

    def _live_slots(self) -> np.ndarray:
        return np.flatnonzero(self._cols["live"][: self._n_slots])

    def _insert(self, chunk: SampleChunk) -> None:
        """Decide evictions for a block of new samples, then store the kept ones."""
        n = len(chunk)
        if not n:
            return
        c = self.config
        cols = self._cols
        seqs = np.arange(self._seq, self._seq + n, dtype=np.int64)
        self._seq += n
        lengths = chunk.lengths
        weights = self._weights(chunk.difficulty)
        targets: np.ndarray | None = None
        # A sample longer than max_tokens on its own is never stored (and evicts nothing).
        fits = np.arange(n, dtype=np.int64)
        if c.max_tokens is not None:
            fits = fits[lengths <= c.max_tokens]
        victims = _EMPTY
        if c.eviction == "reservoir":
            keep, targets = self._reservoir_targets(seqs)
            keep_fits = np.isin(keep, fits)
            keep, targets = keep[keep_fits], targets[keep_fits]
            newest = self._fitting_suffix(lengths[keep], c.capacity)  # the block alone fits
            keep, targets = keep[newest], targets[newest]
            victims = targets[cols["live"][targets]] if targets.size else _EMPTY
        elif c.eviction == "priority":
            keep = fits  # new samples compete with stored ones by priority
        else:
            # The newest new samples that fit the bounds on their own.
            keep = fits[self._fitting_suffix(lengths[fits], c.capacity)]
            if c.eviction == "fifo" and keep.size < fits.size:
                victims = self._live_slots()  # older than the new ones left out
        if keep.size:
            new_tokens = int(lengths[keep].sum())
            over_count = self._size - victims.size + keep.size - c.capacity
            over_tokens = (
                self._tokens.live_total
                - int(cols["tok_len"][victims].sum())
                + new_tokens
                - c.max_tokens
                if c.max_tokens is not None
                else 0
            )
            if over_count > 0 or over_tokens > 0:
                if c.eviction == "priority":
                    keep, more = self._priority_victims(
                        keep, lengths, weights, seqs, over_count, over_tokens
                    )
                else:
                    more = self._victims(victims, over_count, over_tokens)
                victims = np.concatenate([victims, more]) if victims.size else more
        self._rejected += n - keep.size
        self._evict(victims)
        if not keep.size:
            return
        slots = targets if targets is not None else self._take_slots(keep.size)
        self._store(chunk.take(keep) if keep.size != n else chunk, slots, seqs[keep])
        self._id_index = None

    def _fitting_suffix(self, lengths: np.ndarray, capacity: int) -> np.ndarray:
        n = lengths.size
        first = max(n - capacity, 0)
        if self.config.max_tokens is not None:
            from_end = np.cumsum(lengths[::-1])
            fits = int(np.searchsorted(from_end, self.config.max_tokens, side="right"))
            first = max(first, n - fits)
        return np.arange(first, n, dtype=np.int64)

    def _reservoir_targets(self, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Algorithm R over a block: sample ``t`` takes slot ``j ~ U[0, t]`` if ``j < capacity``."""
        cap = self.config.capacity
        j = seqs.copy()
        late = seqs >= cap
        if late.any():
            j[late] = (self._evict_rng.random(int(late.sum())) * (seqs[late] + 1)).astype(np.int64)
        kept = np.flatnonzero(j < cap)
        # A later sample sent to the same slot replaces an earlier one of the block.
        rev = kept[::-1]
        _, first = np.unique(j[rev], return_index=True)
        kept = np.sort(rev[first])
        return kept, j[kept]

    def _victims(self, already: np.ndarray, over_count: int, over_tokens: int) -> np.ndarray:
        """Stored samples to evict (FIFO: oldest; random/reservoir: uniform), beyond ``already``."""
        cols = self._cols
        live = self._live_slots()
        if already.size:
            live = np.setdiff1d(live, already, assume_unique=True)
        if not live.size:
            return _EMPTY
        if self.config.eviction == "fifo":
            need = max(over_count, 1)
            while True:
                m = min(need, live.size)
                part = (
                    np.argpartition(cols["seq"][live], m - 1)[:m]
                    if m < live.size
                    else np.arange(live.size)
                )
                cand = live[part[np.argsort(cols["seq"][live[part]], kind="stable")]]
                if self._enough(cand, over_count, over_tokens) or m == live.size:
                    break
                need *= 2
        else:
            m = min(max(over_count, 1), live.size)
            while True:
                cand = (
                    self._evict_rng.permutation(live)[: max(m, 1)]
                    if m < live.size
                    else (self._evict_rng.permutation(live))
                )
                if self._enough(cand, over_count, over_tokens) or m >= live.size:
                    break
                m *= 2
        return cand[: self._count_needed(cand, over_count, over_tokens)]

    def _enough(self, cand: np.ndarray, over_count: int, over_tokens: int) -> bool:
        freed = int(self._cols["tok_len"][cand].sum())
        return cand.size >= over_count and freed >= over_tokens

    def _count_needed(self, cand: np.ndarray, over_count: int, over_tokens: int) -> int:
        k = max(over_count, 0)
        if over_tokens > 0:
            freed = np.cumsum(self._cols["tok_len"][cand].astype(np.int64))
            k = max(k, int(np.searchsorted(freed, over_tokens, side="left")) + 1)
        return min(k, cand.size)

    def _priority_victims(
        self,
        keep: np.ndarray,
        lengths: np.ndarray,
        weights: np.ndarray,
        seqs: np.ndarray,
        over_count: int,
        over_tokens: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lowest weight first among stored and new samples (oldest first among equals)."""
        cols = self._cols
        live = self._live_slots()
        # One candidate list: stored slots (>= 0) and new rows (encoded -1 - row).
        w = np.concatenate([self._tree.leaves[live], weights[keep]])
        s = np.concatenate([cols["seq"][live], seqs[keep]])
        ln = np.concatenate([cols["tok_len"][live].astype(np.int64), lengths[keep]])
        ident = np.concatenate([live, -1 - keep])
        need = max(over_count, 1)
        while True:
            m = min(need, w.size)
            part = np.argpartition(w, m - 1)[:m] if m < w.size else np.arange(w.size)
            part = part[np.lexsort((s[part], w[part]))]
            freed = np.cumsum(ln[part])
            k = max(over_count, 0)
            if over_tokens > 0:
                k = max(k, int(np.searchsorted(freed, over_tokens, side="left")) + 1)
            if k <= m or m == w.size:
                break
            need *= 2
        out = ident[part[: min(k, m)]]
        victims = out[out >= 0]
        dropped_new = -1 - out[out < 0]
        keep = np.setdiff1d(keep, dropped_new, assume_unique=True)
        return keep, victims

    def _take_slots(self, k: int) -> np.ndarray:
        reuse = min(k, len(self._free_slots))
        out = np.empty(k, dtype=np.int64)
        if reuse:
            out[:reuse] = self._free_slots[:reuse]
            del self._free_slots[:reuse]
        fresh = k - reuse
        if fresh:
            out[reuse:] = np.arange(self._n_slots, self._n_slots + fresh)
        return out

    def _evict(self, slots: np.ndarray) -> None:
        if not slots.size:
            return
        cols = self._cols
        self._tokens.release(cols["tok_pos"][slots], cols["tok_len"][slots])
        self._meta.release(cols["meta_pos"][slots], cols["meta_len"][slots])
        cols["live"][slots] = False
        self._tree.set(slots, 0.0)
        self._size -= slots.size
        self._evictions += int(slots.size)
        if self.config.eviction != "reservoir":
            self._free_slots.extend(np.sort(slots).tolist())
        self._id_index = None

    def _store(self, chunk: SampleChunk, slots: np.ndarray, seqs: np.ndarray) -> None:
        cols = self._cols
        top = int(slots.max()) + 1
        self._ensure_slots(top)
        self._n_slots = max(self._n_slots, top)
        if chunk.loss_mask is not None and not self._has_mask:
            self._tokens.add_lane("loss_mask", np.uint8, 1)
            self._has_mask = True
        lengths = chunk.lengths
        lanes: dict[str, np.ndarray | None] = {"tokens": chunk.tokens}
        if self._has_mask:
            lanes["loss_mask"] = chunk.loss_mask
        cols["tok_pos"][slots] = self._tokens.place(lengths, lanes)
        cols["tok_len"][slots] = lengths
        meta_len = np.diff(chunk.meta_offsets)
        cols["meta_pos"][slots] = self._meta.place(meta_len, {"meta": chunk.meta_values})
        cols["meta_len"][slots] = meta_len
        for name in SCALAR_COLUMNS:
            cols[name][slots] = getattr(chunk, name)
        cols["source"][slots] = self._source_map(chunk.source_names)[chunk.source]
        cols["seq"][slots] = seqs
        cols["live"][slots] = True
        self._tree.set(slots, self._weights(chunk.difficulty))
        self._size += slots.size
        self._compact()

    def _compact(self) -> None:
        """Move the live rows of the emptiest pages so garbage stays within ``slack``."""
        cols = self._cols
        for arena, pos_col, len_col in (
            (self._tokens, "tok_pos", "tok_len"),
            (self._meta, "meta_pos", "meta_len"),
        ):
            pages = arena.pages_to_clean(self.config.slack)
            if not pages:
                continue
            live = self._live_slots()
            page_of = cols[pos_col][live] >> arena.shift
            moving = live[np.isin(page_of, pages)]
            moving = moving[np.argsort(cols[pos_col][moving], kind="stable")]
            sizes = cols[len_col][moving].astype(np.int64)
            values = arena.gather(cols[pos_col][moving], sizes)
            arena.release(cols[pos_col][moving], sizes)
            cols[pos_col][moving] = arena.place(sizes, values)

    # ------------------------------------------------------------- reading

    def __len__(self) -> int:
        with self._lock:
            self._flush()
            return self._size

    @property
    def num_tokens(self) -> int:
        with self._lock:
            self._flush()
            return self._tokens.live_total

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(self._source_names)

    def _ordered(self, lo: int | None = None, hi: int | None = None) -> np.ndarray:
        """Live slots in add order, optionally only seqs in ``[lo, hi)``."""
        live = self._live_slots()
        seq = self._cols["seq"][live]
        if lo is not None or hi is not None:
            inside = np.ones(live.size, dtype=bool)
            if lo is not None:
                inside &= seq >= lo
            if hi is not None:
                inside &= seq < hi
            live, seq = live[inside], seq[inside]
        return live[np.argsort(seq, kind="stable")]

    def get(self, slots: Draw | np.ndarray) -> SampleChunk:
        """The samples in ``slots`` (or a draw's), as a :class:`SampleChunk`."""
        with self._lock:
            self._flush()
            if isinstance(slots, Draw):
                slots = slots.slots
            return self._chunk_of(np.asarray(slots, dtype=np.int64))

    def _chunk_of(self, slots: np.ndarray) -> SampleChunk:
        cols = self._cols
        lengths = cols["tok_len"][slots].astype(np.int64)
        lanes = self._tokens.gather(cols["tok_pos"][slots], lengths)
        meta_len = cols["meta_len"][slots].astype(np.int64)
        meta = self._meta.gather(cols["meta_pos"][slots], meta_len)["meta"]
        names = tuple(self._source_names)
        return SampleChunk(
            tokens=lanes["tokens"],
            offsets=offsets_from_sizes(lengths),
            loss_mask=lanes.get("loss_mask"),
            **{name: cols[name][slots].copy() for name in SCALAR_COLUMNS},
            source_names=names,
            meta_values=meta,
            meta_offsets=offsets_from_sizes(meta_len),
        )

    def snapshot(
        self, *, last: int | None = None, seq_range: tuple[int, int] | None = None
    ) -> Snapshot:
        """The stored samples in add order: a LengthTable (ids = sample_id), tokens, masks.

        :param last: only the newest ``last`` stored samples.
        :param seq_range: only samples whose add position is in ``[lo, hi)``.
        """
        with self._lock:
            self._flush()
            slots = self._ordered(*(seq_range or (None, None)))
            if last is not None:
                slots = slots[max(slots.size - last, 0) :]
            cols = self._cols
            lengths = cols["tok_len"][slots].astype(np.int64)
            lanes = self._tokens.gather(cols["tok_pos"][slots], lengths)
            offsets = offsets_from_sizes(lengths)
            seq = cols["seq"][slots]
            table = LengthTable(
                length=lengths,
                ids=cols["sample_id"][slots].copy(),
                meta={
                    "source": KIND,
                    "first_seq": int(seq[0]) if seq.size else None,
                    "last_seq": int(seq[-1]) if seq.size else None,
                },
            )
            mask = lanes.get("loss_mask")
            return Snapshot(
                table,
                Ragged(values=lanes["tokens"], offsets=offsets),
                None if mask is None else Ragged(values=mask, offsets=offsets),
            )

    def columns(self, *names: str) -> dict[str, np.ndarray]:
        """Copies of the named per-sample columns of the stored samples, in add order."""
        with self._lock:
            self._flush()
            slots = self._ordered()
            known = {"seq", "tok_len", *SCALAR_COLUMNS}
            out = {}
            for name in names or tuple(SCALAR_COLUMNS):
                if name not in known:
                    raise ConfigError(f"no column {name!r}; known: {sorted(known)}")
                out[name] = self._cols[name][slots].copy()
            return out

    # ------------------------------------------------------------ sampling

    def _eligible(
        self, slots: np.ndarray, min_difficulty: float | None, success: bool | None
    ) -> np.ndarray:
        cols = self._cols
        ok: np.ndarray = cols["live"][slots].copy()
        if min_difficulty is not None:
            ok &= cols["difficulty"][slots] >= min_difficulty
        if success is not None:
            ok &= cols["success"][slots] == int(success)
        return ok

    def sample(
        self,
        k: int,
        *,
        prioritized: bool = False,
        replace: bool = True,
        min_difficulty: float | None = None,
        success: bool | None = None,
    ) -> Draw:
        """Draw ``k`` samples (slots and ids; :meth:`get` reads their tokens).

        :param prioritized: in proportion to the weights (see :class:`BufferConfig`);
            else uniformly.
        :param replace: ``False`` continues a *pass*: every stored sample exactly
            once, in a seeded order (weighted when prioritized); a pass ends with a
            shorter draw (``end_of_pass``), and the next call starts a new one.
            Samples added during a pass wait for the next; evicted ones are skipped.
        :param min_difficulty: only samples at least this difficult.
        :param success: only samples with this outcome (unknown ones never match).
        """
        if k < 0:
            raise ConfigError(f"must be >= 0, got {k}", path=("k",))
        with self._lock:
            self._flush()
            if not replace:
                return self._sample_pass(k, prioritized, min_difficulty, success)
            if not self._size:
                raise DataError("the replay buffer is empty: nothing to sample")
            filtered = min_difficulty is not None or success is not None
            rng = self._sample_rng
            slots = np.empty(0, dtype=np.int64)
            for _ in range(16):  # rejection: O(log N) per draw while filters pass often
                want = k - slots.size
                if want <= 0:
                    break
                if prioritized:
                    cand = self._tree.draw(rng, want + (want >> 1) if filtered else want)
                else:
                    cand = rng.integers(0, self._n_slots, want + (want >> 1) + 4)
                good = cand[self._eligible(cand, min_difficulty, success)]
                slots = np.concatenate([slots, good[:want]])
            if slots.size < k:  # filters pass rarely: draw from the eligible set exactly
                live = self._live_slots()
                eligible = live[self._eligible(live, min_difficulty, success)]
                if not eligible.size:
                    raise DataError(
                        f"no stored sample passes the filters (min_difficulty={min_difficulty}, "
                        f"success={success})"
                    )
                want = k - slots.size
                if prioritized:
                    w = np.cumsum(self._tree.leaves[eligible])
                    pick = np.searchsorted(w, rng.random(want) * w[-1], side="right")
                    extra = eligible[np.minimum(pick, eligible.size - 1)]
                else:
                    extra = eligible[rng.integers(0, eligible.size, want)]
                slots = np.concatenate([slots, extra])
            return self._draw(slots)

    def _draw(self, slots: np.ndarray, pass_number: int | None = None, end: bool = False) -> Draw:
        cols = self._cols
        return Draw(
            slots=slots,
            seq=cols["seq"][slots].copy(),
            sample_id=cols["sample_id"][slots].copy(),
            weight=self._tree.leaves[slots].copy(),
            pass_number=pass_number,
            end_of_pass=end,
        )

    def _sample_pass(
        self, k: int, prioritized: bool, min_difficulty: float | None, success: bool | None
    ) -> Draw:
        key = [bool(prioritized), min_difficulty, success]
        p = self._pass
        if p is None or p["key"] != key or p["at"] >= p["slots"].size:
            live = self._live_slots()
            live = live[self._eligible(live, min_difficulty, success)]
            rng = rng_for(self.config.seed, self._passes, "replay_buffer.pass")
            if prioritized:  # Efraimidis-Spirakis: an exponential race weighted by priority
                w = self._tree.leaves[live]
                order = np.argsort(rng.exponential(size=live.size) / w, kind="stable")
            else:
                order = rng.permutation(live.size)
            slots = live[order]
            p = self._pass = {
                "key": key,
                "slots": slots,
                "seq": self._cols["seq"][slots].copy(),
                "at": 0,
                "number": self._passes,
            }
            self._passes += 1
        cols = self._cols
        out: list[np.ndarray] = []
        got = 0
        while got < k and p["at"] < p["slots"].size:
            lo = p["at"]
            hi = min(lo + (k - got), p["slots"].size)
            cand = p["slots"][lo:hi]
            valid = cols["live"][cand] & (cols["seq"][cand] == p["seq"][lo:hi])
            good = cand[valid]
            out.append(good)
            got += good.size
            p["at"] = hi
        slots = np.concatenate(out) if out else _EMPTY
        return self._draw(slots, p["number"], p["at"] >= p["slots"].size)

    def update_priorities(self, which: Draw | Any, priorities: Any) -> int:
        """Set the priority of drawn samples (a :class:`Draw`) or of sample ids.

        The weight becomes ``(priority + epsilon) ** alpha``. Samples evicted
        since (or ids not stored) are skipped; :returns: how many were updated.
        """
        p = np.asarray(priorities, dtype=np.float64).reshape(-1)
        with self._lock:
            self._flush()
            cols = self._cols
            if isinstance(which, Draw):
                slots, seq = which.slots, which.seq
                if p.size == 1 and slots.size != 1:
                    p = np.full(slots.size, p[0])
                if p.size != slots.size:
                    raise ConfigError(f"{p.size} priorities for {slots.size} samples")
                ok = cols["live"][slots] & (cols["seq"][slots] == seq)
            else:
                ids = np.asarray(which, dtype=np.int64).reshape(-1)
                if p.size == 1 and ids.size != 1:
                    p = np.full(ids.size, p[0])
                if p.size != ids.size:
                    raise ConfigError(f"{p.size} priorities for {ids.size} sample ids")
                if self._id_index is None:
                    live = self._live_slots()
                    order = np.argsort(cols["sample_id"][live], kind="stable")
                    self._id_index = (cols["sample_id"][live][order], live[order])
                sorted_ids, sorted_slots = self._id_index
                at = np.minimum(np.searchsorted(sorted_ids, ids), max(sorted_ids.size - 1, 0))
                ok = (sorted_ids[at] == ids) if sorted_ids.size else np.zeros(ids.size, bool)
                slots = sorted_slots[at] if sorted_ids.size else _EMPTY
            if not np.isfinite(p).all() or (p < 0).any():
                raise ConfigError("priorities must be finite and >= 0", path=("priorities",))
            self._tree.set(slots[ok], self._weights(p[ok]))
            return int(ok.sum())

    # --------------------------------------------------------------- stats

    @property
    def nbytes(self) -> int:
        """Bytes of every array the buffer holds (arena pages, columns, sum tree)."""
        with self._lock:
            return (
                self._tokens.nbytes
                + self._meta.nbytes
                + sum(int(a.nbytes) for a in self._cols.values())
                + self._tree.nbytes
            )

    def stats(self) -> dict[str, Any]:
        """Size, tokens, mean difficulty, success rate, evictions, adds, memory."""
        with self._lock:
            self._flush()
            live = self._live_slots()
            cols = self._cols
            success = cols["success"][live]
            known = success >= 0
            return {
                "size": self._size,
                "tokens": self._tokens.live_total,
                "capacity": self.config.capacity,
                "max_tokens": self.config.max_tokens,
                "adds": self._seq,
                "evictions": self._evictions,
                "rejected": self._rejected,
                "mean_difficulty": float(cols["difficulty"][live].mean()) if live.size else None,
                "success_rate": float(success[known].mean()) if known.any() else None,
                "mean_reward": float(cols["reward"][live].mean()) if live.size else None,
                "sources": list(self._source_names),
                "nbytes": self.nbytes,
                "token_bytes": self._tokens.live_total * TOKEN_DTYPE.itemsize,
            }

    def __repr__(self) -> str:
        return (
            f"<ReplayBuffer {self._size:,}/{self.config.capacity:,} samples, "
            f"{self._tokens.live_total:,} tokens, eviction={self.config.eviction}>"
        )

    # --------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the buffer: config, counters, RNGs, columns.

        Arrays are numpy; the rest is JSON-able. Restoring puts every sample
        back in its slot, so draws and evictions continue as they would have.
        """
        with self._lock:
            self._flush()
            slots = self._ordered()
            chunk = self._chunk_of(slots)
            arrays: dict[str, np.ndarray] = {
                "slot": slots.copy(),
                "seq": self._cols["seq"][slots].copy(),
                "weight": self._tree.leaves[slots].copy(),
                "lengths": chunk.lengths,
                "tokens": chunk.tokens,
                "meta_lengths": np.diff(chunk.meta_offsets),
                "meta_values": chunk.meta_values,
                "free_slots": np.asarray(self._free_slots, dtype=np.int64),
                **{name: getattr(chunk, name) for name in SCALAR_COLUMNS},
            }
            if self._has_mask and chunk.loss_mask is not None:
                arrays["loss_mask"] = chunk.loss_mask
            pass_state = None
            if self._pass is not None:
                arrays["pass_slots"] = self._pass["slots"].copy()
                arrays["pass_seq"] = self._pass["seq"].copy()
                pass_state = {k: self._pass[k] for k in ("key", "at", "number")}
            return {
                "kind": KIND,
                "format_version": FORMAT_VERSION,
                "config": attrs.asdict(self.config),
                "counters": {
                    "seq": self._seq,
                    "evictions": self._evictions,
                    "rejected": self._rejected,
                    "passes": self._passes,
                    "n_slots": self._n_slots,
                },
                "sources": list(self._source_names),
                "rng": {
                    "evict": _rng_state(self._evict_rng),
                    "sample": _rng_state(self._sample_rng),
                },
                "pass": pass_state,
                "arrays": arrays,
            }

    def load_state_dict(self, state: Mapping[str, Any], *, where: str | None = None) -> None:
        """Restore what :meth:`state_dict` returned (the config must match)."""
        check_state(state, kind=KIND, where=where)
        try:
            config = BufferConfig(**state["config"])
            arrays = state["arrays"]
            counters = state["counters"]
            if config != self.config:
                raise DataError(
                    f"the state is of a buffer configured {attrs.asdict(config)}, this one "
                    f"{attrs.asdict(self.config)}",
                    file=where,
                )
            with self._lock:
                self._reset()
                n = int(arrays["slot"].size)
                sources = [str(s) for s in state["sources"]]
                chunk = SampleChunk(
                    tokens=np.asarray(arrays["tokens"], dtype=TOKEN_DTYPE),
                    offsets=offsets_from_sizes(arrays["lengths"]),
                    loss_mask=arrays.get("loss_mask"),
                    **{
                        name: np.asarray(arrays[name], dtype=dt)
                        for name, dt in SCALAR_COLUMNS.items()
                    },
                    source_names=tuple(sources),
                    meta_values=np.asarray(arrays["meta_values"], dtype=np.uint8),
                    meta_offsets=offsets_from_sizes(arrays["meta_lengths"]),
                )
                slots = np.asarray(arrays["slot"], dtype=np.int64)
                if n and (slots.min() < 0 or np.unique(slots).size != n):
                    raise DataError("slots are negative or repeated", file=where)
                self._n_slots = int(counters["n_slots"])
                self._ensure_slots(max(self._n_slots, 1))
                if n:
                    self._store(chunk, slots, np.asarray(arrays["seq"], dtype=np.int64))
                    self._tree.set(slots, np.asarray(arrays["weight"], dtype=np.float64))
                self._source_names = sources
                self._source_codes = {s: i for i, s in enumerate(sources)}
                self._free_slots = [int(s) for s in arrays["free_slots"]]
                self._seq = int(counters["seq"])
                self._evictions = int(counters["evictions"])
                self._rejected = int(counters["rejected"])
                self._passes = int(counters["passes"])
                self._evict_rng = _rng_from(state["rng"]["evict"])
                self._sample_rng = _rng_from(state["rng"]["sample"])
                if state.get("pass") is not None:
                    self._pass = {
                        **state["pass"],
                        "slots": np.asarray(arrays["pass_slots"], dtype=np.int64),
                        "seq": np.asarray(arrays["pass_seq"], dtype=np.int64),
                    }
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"malformed replay buffer state ({exc!r})", file=where) from None

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the buffer to ``directory`` (replaced atomically): zstd arrays + meta.json.

        ``directory`` must be new, empty, or a saved replay buffer.
        """
        state = self.state_dict()
        arrays = state.pop("arrays")
        # Only a new or empty directory, or a saved buffer, is replaced (checked again
        # just before the swap).
        with atomic_directory(directory, kind=KIND, force=True) as tmp:
            state["arrays"] = {name: write_array(tmp, name, a) for name, a in arrays.items()}
            write_json(tmp / "meta.json", plain_json(state))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, tokenizer: Any = None) -> ReplayBuffer:
        """Read a saved buffer; a missing, damaged or altered file is a DataError naming it."""
        root = Path(directory)
        meta_path = root / "meta.json"
        meta = read_json(meta_path)
        check_format(meta, kind=KIND, version=FORMAT_VERSION, file=meta_path)
        try:
            config = BufferConfig(**meta["config"])
            infos = meta["arrays"]
            if not isinstance(infos, dict):
                raise TypeError("arrays is not a mapping")
        except (KeyError, TypeError, ConfigError) as exc:
            raise DataError(f"malformed metadata ({exc})", file=str(meta_path)) from None
        arrays = {name: read_array(root, info) for name, info in infos.items()}
        buffer = cls(config=config, tokenizer=tokenizer)
        buffer.load_state_dict({**meta, "arrays": arrays}, where=str(meta_path))
        return buffer

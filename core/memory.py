"""Memory-aware batches: collated bytes per batch, a byte cap per plan, a loader monitor.

- :class:`BatchBytes`: how a batch's collated bytes grow with its shape, for
  the collation actually used: padded or packed token rows (measured from a
  backend's own ``host`` collation), fixed-size windows, or staged samples.
- :func:`collated_bytes`: the bytes of every batch of an epoch plan, in a few
  numpy passes over the whole plan (no loop per batch).
- :class:`MemoryBudget`: the run config's ``[memory_budget]``: ``bytes``, or
  ``percent`` of the memory available when the plan is built (read once with
  psutil, extra ``memory``). :func:`resolve_budget` turns it into plain data
  recorded in the plan's config (so the fingerprint covers it and a rebuild
  gives the same plan), and :func:`cap_epoch` splits every batch over the cap
  into near-equal parts under it, counted in the epoch's report.
- :class:`MemoryMonitor`: for :class:`laden.torch.PlanLoader`: when the
  process's resident memory is over a limit, a batch is handed out as
  micro-batches (see the loader for how that is resumed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np

from laden.errors import ConfigError, DataError, MissingDependencyError
from laden.records import EpochPlan, LengthTable, Ragged, csr_take, offsets_from_sizes
from laden.validators import one_of, optional

__all__ = [
    "BatchBytes",
    "MemoryBudget",
    "MemoryMonitor",
    "available_memory",
    "cap_epoch",
    "collated_bytes",
    "model_for",
    "process_rss",
    "resolve_budget",
]

LAYOUTS = ("padded", "staged")


# --------------------------------------------------------------- byte model


@attrs.frozen(kw_only=True)
class BatchBytes:
    """Collated bytes of a batch of ``rows`` rows of ``width`` positions and ``segments`` segments.

    ``rows * (width * token_bytes + width**2 * square_bytes + row_bytes)
    + segments * segment_bytes + batch_bytes``. The width is the batch's
    ``max_length`` (rounded up to ``pad_to_multiple_of``) for ``padded``
    layouts (one sample or one pack per row); for ``staged`` samples, where
    each stage is padded to its own in-batch maximum, it is bounded by
    ``min(stages * longest sample, steps of the batch)`` (exact for one sample).
    """

    layout: str = attrs.field(default="padded", validator=one_of(*LAYOUTS))
    token_bytes: int = 0
    square_bytes: int = 0
    row_bytes: int = 0
    segment_bytes: int = 0
    batch_bytes: int = 0
    pad_to_multiple_of: int | None = None

    @classmethod
    def for_backend(cls, backend: Any = None) -> BatchBytes:
        """The bytes of ``backend.host`` collation (token rows), measured on tiny batches.

        Five collations of one- and two-row batches give the coefficients
        exactly (the columns are linear in rows and segments, quadratic in the
        width only with a dense mask). Packed rows may leave a column out, so
        the padded coefficients bound them from above. Without a backend, the
        ``numpy`` backend with int64 token columns: an upper bound of every
        ``laden``-profile backend.
        """
        from laden.collate import BatchLayout

        if backend is None:
            from laden.plugins.backends.numpy import NumpyBackend

            backend = NumpyBackend(int_dtype="int64")
        if not callable(getattr(backend, "host", None)):
            return cls.for_backend(None)
        m = int(getattr(backend, "pad_to_multiple_of", None) or 1)
        a = 2 * m
        tokens = Ragged.from_sequences([np.ones(4 * a, dtype=np.int64)] * 3)
        lengths = np.full(3, 4 * a, dtype=np.int64)

        def padded(rows: int, width: int) -> int:
            layout = BatchLayout.padded(np.arange(rows), lengths, width)
            return _nbytes(backend.host(layout, tokens))

        def packed(segments: int, width: int) -> int:
            cuts = np.linspace(0, width, segments + 1).astype(np.int64)
            layout = BatchLayout(
                sample=np.arange(segments),
                start=np.zeros(segments, dtype=np.int64),
                length=np.diff(cuts),
                row=np.zeros(segments, dtype=np.int64),
                num_rows=1,
                row_length=width,
            )
            return _nbytes(backend.host(layout, tokens))

        p1, p2, p3, two = padded(1, a), padded(1, 2 * a), padded(1, 3 * a), padded(2, a)
        # Packed rows may carry other columns (a 4D mask of the hf profile): the larger counts.
        q1, q2, q3 = packed(2, a), packed(2, 2 * a), packed(2, 3 * a)
        p_square, q_square = (p3 - 2 * p2 + p1) // (2 * a * a), (q3 - 2 * q2 + q1) // (2 * a * a)
        square = max(p_square, q_square)
        token = max((p2 - p1) // a - 3 * a * p_square, (q2 - q1) // a - 3 * a * q_square)
        per_row = two - p1  # width a: token, square, row and one segment's bytes
        segment = max(packed(3, 3 * a) - packed(2, 3 * a), 0)
        row = max(per_row - a * token - a * a * square - segment, 0)  # < 0: packed-only columns
        return cls(
            token_bytes=int(token),
            square_bytes=int(square),
            row_bytes=int(row),
            segment_bytes=int(segment),
            batch_bytes=int(p1 - per_row),
            pad_to_multiple_of=m if m > 1 else None,
        )

    @classmethod
    def for_windows(cls, windows: Mapping[str, Any], dtype: str = "float32") -> BatchBytes:
        """Time-series windows (``timeseries``): ``inputs [window, F]``, ``targets [horizon, T]``,
        and the int64 ``series``, ``start`` and ``sample_ids`` of each window.

        :param windows: the length table's ``meta["windows"]``.
        """
        size = np.dtype(dtype).itemsize
        features, targets = len(windows["features"]), len(windows.get("targets") or ())
        per = int(windows["window"]) * features + int(windows.get("horizon") or 0) * targets
        return cls(row_bytes=per * size + 3 * 8)

    @classmethod
    def for_staged(cls, step_bytes: int) -> BatchBytes:
        """Staged samples (``collate_staged``): ``step_bytes`` of fields per step, a mask
        byte per step and an int64 sample id per sample."""
        return cls(layout="staged", token_bytes=int(step_bytes) + 1, row_bytes=8)

    def bytes_of(self, rows: Any, width: Any, segments: Any = None) -> np.ndarray:
        """Bytes of batches of these rows, widths and segments (one per row by default)."""
        rows = np.asarray(rows, dtype=np.int64)
        width = np.asarray(width, dtype=np.int64)
        if self.layout == "padded" and self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = -(-width // m) * m
        segments = rows if segments is None else np.asarray(segments, dtype=np.int64)
        per_row = width * self.token_bytes + width * width * self.square_bytes + self.row_bytes
        out: np.ndarray = rows * per_row + segments * self.segment_bytes + self.batch_bytes
        return np.where(rows > 0, out, 0).astype(np.int64)


def _nbytes(arrays: Mapping[str, Any]) -> int:
    return sum(int(v.nbytes) for v in arrays.values() if isinstance(v, np.ndarray))


def _reduce(ufunc: Any, values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``ufunc.reduceat`` over CSR rows (of a 1-D or 2-D array), 0 for empty rows."""
    sizes = np.diff(offsets)
    shape = (sizes.size, *values.shape[1:])
    if not values.shape[0]:
        return np.zeros(shape, dtype=np.int64)
    starts = np.minimum(offsets[:-1], values.shape[0] - 1)
    empty = (sizes > 0).reshape(-1, *([1] * (values.ndim - 1)))
    out: np.ndarray = np.where(empty, ufunc.reduceat(values, starts, axis=0), 0).astype(np.int64)
    return out


def _staged_width(
    steps: np.ndarray, offsets: np.ndarray, key: np.ndarray | None, stages: np.ndarray | None
) -> np.ndarray:
    """Steps of a staged batch after padding each stage to its in-batch longest, per batch.

    Exact from the rows' ``stages`` (``[rows, S]``); from their ``key`` (depth) it is
    bounded by ``min((depth + 1) * longest, all steps)``; without either, all steps.
    """
    if stages is not None:
        exact: np.ndarray = _reduce(np.maximum, stages, offsets).sum(axis=1)
        return exact
    total = _reduce(np.add, steps, offsets)
    if key is None:
        return total
    depth = _reduce(np.maximum, key, offsets) + 1
    bound: np.ndarray = np.minimum(depth * _reduce(np.maximum, steps, offsets), total)
    return bound


def _widths(
    plan: EpochPlan,
    model: BatchBytes,
    lengths: np.ndarray,
    key: np.ndarray | None,
    stages: np.ndarray | None,
) -> np.ndarray:
    if model.layout == "padded":
        return plan.max_length
    order = plan.order
    return _staged_width(
        lengths[order],
        plan.offsets,
        None if key is None else key[order],
        None if stages is None else stages[order],
    )


def collated_bytes(
    plan: EpochPlan,
    lengths: np.ndarray,
    model: BatchBytes,
    *,
    key: np.ndarray | None = None,
    stage_length: np.ndarray | None = None,
    segments: np.ndarray | None = None,
) -> np.ndarray:
    """Collated bytes of every batch of ``plan`` (int64, one per batch).

    :param lengths: the length of every unit (samples, or packs).
    :param key: the units' depth (stages - 1), for staged samples: a bound.
    :param stage_length: the units' steps per stage (``[n, stages]``), for staged
        samples: exact.
    :param segments: segments per unit (a pack's samples), when units are packs.
    """
    sizes = plan.batch_sizes
    segs = None if segments is None else _reduce(np.add, segments[plan.order], plan.offsets)
    return model.bytes_of(sizes, _widths(plan, model, lengths, key, stage_length), segs)


# ------------------------------------------------------------- the budget


def _percent(_inst: Any, attribute: Any, value: float | None) -> None:
    if value is not None and not 0 < value <= 100:
        raise ConfigError(f"must be in (0, 100], got {value!r}", path=(attribute.name,))


def _positive_int(_inst: Any, attribute: Any, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"must be > 0, got {value!r}", path=(attribute.name,))


@attrs.frozen(kw_only=True)
class MemoryBudget:
    """The ``[memory_budget]`` of a run config: a cap on each batch's collated bytes.

    :param bytes: the cap in bytes; or
    :param percent: the cap as a share of the memory available when the plan is
        built (psutil's ``available``, read once and recorded in the plan).
    :param layout: how collated bytes are counted: ``auto`` (windows when the
        length table holds time-series windows, else token rows as the run
        config's ``[backend]`` collates them; a table of staged samples must say
        ``staged``), ``tokens``, ``windows`` or ``staged`` (needs ``step_bytes``;
        exact with the table's ``stage_length``, else bounded by depth).
    :param step_bytes: staged samples: bytes of all fields of one step.
    :param oversize: a sample that alone is over the cap: ``error`` (default,
        naming it) or ``alone`` (a batch of its own, counted).
    """

    bytes: int | None = attrs.field(default=None, validator=_positive_int)
    percent: float | None = attrs.field(default=None, validator=_percent)
    layout: str = attrs.field(
        default="auto", validator=one_of("auto", "tokens", "windows", "staged")
    )
    step_bytes: int | None = attrs.field(default=None, validator=optional(_positive_int))
    oversize: str = attrs.field(default="error", validator=one_of("error", "alone"))

    def __attrs_post_init__(self) -> None:
        if (self.bytes is None) == (self.percent is None):
            raise ConfigError("give exactly one of 'bytes' and 'percent'", path=())
        if self.layout == "staged" and self.step_bytes is None:
            raise ConfigError("layout 'staged' needs step_bytes", path=("step_bytes",))
        if self.step_bytes is not None and self.layout != "staged":
            raise ConfigError(
                f"applies only with layout 'staged' (layout is {self.layout!r})",
                path=("step_bytes",),
            )

    @classmethod
    def from_mapping(cls, data: Any, *, path: tuple[str | int, ...] = ("memory_budget",)) -> Any:
        """Structure user config (strict: unknown keys and wrong types are errors)."""
        from laden.serde import make_converter, structure_config

        return structure_config(make_converter(), data, cls, path)


def _psutil() -> Any:
    try:
        import psutil
    except ImportError as exc:
        raise MissingDependencyError("memory", "psutil", ["psutil"], "memory") from exc
    return psutil


def available_memory() -> int:
    """Bytes of memory available to new work now (psutil's ``available``)."""
    return int(_psutil().virtual_memory().available)


def total_memory() -> int:
    """Bytes of physical memory (psutil's ``total``)."""
    return int(_psutil().virtual_memory().total)


def process_rss() -> int:
    """This process's resident memory in bytes (psutil; ``/proc/self/statm`` without it)."""
    try:
        import psutil
    except ImportError:
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return int(_psutil().Process().memory_info().rss)  # raises, naming the extra
    return int(psutil.Process().memory_info().rss)


def model_for(
    budget: MemoryBudget, table: LengthTable, backend: Any = None, *, dtype: str | None = None
) -> BatchBytes:
    """The byte model ``budget.layout`` means for ``table`` (and ``backend``'s collation)."""
    windows = table.meta.get("windows")
    layout = budget.layout
    if layout == "auto":
        if getattr(table, "stage_length", None) is not None:
            raise ConfigError(
                "the length table holds staged samples: set layout = 'staged' and step_bytes "
                "(bytes of all fields of one step)",
                path=("memory_budget", "layout"),
            )
        layout = "windows" if windows else "tokens"
    if layout == "staged":
        assert budget.step_bytes is not None
        return BatchBytes.for_staged(budget.step_bytes)
    if layout == "windows":
        if not windows:
            raise ConfigError(
                "layout 'windows' needs a length table of time-series windows "
                "(laden lengths build --source timeseries)",
                path=("memory_budget", "layout"),
            )
        source = table.meta.get("source") or {}
        return BatchBytes.for_windows(windows, dtype or source.get("dtype") or "float32")
    return BatchBytes.for_backend(backend)


def resolve_budget(
    budget: MemoryBudget,
    table: LengthTable,
    backend: Any = None,
    *,
    available: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """The budget as plain data a plan records: the cap in bytes, how it was reached, the model.

    ``percent`` reads the available memory once, here; the plan keeps the
    result, so rebuilding or verifying it never reads memory again.
    """
    free = None
    cap = budget.bytes
    if budget.percent is not None:
        free = int((available or available_memory)())
        cap = max(int(free * budget.percent / 100), 1)
    assert cap is not None
    model = model_for(budget, table, backend)
    return {
        "bytes": int(cap),
        "percent": budget.percent,
        "available": free,
        "oversize": budget.oversize,
        "model": attrs.asdict(model),
    }


def cap_epoch(
    plan: EpochPlan,
    recorded: Mapping[str, Any],
    lengths: np.ndarray,
    *,
    key: np.ndarray | None = None,
    stage_length: np.ndarray | None = None,
    segments: np.ndarray | None = None,
    members: Callable[[int], str] | None = None,
) -> EpochPlan:
    """Split every batch whose collated bytes exceed the cap into near-equal parts under it.

    A batch over the cap becomes ``k`` consecutive runs of its units (in their
    order), of sizes that differ by at most one, ``k`` the fewest for which
    that many rows as costly as its widest fit the cap; each part gets its own
    (never larger) ``max_length`` and the batch's bucket. A unit over the cap
    alone follows ``oversize``: ``error`` names it; ``alone`` moves it to the
    end of its batch, in a part of its own. Counted in ``report["memory"]``;
    one loop-free pass over the whole epoch.

    :param recorded: :func:`resolve_budget`'s result.
    :param members: names a unit in an error (default ``unit i``).
    """
    cap = int(recorded["bytes"])
    model = BatchBytes(**recorded["model"])
    before = collated_bytes(
        plan, lengths, model, key=key, stage_length=stage_length, segments=segments
    )
    needs = before > cap
    if not needs.any():
        return attrs.evolve(plan, report={**plan.report, "memory": _memory_report(cap, 0, 0, 0)})
    # Only batches over the cap are touched (a unit over it alone makes its batch so too).
    sub = np.flatnonzero(needs)
    nb = sub.size
    where, sub_offsets = csr_take(plan.offsets, sub)
    order = plan.order[where]
    own = lengths[order]
    seg = np.ones(order.size, dtype=np.int64) if segments is None else segments[order]
    sub_sizes = np.diff(sub_offsets)
    if model.layout == "padded":
        width_alone = np.minimum(own, np.repeat(plan.max_length[sub], sub_sizes))
    else:
        width_alone = own
    maybe = True  # whether any unit may be over the cap alone: the batch's widest row says
    if model.layout == "padded":
        top = 1 if segments is None else _reduce(np.maximum, seg, sub_offsets)
        maybe = bool((model.bytes_of(1, plan.max_length[sub], top) > cap).any())
    over = model.bytes_of(1, width_alone, seg) > cap if maybe else np.zeros(own.size, dtype=bool)
    if over.any() and recorded.get("oversize", "error") != "alone":
        first = int(np.flatnonzero(over)[0])
        unit = int(order[first])
        what = members(unit) if members is not None else f"unit {unit}"
        alone = int(model.bytes_of(1, width_alone[first : first + 1], seg[first : first + 1])[0])
        raise DataError(
            f"{what} alone collates to {alone:,} bytes, over the memory budget of "
            f"{cap:,} bytes ({int(over.sum()):,} unit(s) are); raise memory_budget or set "
            "memory_budget.oversize = 'alone'"
        )
    lone = _reduce(np.add, over.astype(np.int64), sub_offsets)
    if lone.any():  # units over the cap alone to the end of their batch (stable), each alone
        batch_of = np.repeat(np.arange(nb, dtype=np.int64), sub_sizes)
        move = np.argsort(batch_of * 2 + over, kind="stable")
        order, own, seg, over = order[move], own[move], seg[move], over[move]
        width_alone = width_alone[move]
    rest = sub_sizes - lone
    # Every part's rows cost at most the widest row of what stays together, and its segments.
    keep = ~over
    if model.layout == "staged":
        whole = _staged_width(
            np.where(keep, own, 0),
            sub_offsets,
            None if key is None else np.where(keep, key[order], 0),
            None if stage_length is None else np.where(keep[:, None], stage_length[order], 0),
        )
    else:
        whole = _reduce(np.maximum, np.where(keep, width_alone, 0), sub_offsets)
    row_cost = model.bytes_of(1, whole, 0) - model.batch_bytes
    seg_cost = _reduce(np.maximum, np.where(keep, seg, 0), sub_offsets) * model.segment_bytes
    rows_max = np.maximum((cap - model.batch_bytes) // np.maximum(row_cost + seg_cost, 1), 1)
    parts = -(-rest // rows_max)  # 0 when only lone units remain
    # Part sizes: ``parts`` near-equal runs of the rest, then the lone units, batch by batch.
    idx = np.arange(int(parts.sum()), dtype=np.int64) - np.repeat(
        offsets_from_sizes(parts)[:-1], parts
    )
    safe = np.maximum(parts, 1)
    run_sizes = np.repeat(rest // safe, parts) + (idx < np.repeat(rest % safe, parts))
    new_sizes = np.concatenate([run_sizes, np.ones(int(lone.sum()), dtype=np.int64)])
    owner = np.concatenate([np.repeat(np.arange(nb), parts), np.repeat(np.arange(nb), lone)])
    rank = np.concatenate([np.zeros(run_sizes.size), np.ones(int(lone.sum()))])
    arrange = np.lexsort((rank, owner))  # by batch; runs first, lone units after
    new_sizes, owner = new_sizes[arrange], owner[arrange]
    longest = _reduce(np.maximum, own, offsets_from_sizes(new_sizes))
    new_max = np.where(new_sizes > 0, np.minimum(plan.max_length[sub][owner], longest), 0)
    # Splice: untouched batches keep their one entry, split ones get their parts'.
    per_batch = np.bincount(owner, minlength=nb)
    count = np.ones(plan.batch_sizes.size, dtype=np.int64)
    count[sub] = per_batch
    sizes = np.repeat(plan.batch_sizes, count)
    max_length = np.repeat(plan.max_length, count)
    bucket = np.repeat(plan.bucket, count)
    at = offsets_from_sizes(count)[sub]  # where each split batch's parts begin
    slots = at[owner] + np.arange(owner.size) - offsets_from_sizes(per_batch)[owner]
    sizes[slots], max_length[slots] = new_sizes, new_max
    full_order = plan.order.copy()
    full_order[where] = order
    out = attrs.evolve(
        plan,
        order=full_order,
        offsets=offsets_from_sizes(sizes),
        max_length=max_length,
        bucket=bucket,
    )
    report = _memory_report(cap, nb, len(out) - len(plan), int(lone.sum()))
    return attrs.evolve(out, report={**plan.report, "memory": report})


def _memory_report(cap: int, split: int, extra: int, oversize: int) -> dict[str, int]:
    return {"cap": cap, "split_batches": split, "extra_batches": extra, "oversize_units": oversize}


# ------------------------------------------------------------- the monitor


def _limit_bytes(limit: Any) -> int:
    """``memory_limit`` of a loader as bytes: an int, ``"25%"`` of physical memory,
    or ``{"bytes": n}`` / ``{"percent": p}``."""
    if isinstance(limit, Mapping):
        if set(limit) == {"bytes"}:
            limit = limit["bytes"]
        elif set(limit) == {"percent"}:
            limit = f"{limit['percent']}%"
        else:
            raise ConfigError(
                f"give one of 'bytes' and 'percent', got {sorted(limit)}", path=("memory_limit",)
            )
    if isinstance(limit, str) and limit.endswith("%"):
        try:
            percent = float(limit[:-1])
        except ValueError:
            percent = float("nan")
        if not 0 < percent <= 100:
            raise ConfigError(
                f"must be in (0, 100], got {limit!r}", path=("memory_limit", "percent")
            )
        return max(int(total_memory() * percent / 100), 1)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigError(
            f"must be a positive number of bytes or a percent like '25%', got {limit!r}",
            path=("memory_limit",),
        )
    return limit


@attrs.define(kw_only=True)
class MemoryMonitor:
    """Splits a batch into ``parts`` micro-batches while resident memory is over ``limit``.

    :param limit: bytes, or ``"25%"`` of physical memory (resolved once, here).
    :param parts: micro-batches per split batch (fewer when the batch is smaller).
    :param probe: the resident memory now, in bytes (default :func:`process_rss`).
    """

    limit: int = attrs.field(converter=_limit_bytes)
    parts: int = attrs.field(default=2)
    probe: Callable[[], int] = attrs.field(default=process_rss)

    @parts.validator
    def _check_parts(self, attribute: Any, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ConfigError(f"must be >= 2, got {value!r}", path=("memory_parts",))

    def split(self, size: int) -> int:
        """Micro-batches for a batch of ``size`` units now: 1 unless memory is over the limit."""
        if size < 2 or self.probe() <= self.limit:
            return 1
        return min(self.parts, size)


def micro_bounds(size: int, parts: int) -> list[int]:
    """Where ``parts`` near-equal consecutive runs of ``size`` units start and end."""
    base, extra = divmod(size, parts)
    bounds: list[int] = offsets_from_sizes([base + (i < extra) for i in range(parts)]).tolist()
    return bounds

"""Hugging Face datasets in and out, and a ``transformers.Trainer`` that trains on a laden plan.

- :func:`arrow_lengths`: the length of every row of a list column, read from
  its Arrow offsets (no Python loop per row).
- :func:`pack_dataset`: a drop-in for TRL's ``pack_dataset``: a
  ``datasets.Dataset`` of packed rows with ``position_ids`` and
  ``seq_lengths``, where no token is lost (an over-long sample is split, and
  counted), packed by laden's exact best-fit decreasing and materialised by
  Arrow's flatten of a list view (one copy per segment).
- :func:`pack_table`: the same on a ``pyarrow.Table``, with its report.
- ``LadenTrainer``: a ``transformers.Trainer`` whose train loader is a laden
  plan (this rank's shard, by ``args.process_index`` of ``args.world_size``)
  collated by the ``hf`` profile of the torch backend.

Importing this module needs neither ``datasets`` nor ``transformers``
(``pyarrow`` is imported when a function needs it).
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from laden.digest import canonical_json, digest
from laden.errors import DataError, MissingDependencyError
from laden.records import LengthTable, offsets_from_sizes

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "STRATEGIES",
    "ArrowSamples",
    "arrow_lengths",
    "pack_dataset",
    "pack_table",
]

#: ``bfd``: best-fit decreasing; ``bfd_split`` is the same (TRL's name for the
#: lossless variant; laden's ``bfd`` is lossless too); ``wrapped``: the token
#: stream cut every ``max_length`` tokens, segments restarting at each sample.
STRATEGIES = ("bfd", "bfd_split", "wrapped")

#: Tokens per Arrow chunk of the output (list offsets are int32).
ARROW_CHUNK_TOKENS = 1 << 30
#: A packed table of more tokens than this is built in one chunk per thread.
PARALLEL_CHUNK_TOKENS = 1 << 22
#: Input tokens up to which segments are addressed by int32 list views (beyond: int64).
INT32_VIEW_TOKENS = 2**31 - 1
#: ``position_ids`` are summed up this many tokens at a time, in a buffer that stays in cache.
POSITION_BLOCK_TOKENS = 1 << 18


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.compute  # a submodule, used as pyarrow.compute
    except ImportError as exc:
        raise MissingDependencyError("function", "laden.hf", ["pyarrow"], "datasets") from exc
    return pyarrow


def _is_list(pa: Any, dtype: Any) -> bool:
    return bool(pa.types.is_list(dtype) or pa.types.is_large_list(dtype))


def _list_chunks(column: Any, name: str) -> list[Any]:
    """The chunks of a list column, refusing nulls with the row that holds one."""
    pa = _pyarrow()
    if not _is_list(pa, column.type):
        raise ValueError(
            f"column {name!r} is {column.type}, not a list column; pack only list columns "
            f"(name them with columns=(...))"
        )
    chunks = list(column.chunks) if hasattr(column, "chunks") else [column]
    base = 0
    for chunk in chunks:
        if chunk.null_count:
            row = base + int(np.flatnonzero(~chunk.is_valid().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"column {name!r}: row {row} is null")
        base += len(chunk)
    return chunks


def _chunk_offsets(chunk: Any) -> np.ndarray:
    """A list chunk's offsets (respecting a slice), from 0, as int64."""
    offsets: np.ndarray = chunk.offsets.to_numpy().astype(np.int64, copy=False)
    return offsets - offsets[0] if offsets.size and offsets[0] else offsets


def arrow_lengths(column: Any, *, name: str = "input_ids") -> np.ndarray:
    """Tokens per row of a list column (``pyarrow`` Array or ChunkedArray), from its offsets.

    One ``np.diff`` per chunk: 1M rows in milliseconds. A null row is a
    DataError naming it.
    """
    chunks = _list_chunks(column, name)
    if not chunks:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.diff(_chunk_offsets(c)) for c in chunks])


def _flat(column: Any, name: str) -> tuple[np.ndarray, Any]:
    """``(lengths, values)`` of a list column: the values as one Arrow array.

    Zero-copy for one chunk (the usual in-memory table); the chunks of a table
    read from files are concatenated once (one copy of the values).
    """
    pa = _pyarrow()
    chunks = _list_chunks(column, name)
    parts = [chunk.flatten() for chunk in chunks]  # flatten, not .values: respects a slice
    if any(part.null_count for part in parts):
        raise DataError(f"column {name!r} holds a null value inside a row")
    lengths = arrow_lengths(column, name=name)
    if len(parts) == 1:
        return lengths, parts[0]
    if not parts:
        return lengths, pa.array([], type=column.type.value_type)
    return lengths, pa.concat_arrays(parts)


def _segments(
    lengths: np.ndarray,
    row_offsets: np.ndarray,
    max_length: int,
    strategy: str,
    overflow: str,
    packer: Any,
    max_segments_per_row: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """``(src_start, seg_length, pack_offsets, report)``: the packed segments in row order.

    ``src_start`` is where each segment starts in the flat values, and
    ``pack_offsets`` the CSR bounds of each packed row's segments.
    """
    rows = np.flatnonzero(lengths > 0)
    report: dict[str, Any] = {"empty_rows": int(lengths.size - rows.size)}
    if strategy == "wrapped":
        total = int(lengths.sum())
        cuts = np.arange(0, total, max_length, dtype=np.int64)
        bounds = np.union1d(row_offsets[rows], cuts)
        seg_length = np.diff(np.append(bounds, total))
        pack_offsets = np.append(np.searchsorted(bounds, cuts), bounds.size).astype(np.int64)
        report.update(split_samples=0, truncated_tokens=0, dropped_samples=0, dropped_tokens=0)
        return bounds, seg_length, pack_offsets, report
    if packer is None:
        from laden.plugins.packers.best_fit import BestFitPacker

        packer = BestFitPacker(
            max_length=max_length, overflow=overflow, max_segments_per_pack=max_segments_per_row
        )
    plan = packer.pack(LengthTable(length=lengths[rows]))
    report.update({k: v for k, v in plan.report.items() if k != "packer"})
    report["packer"] = getattr(packer, "name", type(packer).__name__)
    sample = rows[plan.order]
    return row_offsets[sample] + plan.seg_start, plan.seg_length, plan.offsets, report


def _blocks(pack_tokens: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Packed rows ``[a, b)`` in groups of at most ``size`` tokens (or one row, if longer)."""
    ends = np.cumsum(pack_tokens)
    bounds, start, base = [0], 0, 0
    while start < pack_tokens.size:
        # the first row past the budget ends this group (at least one row per group)
        stop = max(int(np.searchsorted(ends, base + size, "right")), start + 1)
        bounds.append(stop)
        start, base = stop, int(ends[stop - 1])
    return list(itertools.pairwise(bounds))


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _output_pool(pa: Any) -> Any:
    """The memory pool of the packed columns: the system allocator.

    The packed columns are fresh memory of the size of the dataset, written
    once and handed to the caller. Measured on 1M rows (3 GB out) in a fresh
    process, Arrow's default pool (mimalloc) paid 3x the CPU time of the
    system allocator in page faults (it is faster only when it can reuse the
    pages of an earlier call in the same process).
    """
    return pa.system_memory_pool()


def _gather(pa: Any, starts: Any, sizes: Any, values: Any) -> Any:
    """The values of the segments ``[start, start + size)``, in order, as one array.

    A list *view* over ``values`` (offsets and sizes in any order) flattened by
    Arrow: one ``memcpy`` per segment into fresh memory, no per-token index.
    """
    view = pa.LargeListViewArray if starts.type == pa.int64() else pa.ListViewArray
    return pa.compute.list_flatten(
        view.from_arrays(starts, sizes, values), memory_pool=_output_pool(pa)
    )


def _position_ids(
    pa: Any,
    seg_length: np.ndarray,
    pack_offsets: np.ndarray,
    token_offsets: np.ndarray,
    rows: tuple[int, int],
) -> Any:
    """``0, 1, ...`` restarting at every segment of packed rows ``[a, b)``, as one int32 array.

    Written once into Arrow memory (no copy on the way into the table): per
    block of rows, ones with a jump back at each segment start, summed.
    """
    a, b = rows
    t0 = int(token_offsets[a])
    buffer = pa.allocate_buffer(4 * (int(token_offsets[b]) - t0), memory_pool=_output_pool(pa))
    out = np.frombuffer(buffer, dtype=np.int32)
    row_tokens = np.diff(token_offsets[a : b + 1])
    steps = np.empty(min(out.size, max(POSITION_BLOCK_TOKENS, int(row_tokens.max()))), np.int32)
    for c, d in _blocks(row_tokens, POSITION_BLOCK_TOKENS):
        s0, s1 = int(pack_offsets[a + c]), int(pack_offsets[a + d])
        u0, u1 = int(token_offsets[a + c]) - t0, int(token_offsets[a + d]) - t0
        seg = seg_length[s0 : s1 - 1]
        step = steps[: u1 - u0]
        step.fill(1)
        step[np.cumsum(seg)] = 1 - seg
        step[0] = 0
        np.cumsum(step, dtype=np.int32, out=out[u0:u1])
    return pa.Array.from_buffers(pa.int32(), out.size, [None, buffer])


def pack_table(
    table: pa.Table,
    max_length: int,
    *,
    strategy: str = "bfd",
    columns: Sequence[str] | None = None,
    overflow: str = "split",
    packer: Any = None,
    max_segments_per_row: int | None = None,
    position_ids: bool = True,
    seq_lengths: bool = True,
    num_threads: int | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """Pack the rows of an Arrow table; ``(packed table, report)``. See :func:`pack_dataset`.

    The packed columns keep their Arrow types (``list<int32>`` stays
    ``list<int32>``); ``seq_lengths`` is ``list<int32>`` as TRL's
    (``list<int64>`` for a ``large_list`` column, as TRL's), and
    ``position_ids`` ``list<int32>``.
    """
    pa = _pyarrow()
    if not hasattr(pa, "ListViewArray"):  # the gather below flattens list views (pyarrow 16)
        raise MissingDependencyError("function", "pack_table", ["pyarrow>=16"], "datasets")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    if packer is not None:
        max_length = int(packer.max_length)
    if not isinstance(max_length, int | np.integer) or max_length <= 0:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    made = [n for n, on in (("seq_lengths", seq_lengths), ("position_ids", position_ids)) if on]
    if columns is None:  # a column that packing makes anew is replaced, not packed
        names = [n for n in table.column_names if n not in made]
    else:
        names = list(columns)
        clash = [n for n in names if n in made]
        if clash:
            raise ValueError(
                f"column {clash[0]!r} is made by packing; leave it out of columns=(...) "
                f"or pass {clash[0]}=False to pack it as it is"
            )
    if not names:
        raise ValueError("no column to pack")
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(f"no column {missing[0]!r}; the table has {table.column_names}")
    first = "input_ids" if "input_ids" in names else names[0]
    names.remove(first)
    names.insert(0, first)
    flats = {}
    for name in names:
        flats[name] = _flat(table.column(name), name)
        if name != first and not np.array_equal(flats[name][0], flats[first][0]):
            rows = np.flatnonzero(flats[name][0] != flats[first][0])
            raise ValueError(
                f"column {name!r} has another length than {first!r} in row {int(rows[0])}; "
                "pack only columns with one value per token (name them with columns=(...))"
            )
    lengths = flats[first][0]
    row_offsets = offsets_from_sizes(lengths)
    src_start, seg_length, pack_offsets, report = _segments(
        lengths,
        row_offsets,
        int(max_length),
        strategy,
        overflow,
        packer,
        max_segments_per_row,
    )
    # Segments are at most max_length tokens; int32 list views unless the input
    # holds 2**31 tokens or more.
    start_type = np.int64 if row_offsets[-1] > INT32_VIEW_TOKENS else np.int32
    starts = pa.array(np.asarray(src_start, dtype=start_type))
    sizes_np = np.asarray(seg_length, dtype=start_type)
    sizes = pa.array(sizes_np)
    seg_length = seg_length.astype(np.int64, copy=False)
    pack_tokens = np.add.reduceat(seg_length, pack_offsets[:-1]) if seg_length.size else seg_length
    token_offsets = offsets_from_sizes(pack_tokens)
    # TRL's seq_lengths are the list lengths of the first column: int64 for a large_list
    seq_type = np.int64 if pa.types.is_large_list(table.column(first).type) else np.int32
    arrays: dict[str, list[Any]] = {n: [] for n in names}
    if seq_lengths:
        arrays["seq_lengths"] = []
    if position_ids:
        arrays["position_ids"] = []
    # Arrow chunks of fewer than 2**31 tokens (int32 list offsets), built over the
    # gathered values; a big table is cut into one chunk per thread. Every column of
    # every chunk is one job (Arrow and numpy release the GIL), num_threads at once.
    threads = num_threads or _usable_cpus()
    share = -(-int(token_offsets[-1]) // threads)  # ceil
    chunk_tokens = min(ARROW_CHUNK_TOKENS, max(PARALLEL_CHUNK_TOKENS, share))
    chunks = _blocks(pack_tokens, chunk_tokens) if pack_tokens.size else []
    jobs: list[tuple[str, int, Callable[[], Any]]] = []
    for k, (a, b) in enumerate(chunks):
        s0, s1 = int(pack_offsets[a]), int(pack_offsets[b])
        for name in names:
            view = (starts[s0:s1], sizes[s0:s1], flats[name][1])
            jobs.append((name, k, functools.partial(_gather, pa, *view)))
        if position_ids:
            span = (a, b)
            job = functools.partial(
                _position_ids, pa, seg_length, pack_offsets, token_offsets, span
            )
            jobs.append(("position_ids", k, job))
    workers = min(len(jobs), threads)
    if workers > 1:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(job) for _, _, job in jobs]
            flat = {(name, k): f.result() for (name, k, _), f in zip(jobs, futures, strict=True)}
    else:
        flat = {(name, k): job() for name, k, job in jobs}
    for k, (a, b) in enumerate(chunks):
        s0, s1 = int(pack_offsets[a]), int(pack_offsets[b])
        offsets = token_offsets[a : b + 1] - int(token_offsets[a])
        for name in names + (["position_ids"] if position_ids else []):
            made_here = position_ids and name == "position_ids"
            large = not made_here and pa.types.is_large_list(table.column(name).type)
            array_type = pa.LargeListArray if large else pa.ListArray
            list_offsets = pa.array(offsets.astype(np.int64 if large else np.int32))
            arrays[name].append(array_type.from_arrays(list_offsets, flat[name, k]))
        if seq_lengths:
            arrays["seq_lengths"].append(
                pa.ListArray.from_arrays(
                    pa.array((pack_offsets[a : b + 1] - s0).astype(np.int32)),
                    pa.array(sizes_np[s0:s1].astype(seq_type, copy=False)),
                )
            )
    types = {n: table.column(n).type for n in names}
    if seq_lengths:
        types["seq_lengths"] = pa.list_(pa.from_numpy_dtype(seq_type))
    if position_ids:
        types["position_ids"] = pa.list_(pa.int32())
    out = pa.table({n: pa.chunked_array(parts, type=types[n]) for n, parts in arrays.items()})
    tokens_in = int(lengths.sum())
    tokens_out = int(seg_length.sum())
    report.update(
        rows_in=int(lengths.size),
        rows_out=int(pack_tokens.size),
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        tokens_lost=tokens_in - tokens_out,
        efficiency=tokens_out / max(int(pack_tokens.size) * int(max_length), 1),
    )
    return out, report


def pack_dataset(
    dataset: Any,
    max_length: int,
    strategy: str = "bfd",
    *,
    columns: Sequence[str] | None = None,
    overflow: str = "split",
    packer: Any = None,
    max_segments_per_row: int | None = None,
    position_ids: bool = True,
    seq_lengths: bool = True,
    num_threads: int | None = None,
    report: dict[str, Any] | None = None,
) -> Any:
    """Pack a ``datasets.Dataset`` (or ``DatasetDict``) into rows of at most ``max_length`` tokens.

    A drop-in for TRL's ``pack_dataset(dataset, seq_length, strategy)``:
    every list column (or those in ``columns``) is packed with the same
    segments; the result has ``seq_lengths`` (the tokens of each segment, as
    TRL's ``bfd`` gives) and ``position_ids`` (restarting at 0 in each
    segment), so a packed row is ready for a padding-free collator. Unlike
    TRL's default ``bfd``, which truncates an over-long sample silently, no
    token is lost: a sample longer than ``max_length`` is split into
    consecutive segments (``overflow = "split"``) and counted. Empty rows
    carry no token and are left out (as TRL does), counted too.

    :param max_length: tokens per packed row (TRL's ``seq_length``).
    :param strategy: ``bfd`` (laden's exact best-fit decreasing; rows in the
        order they were opened, segments longest first, as TRL's), ``bfd_split``
        (the same), or ``wrapped`` (the token stream cut every ``max_length``).
    :param columns: the columns to pack (default: all; each must be a list
        column with one value per token of ``input_ids``, or of the first).
        An input column named ``seq_lengths`` or ``position_ids`` is replaced
        by the one packing makes (unless that one is turned off).
    :param overflow: a sample longer than ``max_length``: ``split`` (default),
        ``truncate`` (TRL's ``bfd``; the cut tokens are counted), ``drop`` or
        ``error``.
    :param packer: any laden packer strategy instead of ``best_fit`` (its
        ``max_length`` wins).
    :param max_segments_per_row: at most this many segments in one row.
    :param num_threads: threads that gather the packed columns (each
        column, and ``position_ids``, of each part of the rows is one job; a
        table of more than 4M tokens comes out in one Arrow chunk per thread);
        default: one per CPU this process may use. ``1``: all in the calling
        thread, one chunk.
    :param report: a dict to fill with what happened: ``tokens_lost``,
        ``split_samples``, ``truncated_tokens``, ``empty_rows``, ``rows_in``,
        ``rows_out``, ``efficiency``.
    """
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependencyError("function", "pack_dataset", ["datasets"], "datasets") from exc
    options: dict[str, Any] = {
        "strategy": strategy,
        "columns": columns,
        "overflow": overflow,
        "packer": packer,
        "max_segments_per_row": max_segments_per_row,
        "position_ids": position_ids,
        "seq_lengths": seq_lengths,
        "num_threads": num_threads,
    }
    if isinstance(dataset, datasets.DatasetDict):
        reports: dict[str, Any] = {}
        packed = datasets.DatasetDict(
            {
                split: pack_dataset(
                    part, max_length, report=reports.setdefault(split, {}), **options
                )
                for split, part in dataset.items()
            }
        )
        if report is not None:
            report.update(reports)
        return packed
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"pack_dataset takes a datasets.Dataset, got {type(dataset).__name__}")
    fmt = dataset.format
    table = dataset_table(dataset)
    out, found = pack_table(table, max_length, **options)
    if report is not None:
        report.update(found)
    # The fingerprint of the input and the options: hashing the packed table itself
    # (what ``datasets.Dataset`` does without one) would cost more than packing.
    fingerprint = digest(
        str(getattr(dataset, "_fingerprint", "")),
        canonical_json(
            {
                "max_length": int(max_length),
                **{k: v for k, v in options.items() if k != "num_threads"},  # same rows
                "packer": repr(packer),
                "laden": "hf.pack",
            }
        ),
        size=8,
    )
    packed = datasets.Dataset(out, fingerprint=fingerprint)
    if fmt.get("type") is not None:
        packed = packed.with_format(fmt["type"], **fmt.get("format_kwargs", {}))
    return packed


def dataset_table(dataset: Any) -> pa.Table:
    """The Arrow table of a ``datasets.Dataset`` in its row order (after ``select``/``shuffle``)."""
    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    table = dataset.data
    return table.table if hasattr(table, "table") else table


# ------------------------------------------------------------------ samples


class ArrowSamples:
    """Token ids by row index of a list column, for collation (``fetch`` reads a batch at once).

    :param column: the ``input_ids`` column (Arrow Array or ChunkedArray),
        or a ``datasets.Dataset``, whose ``input_ids`` (``field``) it takes.
    :param loss_mask: an optional column of 0/1 per token.
    """

    def __init__(self, column: Any, *, field: str = "input_ids", loss_mask: Any = None) -> None:
        if hasattr(column, "column_names") and not hasattr(column, "chunks"):
            table = dataset_table(column) if hasattr(column, "features") else column
            column = table.column(field)
        pa = _pyarrow()
        self.column = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
        self.field = field
        self.loss_mask = loss_mask
        self.lengths = arrow_lengths(self.column, name=field)

    def __len__(self) -> int:
        return int(self.lengths.size)

    def fetch(self, ids: Any) -> dict[int, dict[str, Any]]:
        """The given rows, keyed by index: one Arrow ``take`` and one split for the batch."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if ids.size and (ids[0] < 0 or ids[-1] >= len(self)):
            raise IndexError(f"row {int(ids[-1])} out of range for {len(self)} rows")
        taken = self.column.take(ids).combine_chunks()
        values = taken.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        parts = np.split(values, np.cumsum(self.lengths[ids])[:-1]) if ids.size else []
        out: dict[int, dict[str, Any]] = {
            i: {"input_ids": part} for i, part in zip(ids.tolist(), parts, strict=True)
        }
        if self.loss_mask is not None:
            masks = self.loss_mask.take(ids).combine_chunks().flatten().to_numpy(False)
            for i, part in zip(
                ids.tolist(),
                np.split(masks.astype(bool), np.cumsum(self.lengths[ids])[:-1]),
                strict=True,
            ):
                out[i]["loss_mask"] = part
        return out

    def __getitem__(self, i: int) -> Mapping[str, Any]:
        return self.fetch([int(i)])[int(i)]


# ------------------------------------------------------------------ trainer


def _laden_trainer() -> type:
    try:  # untyped here: the class below is built on whatever versions are installed
        torch: Any = importlib.import_module("torch")
        transformers: Any = importlib.import_module("transformers")
    except ImportError as exc:
        raise MissingDependencyError(
            "class", "LadenTrainer", ["transformers", "accelerate", "torch"], "hf-models"
        ) from exc
    from laden.torch import PlanBatchSampler, PlanDataset, _passthrough

    class _PlanDataLoader(torch.utils.data.DataLoader):  # type: ignore[misc]
        """A DataLoader over a plan's batch sampler; ``set_epoch`` reaches the sampler."""

        def set_epoch(self, epoch: int) -> None:
            sampler = self.batch_sampler
            if epoch >= sampler.plan.num_epochs:
                raise ValueError(
                    f"the Trainer starts epoch {epoch} but the laden plan has "
                    f"{sampler.plan.num_epochs} epochs; build the plan with at least "
                    "num_train_epochs epochs"
                )
            sampler.set_epoch(epoch)

    class LadenTrainer(transformers.Trainer):  # type: ignore[misc]
        """A ``transformers.Trainer`` whose train batches come from a laden plan.

        Each rank takes its shard of ``laden_plan`` (by ``args.process_index``
        of ``args.world_size``: disjoint, the same number of steps on every
        rank), batches are collated by ``laden_backend`` (default: the torch
        backend's ``hf`` profile for the model's attention implementation) and
        are not re-split by accelerate. A batch that only evens out the shards
        (``padding``) still runs forward and backward, with its loss zeroed,
        so no rank waits for another at the all-reduce.

        :param laden_plan: the :class:`~laden.plan.BatchPlan` (full or sharded).
        :param laden_samples: token ids by sample index (an :class:`ArrowSamples`,
            a :class:`~laden.records.Ragged`, ...); default: the ``input_ids`` of
            ``train_dataset``.
        :param laden_backend: the collating backend.
        """

        def __init__(
            self,
            *args: Any,
            laden_plan: Any,
            laden_samples: Any = None,
            laden_backend: Any = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.laden_plan = laden_plan
            if laden_samples is None:
                if self.train_dataset is None:
                    raise ValueError("give laden_samples or a train_dataset with input_ids")
                laden_samples = ArrowSamples(self.train_dataset)
            self.laden_samples = laden_samples
            if laden_backend is None:
                from laden.plugins.backends.torch import TorchBackend

                attn = getattr(self.model.config, "_attn_implementation", None) or "sdpa"
                laden_backend = TorchBackend(profile="hf", attn_implementation=attn)
            self.laden_backend = laden_backend

        def laden_sampler(self, rank: int | None = None, world_size: int | None = None) -> Any:
            """The batch sampler of ``rank`` of ``world_size`` (default: this process's)."""
            rank = self.args.process_index if rank is None else rank
            world_size = self.args.world_size if world_size is None else world_size
            return PlanBatchSampler(self.laden_plan, rank, world_size)

        def get_train_dataloader(self) -> Any:
            sampler = self.laden_sampler()
            plan = sampler.plan
            lengths = (
                plan.pack.pack_lengths if plan.pack is not None else self.laden_samples.lengths
            )
            dataset = PlanDataset(
                self.laden_samples, lengths, backend=self.laden_backend, pack=plan.pack
            )
            return _PlanDataLoader(
                dataset,
                batch_sampler=sampler,
                collate_fn=_passthrough,
                num_workers=self.args.dataloader_num_workers,
                pin_memory=self.args.dataloader_pin_memory,
            )

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            padding = bool(inputs.pop("padding", False))
            for key in ("epoch", "step"):
                inputs.pop(key, None)
            result = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
            if not padding:
                return result
            if return_outputs:
                return result[0] * 0.0, result[1]
            return result * 0.0

    return LadenTrainer


_TRAINER: list[type] = []


def __getattr__(name: str) -> Any:
    if name == "LadenTrainer":  # built on first use: it subclasses transformers.Trainer
        if not _TRAINER:
            _TRAINER.append(_laden_trainer())
        return _TRAINER[0]
    raise AttributeError(f"module 'laden.hf' has no attribute {name!r}")

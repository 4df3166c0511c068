"""``timeseries``: sliding windows over long numeric series, never loaded whole.

A source plugin for time series stored as ``.npy`` (memory-mapped), CSV
(parsed in chunks once into a columnar cache) or Parquet (with ``pyarrow``).
Rows may hold several series, told apart by an ``id_column`` (each series'
rows together); a ``time_column`` is checked for order (a NaN, a duplicate or
a step back is an error naming the row).

Windows are planned as two columns, ``series`` and ``start`` (the first row),
so ten million windows cost a few arrays. A window never crosses a series
boundary, nor a gap in time larger than ``max_gap``. :meth:`TimeseriesSource.lengths`
turns them into a :class:`~laden.records.LengthTable` (``length`` = window,
``key`` = series, ``offset`` = start row, ``ids`` = window number), so they go
through the usual samplers, plans, shards, resume and writers.
:class:`WindowDataset` collates a batch as ``inputs [B, window, F]`` and
``targets [B, horizon, T]``, one fancy-index gather over a sliding-window view
of the memory map per batch, never one copy per window.

The cache directory (``cache``, default ``<file>.laden-ts``) holds
``meta.json`` (kind ``laden.timeseries``), the series boundaries, per-column
statistics (one streaming pass) and, for CSV and Parquet, the columns as
``values.npy`` (float, memory-mapped) and ``time.npy``. It is rebuilt when the
file's size or modification time or the column settings change.
"""

from __future__ import annotations

import io
import itertools
import mmap
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import attrs
import numpy as np

from laden.errors import ConfigError, DataError
from laden.hookspecs import hookimpl
from laden.io import (
    atomic_directory,
    atomic_open,
    check_format,
    read_array,
    read_json,
    write_array,
    write_json,
)
from laden.prefetch import ordered_prefetch
from laden.progress import Progress
from laden.records import LengthTable, offsets_from_sizes
from laden.registry import Registry

__all__ = [
    "KIND",
    "SeriesStore",
    "TimeseriesSource",
    "WindowDataset",
    "WindowTable",
    "plan_windows",
    "write_windows",
]

#: The artifact kind of a time-series cache directory.
KIND = "laden.timeseries"
FORMAT_VERSION = 1
_NPY_HEADER = 128  # bytes reserved for the header of a values.npy written in chunks
_DATETIME = re.compile(r"^\s*\d{4}-\d{2}-\d{2}")


def _names(value: Any) -> tuple[str, ...] | None:
    """A tuple of column names from a list, a tuple or a comma-separated string."""
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)


def _positive_or_none(_inst: Any, attribute: Any, value: Any) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"must be > 0, got {value}", path=(attribute.name,))


def _non_negative(_inst: Any, attribute: Any, value: Any) -> None:
    if value < 0:
        raise ConfigError(f"must be >= 0, got {value}", path=(attribute.name,))


def _positive(_inst: Any, attribute: Any, value: Any) -> None:
    if value <= 0:
        raise ConfigError(f"must be > 0, got {value}", path=(attribute.name,))


# ------------------------------------------------------------------ windows


@attrs.frozen(kw_only=True, eq=False)
class WindowTable:
    """Every window as two columns: ``series`` (index) and ``start`` (first row)."""

    series: np.ndarray
    start: np.ndarray
    window: int
    horizon: int
    stride: int
    #: rows per series, and the windows each series gave
    series_rows: np.ndarray
    series_windows: np.ndarray

    def __len__(self) -> int:
        return int(self.start.size)


def plan_windows(
    offsets: np.ndarray,
    *,
    window: int,
    stride: int,
    horizon: int = 0,
    time: np.ndarray | None = None,
    max_gap: float | None = None,
) -> WindowTable:
    """All windows of ``window + horizon`` rows, ``stride`` apart, inside each segment.

    Segments are the series (CSR ``offsets`` over rows), cut again wherever
    consecutive ``time`` values are more than ``max_gap`` apart. Vectorized:
    a few passes over the boundaries and one over ``time``.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    cuts = offsets
    if time is not None and max_gap is not None and offsets[-1] > 1:
        gaps = np.flatnonzero(np.diff(time) > max_gap) + 1
        if gaps.size:
            cuts = np.union1d(offsets, gaps)
    seg_start = cuts[:-1]
    seg_len = np.diff(cuts)
    seg_series = np.searchsorted(offsets, seg_start, side="right") - 1
    span = window + horizon
    counts = np.where(seg_len >= span, (seg_len - span) // stride + 1, 0).astype(np.int64)
    first = offsets_from_sizes(counts)
    total = int(first[-1])
    within = np.arange(total, dtype=np.int64) - np.repeat(first[:-1], counts)
    start = np.repeat(seg_start, counts) + stride * within
    series = np.repeat(seg_series, counts)
    per_series = np.bincount(seg_series, weights=counts, minlength=offsets.size - 1)
    return WindowTable(
        series=series,
        start=start,
        window=window,
        horizon=horizon,
        stride=stride,
        series_rows=np.diff(offsets),
        series_windows=per_series.astype(np.int64),
    )


# -------------------------------------------------------------------- store


@attrs.frozen(kw_only=True, eq=False)
class SeriesStore:
    """The rows of a time-series file, ready for windows: memory-mapped columns.

    :ivar values: ``[rows, columns]`` (a memory map).
    :ivar features: the input columns of ``values`` (a slice where contiguous).
    :ivar targets: the target columns of ``values``.
    :ivar offsets: CSR boundaries of the series over rows.
    :ivar series_names: one name per series (the id column's values).
    :ivar time: the time column (float64 memory map) or None.
    :ivar mean: per column of ``values`` (None: not computed); ``std`` likewise.
    """

    values: np.ndarray
    features: slice | np.ndarray
    targets: slice | np.ndarray
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]
    offsets: np.ndarray
    series_names: tuple[str, ...]
    time: np.ndarray | None
    mean: np.ndarray | None
    std: np.ndarray | None

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])


class _NpyAppender:
    """A ``.npy`` of ``[rows, width]`` written in row chunks; its header is fixed at the end."""

    def __init__(self, file: BinaryIO, width: int, dtype: np.dtype[Any]) -> None:
        self.file, self.width, self.dtype, self.rows = file, width, dtype, 0
        file.write(b"\0" * _NPY_HEADER)

    def append(self, rows: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += rows.shape[0]

    def finish(self) -> None:
        shape = (self.rows, self.width) if self.width else (self.rows,)
        header = repr({"descr": self.dtype.str, "fortran_order": False, "shape": shape}).encode(
            "latin1"
        )
        pad = _NPY_HEADER - 10 - len(header) - 1
        self.file.seek(0)
        self.file.write(b"\x93NUMPY\x01\x00" + (_NPY_HEADER - 10).to_bytes(2, "little"))
        self.file.write(header + b" " * pad + b"\n")
        self.file.seek(0, os.SEEK_END)


class _Stats:
    """Per-column count, mean and M2 merged chunk by chunk (Chan et al.): one pass."""

    def __init__(self, width: int) -> None:
        self.n = 0
        self.mean = np.zeros(width, dtype=np.float64)
        self.m2 = np.zeros(width, dtype=np.float64)

    def add(self, rows: np.ndarray) -> None:
        k = rows.shape[0]
        if not k:
            return
        x = rows.astype(np.float64, copy=False)
        mean = x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        total = self.n + k
        delta = mean - self.mean
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * k / total)
        self.n = total

    def result(self) -> tuple[list[float], list[float]]:
        std = np.sqrt(self.m2 / max(self.n, 1))
        std = np.where(std > 0, std, 1.0)  # a constant column is left as it is
        return self.mean.tolist(), std.tolist()


@attrs.frozen(kw_only=True)
class _Chunk:
    values: np.ndarray | None  # [k, columns] (None: nothing to store, e.g. .npy)
    ids: np.ndarray | None  # [k] series ids (strings or numbers)
    time: np.ndarray | None  # [k] float64
    where: Callable[[int], tuple[int | None, str]]  # row in chunk -> (line, label)


class _Ingest:
    """Checks rows chunk by chunk (series runs, time order) and keeps what the cache needs."""

    def __init__(self, file: str, stats: _Stats | None, what: str) -> None:
        self.file, self.stats, self.what = file, stats, what
        self.rows = 0
        self.run_starts: list[int] = []
        self.run_names: list[str] = []
        self.seen: dict[str, str] = {}
        self.last_id: Any = None
        self.last_time: float | None = None

    def _error(self, chunk: _Chunk, row: int, reason: str) -> DataError:
        line, label = chunk.where(row)
        return DataError(f"{label}: {reason}", file=self.file, line=line)

    def add(self, chunk: _Chunk) -> None:
        k = next(a.shape[0] for a in (chunk.values, chunk.ids, chunk.time) if a is not None)
        same = np.ones(k, dtype=bool)  # row i continues the series of row i-1
        if chunk.ids is not None and k:
            ids = chunk.ids
            change = np.empty(k, dtype=bool)
            change[0] = self.last_id is None or ids[0] != self.last_id
            change[1:] = ids[1:] != ids[:-1]
            same = ~change
            for row in np.flatnonzero(change).tolist():  # once per series, not per row
                name = str(ids[row])
                if name in self.seen:
                    raise self._error(
                        chunk,
                        row,
                        f"series {name!r} appears again after other series (first at "
                        f"{self.seen[name]}); keep each series' rows together, sorted by time",
                    )
                self.seen[name] = chunk.where(row)[1]
                self.run_starts.append(self.rows + row)
                self.run_names.append(name)
            self.last_id = ids[-1]
        elif k and not self.run_starts:
            self.run_starts.append(0)
            self.run_names.append("0")
        if chunk.time is not None and k:
            t = chunk.time
            nan = np.flatnonzero(np.isnan(t))
            if nan.size:
                raise self._error(chunk, int(nan[0]), f"{self.what} is NaN")
            prev = np.empty(k, dtype=np.float64)
            prev[0] = np.nan if self.last_time is None else self.last_time
            prev[1:] = t[:-1]
            if chunk.ids is not None and not same[0]:
                prev[0] = np.nan
            with np.errstate(invalid="ignore"):
                bad = np.flatnonzero(same & (t <= prev))
            if bad.size:
                row = int(bad[0])
                kind = "duplicate timestamp" if t[row] == prev[row] else "timestamps out of order"
                raise self._error(
                    chunk,
                    row,
                    f"{kind}: {self.what} {t[row]:g} after {prev[row]:g} in the same series "
                    "(each series must be sorted by time, without repeats)",
                )
            self.last_time = float(t[-1])
        if self.stats is not None and chunk.values is not None:
            self.stats.add(chunk.values)
        self.rows += k

    def offsets(self) -> np.ndarray:
        return np.asarray([*self.run_starts, self.rows], dtype=np.int64)


# ---------------------------------------------------------------------- csv


def _csv_blocks(path: str, block_bytes: int, skip: int) -> Iterator[tuple[bytes, int]]:
    """Blocks of whole lines after the first ``skip`` bytes, with each block's first line number."""
    with open(path, "rb") as f:
        f.seek(skip)
        line = 2  # the header is line 1
        rest = b""
        while True:
            data = f.read(block_bytes)
            if not data:
                if rest:
                    yield rest + b"\n", line
                return
            data = rest + data
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            block, rest = data[: cut + 1], data[cut + 1 :]
            yield block, line
            line += block.count(b"\n")


def _line_numbers(block: bytes, first: int) -> np.ndarray:
    """The line number of every non-blank line of ``block`` (the rows loadtxt reads)."""
    raw = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10)
    starts = np.concatenate(([0], ends[:-1] + 1))
    size = ends - starts
    carriage = size == 1
    if carriage.any():
        carriage[carriage] = raw[starts[carriage]] == 13
    blank = (size == 0) | carriage
    return first + np.flatnonzero(~blank)


def _bad_line(
    text: str, first: int, delimiter: str, width: int, usecols: Sequence[int]
) -> tuple[int, str]:
    """Find the first row that does not parse (the error path only: a loop is fine here)."""
    for n, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        cells = line.rstrip("\r").split(delimiter)
        if len(cells) != width:
            return first + n, f"has {len(cells)} columns, the header has {width}"
        for c in usecols:
            try:
                float(cells[c])
            except ValueError:
                return first + n, f"column {c + 1} holds {cells[c].strip()!r}, not a number"
    return first, "does not parse"


# --------------------------------------------------------------- the source


@attrs.frozen(kw_only=True)
class TimeseriesSource:
    """Sliding windows over the numeric columns of an ``.npy``, CSV or Parquet file.

    :param path: the file (``.npy``: a 2-D numeric array; ``.csv``: a header
        line, then one row per line; ``.parquet``: needs ``pyarrow``).
    :param window: rows per window (the ``inputs``).
    :param stride: rows between window starts (default: ``window - overlap``, or 1).
    :param overlap: rows two consecutive windows share (instead of ``stride``).
    :param horizon: rows after a window returned as its ``targets`` (0: none).
    :param columns: the input columns (default: every column but the id and time).
    :param target_columns: the columns of ``targets`` (default: ``columns``).
    :param id_column: the column that tells series apart (rows of one series together).
    :param time_column: the column checked for order and used by ``max_gap``.
    :param time_format: ``number`` or ``datetime`` (ISO 8601 text; seconds).
    :param max_gap: no window spans two consecutive rows further apart in time.
    :param names: column names of an ``.npy`` array (default ``0``, ``1``, ...).
    :param normalize: scale every column to zero mean and unit variance, with
        statistics computed in one streaming pass and stored with the cache.
    :param dtype: the float dtype of collated windows.
    :param delimiter: the CSV delimiter (fields are not quoted).
    Column lists (``columns``, ``target_columns``, ``names``) are lists or
    comma-separated strings (``-S columns=a,b`` on the command line); they are
    kept as tuples.

    :param cache: the cache directory (default: ``<path>.laden-ts``).
    :param chunk_rows: rows parsed at once while building the cache.
    """

    name: ClassVar[str] = "timeseries"

    path: str
    window: int = attrs.field(validator=_positive)
    stride: int | None = attrs.field(default=None, validator=_positive_or_none)
    overlap: int | None = None
    horizon: int = attrs.field(default=0, validator=_non_negative)
    columns: Any = attrs.field(default=None, converter=_names)
    target_columns: Any = attrs.field(default=None, converter=_names)
    id_column: str | None = None
    time_column: str | None = None
    time_format: str = attrs.field(
        default="number", validator=attrs.validators.in_(("number", "datetime"))
    )
    max_gap: float | None = attrs.field(default=None, validator=_positive_or_none)
    names: Any = attrs.field(default=None, converter=_names)
    normalize: bool = False
    dtype: str = attrs.field(
        default="float32", validator=attrs.validators.in_(("float32", "float64", "float16"))
    )
    delimiter: str = ","
    cache: str | None = attrs.field(default=None, metadata={"identity": False})
    chunk_rows: int = attrs.field(
        default=1 << 16, validator=_positive, metadata={"identity": False}
    )

    def __attrs_post_init__(self) -> None:
        if self.overlap is not None:
            if not 0 <= self.overlap < self.window:
                raise ConfigError(
                    f"must be >= 0 and below window ({self.window}), got {self.overlap}",
                    path=("overlap",),
                )
            if self.stride is not None and self.stride != self.window - self.overlap:
                raise ConfigError(
                    f"stride {self.stride} and overlap {self.overlap} disagree "
                    f"(stride = window - overlap = {self.window - self.overlap}); give one",
                    path=("stride",),
                )
        if self.format not in ("npy", "csv", "parquet"):
            raise ConfigError(
                f"{self.path}: unknown file type; expected .npy, .csv or .parquet", path=("path",)
            )

    # ---------------------------------------------------------- settings

    @property
    def step(self) -> int:
        """Rows between window starts."""
        if self.stride is not None:
            return self.stride
        if self.overlap is not None:
            return self.window - self.overlap
        return 1

    @property
    def format(self) -> str:
        suffix = Path(self.path).suffix.lower()
        return {".npy": "npy", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(
            suffix, suffix
        )

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache if self.cache is not None else f"{self.path}.laden-ts")

    def fingerprint(self) -> str:
        from laden.digest import file_digest

        return file_digest(self.path)

    # ---------------------------------------------------------- columns

    def _all_names(self) -> tuple[str, ...]:
        if self.format == "npy":
            shape = self._npy().shape
            if self.names is not None:
                if len(self.names) != shape[1]:
                    raise ConfigError(
                        f"{len(self.names)} names for {shape[1]} columns of {self.path}",
                        path=("names",),
                    )
                return tuple(self.names)
            return tuple(str(i) for i in range(shape[1]))
        if self.format == "csv":
            return self._csv_header()[0]
        return tuple(self._parquet().schema_arrow.names)

    def _pick(self, names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The feature and target column names, checked against the file's."""
        for key in ("id_column", "time_column"):
            value = getattr(self, key)
            if value is not None and value not in names:
                raise ConfigError(
                    f"{value!r} is not a column of {self.path}; it has {', '.join(names)}",
                    path=(key,),
                )
        special = {self.id_column, self.time_column}
        features = self.columns or tuple(n for n in names if n not in special)
        targets = self.target_columns or features
        for key, chosen in (("columns", features), ("target_columns", targets)):
            unknown = [c for c in chosen if c not in names]
            if unknown:
                raise ConfigError(
                    f"{', '.join(map(repr, unknown))} not in {self.path}; it has "
                    f"{', '.join(names)}",
                    path=(key,),
                )
        if not features:
            raise ConfigError(f"{self.path} has no feature column left", path=("columns",))
        return features, targets

    def _npy(self) -> np.ndarray:
        try:
            array: np.ndarray = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"not a readable .npy array ({exc})", file=self.path) from None
        if array.ndim == 1:
            array = array.reshape(-1, 1)
        if array.ndim != 2 or array.dtype.kind not in "iuf":
            raise DataError(
                f"expected a 2-D numeric array [rows, columns], got {array.dtype} {array.shape}",
                file=self.path,
            )
        return array

    def _csv_header(self) -> tuple[tuple[str, ...], int]:
        with open(self.path, "rb") as f:
            first = f.readline()
        if not first.strip():
            raise DataError("has no header line", file=self.path, line=1)
        names = tuple(c.strip() for c in first.decode("utf-8").rstrip("\r\n").split(self.delimiter))
        return names, len(first)

    def _parquet(self) -> Any:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(
                "reading Parquet needs pyarrow, which is not installed; run: "
                'pip install pyarrow (or pip install "laden[parquet]")',
                file=self.path,
            ) from None
        return pq.ParquetFile(self.path)

    # ---------------------------------------------------------- the cache

    def _identity(self) -> dict[str, Any]:
        stat = os.stat(self.path)
        return {
            "path": os.path.abspath(self.path),
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "format": self.format,
            "columns": list(self.columns or ()),
            "target_columns": list(self.target_columns or ()),
            "id_column": self.id_column,
            "time_column": self.time_column,
            "time_format": self.time_format,
            "names": list(self.names or ()),
            "delimiter": self.delimiter,
            "dtype": self.dtype,
        }

    def open(self, *, progress: bool | None = None) -> SeriesStore:
        """The rows, memory-mapped, building (or rebuilding) the cache when needed."""
        if not os.path.isfile(self.path):
            raise DataError("no such file", file=self.path)
        meta = self._cached_meta()
        if meta is None or (self.normalize and meta.get("mean") is None):
            meta = self._build_cache(progress=progress)
        return self._store(meta)

    def _cached_meta(self) -> dict[str, Any] | None:
        path = self.cache_dir / "meta.json"
        if not path.is_file():
            return None
        try:
            meta = read_json(path)
            check_format(meta, kind=KIND, version=FORMAT_VERSION, file=path)
        except DataError:
            return None
        return meta if meta.get("identity") == self._identity() else None

    def _build_cache(self, *, progress: bool | None = None) -> dict[str, Any]:
        names = self._all_names()
        features, targets = self._pick(names)
        stored = features + tuple(t for t in targets if t not in features)
        dtype = np.dtype(self.dtype)
        time_label = f"time column {self.time_column!r}"
        with atomic_directory(self.cache_dir, kind=KIND, force=True) as tmp:
            meta: dict[str, Any] = {
                "kind": KIND,
                "format_version": FORMAT_VERSION,
                "identity": self._identity(),
                "features": list(features),
                "targets": list(targets),
            }
            if self.format == "npy":
                wanted = self.normalize
                stats = _Stats(len(stored)) if wanted else None
                ingest = _Ingest(self.path, stats, time_label)
                for chunk in self._npy_chunks(names, stored, values=wanted, progress=progress):
                    ingest.add(chunk)
                meta["stored"] = None  # values stay in the .npy file
            else:
                stats = _Stats(len(stored))
                ingest = _Ingest(self.path, stats, time_label)
                chunks = (
                    self._csv_chunks(names, stored, progress=progress)
                    if self.format == "csv"
                    else self._parquet_chunks(stored, progress=progress)
                )
                with atomic_open(tmp / "values.npy") as vf, atomic_open(tmp / "time.npy") as tf:
                    values = _NpyAppender(vf, len(stored), dtype)
                    times = _NpyAppender(tf, 0, np.dtype(np.float64))
                    for chunk in chunks:
                        ingest.add(chunk)
                        assert chunk.values is not None
                        values.append(chunk.values)
                        if chunk.time is not None:
                            times.append(chunk.time)
                    values.finish()
                    times.finish()
                meta["stored"] = list(stored)
            if ingest.rows == 0:
                raise DataError("holds no rows", file=self.path)
            meta["rows"] = ingest.rows
            meta["series_names"] = ingest.run_names
            meta["offsets"] = write_array(tmp, "offsets", ingest.offsets())
            mean, std = stats.result() if stats is not None else (None, None)
            meta["mean"], meta["std"] = mean, std
            write_json(tmp / "meta.json", meta)
        return meta

    def _store(self, meta: Mapping[str, Any]) -> SeriesStore:
        root = self.cache_dir
        offsets = read_array(root, meta["offsets"])
        features = tuple(meta["features"])
        targets = tuple(meta["targets"])
        time = None
        if meta["stored"] is None:  # .npy: the file itself
            values = self._npy()
            columns = list(self._all_names())
            if self.time_column is not None:
                time = values[:, columns.index(self.time_column)]
        else:
            values = np.load(root / "values.npy", mmap_mode="r", allow_pickle=False)
            columns = list(meta["stored"])
            if self.time_column is not None:
                time = np.load(root / "time.npy", mmap_mode="r", allow_pickle=False)
        feature_idx = np.asarray([columns.index(c) for c in features], dtype=np.int64)
        target_idx = np.asarray([columns.index(c) for c in targets], dtype=np.int64)
        mean = std = None
        if meta.get("mean") is not None:
            stored = meta["stored"] or list(
                features + tuple(t for t in targets if t not in features)
            )
            at = {c: i for i, c in enumerate(stored)}
            m, s = np.asarray(meta["mean"]), np.asarray(meta["std"])
            mean = np.asarray([m[at[c]] if c in at else 0.0 for c in columns])
            std = np.asarray([s[at[c]] if c in at else 1.0 for c in columns])
        return SeriesStore(
            values=values,
            features=_as_slice(feature_idx),
            targets=_as_slice(target_idx),
            feature_names=features,
            target_names=targets,
            offsets=offsets,
            series_names=tuple(meta["series_names"]),
            time=time,
            mean=mean,
            std=std,
        )

    # ---------------------------------------------------------- readers

    def _npy_chunks(
        self,
        names: tuple[str, ...],
        stored: tuple[str, ...],
        *,
        values: bool,
        progress: bool | None,
    ) -> Iterator[_Chunk]:
        array = self._npy()
        col = {n: i for i, n in enumerate(names)}
        idx = [col[c] for c in stored]
        n = array.shape[0]
        step = max(self.chunk_rows, 1 << 18)

        def where_of(base: int) -> Callable[[int], tuple[int | None, str]]:
            return lambda row: (None, f"row {base + row}")

        need_time = self.time_column is not None
        if not (values or need_time or self.id_column is not None):
            # nothing to read: one empty-width chunk counts the rows of the single series
            yield _Chunk(values=np.zeros((n, 0)), ids=None, time=None, where=where_of(0))
            return
        t_at = col[self.time_column] if self.time_column is not None else None
        with Progress(n, "indexing", enabled=progress, unit="rows") as bar:
            for a in range(0, n, step):
                part = array[a : a + step]
                ids = part[:, col[self.id_column]] if self.id_column is not None else None
                time = part[:, t_at].astype(np.float64) if t_at is not None else None
                vals = part[:, idx] if values else np.zeros((part.shape[0], 0))
                yield _Chunk(values=vals, ids=ids, time=time, where=where_of(a))
                bar.update(part.shape[0])

    def _csv_chunks(
        self, names: tuple[str, ...], stored: tuple[str, ...], *, progress: bool | None
    ) -> Iterator[_Chunk]:
        header, skip = self._csv_header()
        col = {n: i for i, n in enumerate(header)}
        idx = [col[c] for c in stored]
        numeric = list(idx)
        time_at = None
        if self.time_column is not None and self.time_format == "number":
            time_at = len(numeric)
            numeric.append(col[self.time_column])
        width = len(header)
        block_bytes = max(self.chunk_rows * 64, 1 << 16)
        size = os.path.getsize(self.path)
        with Progress(size, "caching", enabled=progress, unit="bytes") as bar:
            for block, first in _csv_blocks(self.path, block_bytes, skip):
                text = block.decode("utf-8")
                lines = _line_numbers(block, first)
                if lines.size == 0:
                    continue
                try:
                    parsed = _loadtxt(
                        text, delimiter=self.delimiter, usecols=numeric, dtype=np.float64, ndmin=2
                    )
                except ValueError:
                    line, reason = _bad_line(text, first, self.delimiter, width, numeric)
                    raise DataError(f"bad row: {reason}", file=self.path, line=line) from None
                self._check_widths(text, first, width)  # loadtxt reads only some columns
                ids = time = None
                if self.id_column is not None:
                    ids = self._text_column(text, col[self.id_column], first)
                if self.time_column is not None:
                    if time_at is not None:
                        time = parsed[:, time_at]
                    else:
                        time = self._datetimes(
                            self._text_column(text, col[self.time_column], first), lines
                        )
                bar.update(len(block))
                yield _Chunk(
                    values=parsed[:, : len(idx)],
                    ids=ids,
                    time=time,
                    where=_lines_where(lines),
                )

    def _check_widths(self, text: str, first: int, width: int) -> None:
        """Every non-blank row has the header's number of fields (vectorized count)."""
        rows = np.asarray(text.split("\n"))
        fields = np.char.count(rows, self.delimiter) + 1
        blank = np.char.str_len(np.char.strip(rows)) == 0
        bad = np.flatnonzero((fields != width) & ~blank)
        if bad.size:
            n = int(bad[0])
            raise DataError(
                f"bad row: has {int(fields[n])} columns, the header has {width}",
                file=self.path,
                line=first + n,
            )

    def _text_column(self, text: str, at: int, first: int) -> np.ndarray:
        return _loadtxt(text, delimiter=self.delimiter, usecols=[at], dtype=str, ndmin=1).reshape(
            -1
        )

    def _datetimes(self, text: np.ndarray, lines: np.ndarray) -> np.ndarray:
        stripped = np.char.strip(text)
        try:
            stamps = stripped.astype("datetime64[ns]")
        except ValueError:
            bad = next(i for i, s in enumerate(stripped.tolist()) if not _is_datetime(s))
            raise DataError(
                f"time column {self.time_column!r} holds {stripped[bad]!r}, not an ISO 8601 time",
                file=self.path,
                line=int(lines[bad]),
            ) from None
        seconds = stamps.astype(np.int64).astype(np.float64) / 1e9
        seconds[np.isnat(stamps)] = np.nan
        return seconds

    def _parquet_chunks(
        self, stored: tuple[str, ...], *, progress: bool | None
    ) -> Iterator[_Chunk]:
        file = self._parquet()
        extra = [c for c in (self.id_column, self.time_column) if c is not None and c not in stored]
        wanted = list(dict.fromkeys([*stored, *extra]))
        base = 0
        with Progress(file.metadata.num_rows, "caching", enabled=progress, unit="rows") as bar:
            for batch in file.iter_batches(batch_size=self.chunk_rows, columns=wanted):
                k = batch.num_rows
                cols = {name: batch.column(name) for name in wanted}
                values = np.empty((k, len(stored)), dtype=np.float64)
                for j, name in enumerate(stored):
                    values[:, j] = self._parquet_numbers(cols[name], name, base)
                ids = None
                if self.id_column is not None:
                    ids = np.asarray(cols[self.id_column].to_numpy(zero_copy_only=False)).astype(
                        str
                    )
                time = None
                if self.time_column is not None:
                    raw = cols[self.time_column].to_numpy(zero_copy_only=False)
                    if np.asarray(raw).dtype.kind == "M":
                        stamps = np.asarray(raw).astype("datetime64[ns]")
                        time = stamps.astype(np.int64).astype(np.float64) / 1e9
                        time[np.isnat(stamps)] = np.nan
                    else:
                        time = self._parquet_numbers(cols[self.time_column], self.time_column, base)
                where = _rows_where(base)
                yield _Chunk(values=values, ids=ids, time=time, where=where)
                base += k
                bar.update(k)

    def _parquet_numbers(self, column: Any, name: str, base: int) -> np.ndarray:
        raw = np.asarray(column.to_numpy(zero_copy_only=False))
        if raw.dtype.kind in "iufb":
            return raw.astype(np.float64)
        try:
            return raw.astype(np.float64)
        except (TypeError, ValueError):
            for i, v in enumerate(raw.tolist()):
                try:
                    float(v)
                except (TypeError, ValueError):
                    raise DataError(
                        f"row {base + i}: column {name!r} holds {v!r}, not a number",
                        file=self.path,
                    ) from None
            raise

    # ---------------------------------------------------------- windows

    def windows(self, store: SeriesStore | None = None) -> WindowTable:
        """Every window of the file (see :func:`plan_windows`); none at all is an error."""
        store = store if store is not None else self.open()
        table = plan_windows(
            store.offsets,
            window=self.window,
            stride=self.step,
            horizon=self.horizon,
            time=store.time,
            max_gap=self.max_gap,
        )
        if len(table) == 0:
            longest = int(np.diff(store.offsets).max())
            what = f"window {self.window}" + (f" + horizon {self.horizon}" if self.horizon else "")
            gap = " (after cutting at gaps over max_gap)" if self.max_gap is not None else ""
            raise ConfigError(
                f"{what} is longer than every series{gap} in {self.path} (the longest has "
                f"{longest:,} rows): no window fits",
                path=("window",),
            )
        return table

    def lengths(self, store: SeriesStore | None = None) -> LengthTable:
        """The windows as a length table: ``length`` = window, ``key`` = series,
        ``offset`` = first row, ``ids`` = window number."""
        from laden.serde import config_of

        store = store if store is not None else self.open()
        table = self.windows(store)
        n = len(table)
        return LengthTable(
            length=np.full(n, self.window, dtype=np.int64),
            key=table.series,
            offset=table.start,
            ids=np.arange(n, dtype=np.int64),
            meta={
                "source": config_of(self),
                "dataset": os.path.abspath(self.path),
                "windows": window_summary(table, store),
            },
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """One sample per window, in file order (a batch at a time underneath)."""
        data = WindowDataset(self)
        n = len(data)
        for a in range(0, n, 256):
            batch = data.collate(np.arange(a, min(a + 256, n)))
            for i in range(batch["inputs"].shape[0]):
                sample: dict[str, Any] = {
                    "id": int(batch["sample_ids"][i]),
                    "key": int(batch["series"][i]),
                    "inputs": batch["inputs"][i],
                }
                if "targets" in batch:
                    sample["targets"] = batch["targets"][i]
                yield sample


def window_summary(table: WindowTable, store: SeriesStore) -> dict[str, Any]:
    """What ``laden analyze`` shows of windows: counts overall and per series."""
    shown = min(store.offsets.size - 1, 20)
    return {
        "count": len(table),
        "series": int(store.offsets.size - 1),
        "rows": store.rows,
        "window": table.window,
        "stride": table.stride,
        "horizon": table.horizon,
        "features": list(store.feature_names),
        "targets": list(store.target_names) if table.horizon else [],
        "series_without_windows": int((table.series_windows == 0).sum()),
        "per_series": {store.series_names[i]: int(table.series_windows[i]) for i in range(shown)},
    }


def _as_slice(idx: np.ndarray) -> slice | np.ndarray:
    """A slice when the columns are consecutive (a view, no gather), else the indices."""
    if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
        return slice(int(idx[0]), int(idx[0] + idx.size))
    return idx


def _lines_where(lines: np.ndarray) -> Callable[[int], tuple[int | None, str]]:
    return lambda row: (int(lines[row]), "bad row")


def _rows_where(base: int) -> Callable[[int], tuple[int | None, str]]:
    return lambda row: (None, f"row {base + row}")


def _loadtxt(text: str, **kwargs: Any) -> np.ndarray:
    """``np.loadtxt`` over a block of lines; blank lines are skipped without numpy's note
    about how it counts them (laden numbers lines itself)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Input line", category=UserWarning)
        parsed: np.ndarray = np.loadtxt(io.StringIO(text), comments=None, **kwargs)
    return parsed


def _is_datetime(text: str) -> bool:
    try:
        np.datetime64(text, "ns")
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- collation


class WindowDataset:
    """Collated window batches: ``inputs [B, window, F]``, ``targets [B, horizon, T]``.

    One fancy-index gather over a sliding-window view of the memory map per
    batch (two where the columns are not consecutive). Usable as a
    :class:`laden.torch.PlanLoader` dataset (``__getitems__``), picklable for
    worker processes (each reopens the memory map).

    :param source: a :class:`TimeseriesSource`.
    :param table: the window table (default: ``source.lengths()``); its
        ``offset`` column holds the window starts.
    :param backend: converts the host arrays (default: none, numpy arrays).
    """

    def __init__(
        self, source: TimeseriesSource, table: LengthTable | None = None, *, backend: Any = None
    ) -> None:
        self.source = source
        self._store: SeriesStore | None = None
        if table is None:
            table = source.lengths(self.store)
        if table.offset is None or table.key is None:
            raise ConfigError("a window table needs its offset (start) and key (series) columns")
        self.starts = table.offset
        self.series = table.key
        self.ids = np.asarray(table.ids if table.ids is not None else np.arange(len(table)))
        self.backend = backend
        self._dtype = np.dtype(source.dtype)
        self._views: tuple[Any, ...] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = state["_views"] = None  # memory maps are reopened in the worker
        return state

    @property
    def store(self) -> SeriesStore:
        if self._store is None:
            self._store = self.source.open()
        return self._store

    def __len__(self) -> int:
        return int(self.starts.size)

    def _make_views(self) -> tuple[Any, ...]:
        """The sliding-window views (no copy) and what collation needs, made once per process."""
        src, store = self.source, self.store
        inputs = _window_view(store.values, store.features, src.window)
        targets = _window_view(store.values, store.targets, src.horizon) if src.horizon else None
        norm: tuple[Any, ...] = ()
        if src.normalize and store.mean is not None and store.std is not None:
            dtype = np.dtype(src.dtype)
            norm = tuple(
                (store.mean[c].astype(dtype), store.std[c].astype(dtype))
                for c in (store.features, store.targets)
            )
        return inputs, targets, norm

    def collate(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Host arrays of the windows at ``indices`` (rows of the table)."""
        if self._views is None:
            self._views = self._make_views()
        (inputs, in_cols), targets, norm = self._views
        dtype = self._dtype
        pick = np.asarray(indices, dtype=np.int64)
        starts = self.starts[pick]
        out = {
            "inputs": _take(inputs, in_cols, starts, dtype),
            "series": self.series[pick],
            "start": starts,
            "sample_ids": self.ids[pick],
        }
        if targets is not None:
            view, cols = targets
            out["targets"] = _take(view, cols, starts + self.source.window, dtype)
        if norm:
            for key, (mean, std) in zip(("inputs", "targets"), norm, strict=True):
                if key in out:
                    out[key] -= mean
                    out[key] /= std
        return out

    def batches(
        self, indices: Iterable[Sequence[int] | np.ndarray], *, threads: int = 0, group: int = 8
    ) -> Iterator[dict[str, np.ndarray]]:
        """:meth:`collate` of every index batch in ``indices``, in order, pulled lazily.

        With ``threads``, that many threads collate ahead, ``group`` batches per
        task (a task's hand-off costs about as much as one batch's gather), at
        most ``2 * threads`` tasks in flight: ``2 * threads * group`` batches
        held. The gather releases the GIL, so the threads overlap the memory
        latency of random windows; the batches are the same, in the same order.
        """
        if threads < 0 or group < 1:
            raise ConfigError(f"threads must be >= 0 and group >= 1, got {threads} and {group}")
        if threads == 0:
            for pick in indices:
                yield self.collate(pick)
            return
        if self._views is None:  # opened once, here, not raced by the threads
            self._views = self._make_views()
        source = iter(indices)
        tasks = iter(lambda: list(itertools.islice(source, group)), [])
        with ThreadPoolExecutor(threads, thread_name_prefix="laden-windows") as pool:
            work = ordered_prefetch(
                lambda task: pool.submit(self._collate_all, task), tasks, ahead=2 * threads
            )
            for _, done in work:
                yield from done

    def _collate_all(self, picks: list[Sequence[int] | np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [self.collate(pick) for pick in picks]

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        arrays: dict[str, Any] = self.collate(list(indices))
        if self.backend is not None:
            arrays = dict(self.backend.convert(arrays))
        arrays["epoch"] = getattr(indices, "epoch", None)
        arrays["step"] = getattr(indices, "step", None)
        arrays["padding"] = bool(getattr(indices, "padding", False))
        return arrays

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([int(index)])


def _window_view(
    values: np.ndarray, cols: slice | np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """``[rows - length + 1, length, C]`` over ``values`` without a copy (rows overlap in
    memory), plus the columns still to pick when they are not consecutive.

    (A ``[rows - length + 1, length * C]`` view of whole windows, one row each,
    gathers 15% slower: numpy copies a long row less well than ``[length, C]``.)
    """
    base = values[:, cols] if isinstance(cols, slice) else values
    rows, width = base.shape
    view = np.lib.stride_tricks.as_strided(
        base,
        shape=(max(rows - length + 1, 0), length, width),
        strides=(base.strides[0], base.strides[0], base.strides[1]),
        writeable=False,
    )
    return view, None if isinstance(cols, slice) else cols


def _take(
    view: np.ndarray, cols: np.ndarray | None, starts: np.ndarray, dtype: np.dtype[Any]
) -> np.ndarray:
    """The windows at ``starts``: one gather (two where columns are picked)."""
    out: np.ndarray = view[starts]
    if cols is not None:
        out = out[:, :, cols]
    return out if out.dtype == dtype else out.astype(dtype)


def release(dataset: WindowDataset) -> None:
    """Let the kernel drop the memory map's pages this process touched (they stay in the
    page cache): keeps a long pass over a big file from growing the resident set."""
    store = dataset._store
    if store is None:
        return
    for array in (store.values, store.time):
        base = getattr(array, "base", None)
        while base is not None and not isinstance(base, mmap.mmap):
            base = getattr(base, "base", None)
        if isinstance(base, mmap.mmap) and hasattr(base, "madvise"):
            base.madvise(mmap.MADV_DONTNEED)


# ------------------------------------------------------------------ writing


def write_windows(
    plan: Any,
    dataset: WindowDataset,
    writer: Any,
    output: str | os.PathLike[str],
    *,
    resume: bool = False,
    force: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> dict[str, Any]:
    """Write every window batch of ``plan`` (one rank's, if a shard) to ``output``.

    The same batch file directory :func:`laden.files.write_batches` keeps: a
    manifest (:class:`~laden.files.manifest.RunManifest`) with each file's
    checksums, resumable after a crash or Ctrl-C with ``resume``.
    """
    from laden.digest import content_digest
    from laden.files.manifest import RunManifest, file_record
    from laden.files.write import FORMAT_VERSION as BATCH_FORMAT
    from laden.files.write import KIND as BATCHES
    from laden.files.write import file_name, is_batch_file
    from laden.serde import config_of

    manifest = RunManifest(
        output,
        kind=BATCHES,
        version=BATCH_FORMAT,
        identity={
            "fingerprint": plan.fingerprint,
            "rank": plan.rank,
            "world_size": plan.world_size,
            "writer": config_of(writer),
            "windows": config_of(dataset.source),
        },
        owns=is_batch_file,
    )
    written = 0
    with manifest.locked():
        kept = manifest.open(resume=resume, force=force)
        with manifest.guard():
            done = 0
            for epoch, step, spec in plan.iter_from():
                name = file_name(epoch, step, plan.rank, writer.suffix)
                if name in kept:
                    continue
                arrays = dataset.collate(spec.indices)
                meta = {
                    "epoch": epoch,
                    "step": step,
                    "rank": plan.rank,
                    "padding": spec.padding,
                    "fingerprint": plan.fingerprint,
                }
                path = manifest.directory / name
                with atomic_open(path) as f:
                    writer.write(f, arrays, meta)
                manifest.add(
                    name,
                    {
                        "file": name,
                        "epoch": epoch,
                        "step": step,
                        "rank": plan.rank,
                        "padding": spec.padding,
                        "status": "ok",
                        **file_record(path),
                        "content": content_digest(arrays),
                    },
                )
                written += 1
                done += 1
                if progress is not None:
                    progress(done, plan.total_steps)
        manifest.finish(plan.total_steps)
    return {
        "written": written,
        "kept": len(kept),
        "total": plan.total_steps,
        "output": str(manifest.directory),
    }


@hookimpl
def laden_register_sources(registry: Registry) -> None:
    registry.add(TimeseriesSource)

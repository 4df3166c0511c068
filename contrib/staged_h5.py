"""``staged_h5``: staged samples (CompressedAD) in one HDF5 file (extra ``h5``).

A staged sample is a list of stages, each holding arrays with one row per
step (``states [T, D]``, ``actions [T]``, ``rewards [T]``, ...). Its depth is
its number of stages minus one: the compressed stages before the current
one, so a depth-0 sample has one stage. A sample with no stage is an error.

Two layouts, both read:

- ``csr`` (what :func:`write_staged_h5` writes by default): one dataset per
  field holding every step of every stage (``fields/<name>``), plus the index
  ``stage_offsets [N + 1]`` (the stages of each sample) and ``stage_steps
  [S]`` (the steps of each stage). Measuring reads only the index; a batch is
  one gather per field (the datasets are contiguous, so they are
  memory-mapped).
- ``groups``: ``samples/<i>/<s>/<name>``, one group per sample and stage;
  measuring reads only the datasets' shapes.

The length table gets ``key`` = depth, ``length`` = total steps over all
stages, ``stage_length`` = the steps of each stage (``[N, most stages]``, 0
past a sample's last) and ``offset`` = the sample's index;
:meth:`StagedH5Source.stage_steps` gives the steps of every stage as CSR.
:class:`StagedSamples` reads and collates a batch
(:func:`laden.collate.collate_staged`), the samples of a
:class:`laden.torch.PlanDataset`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.collate.staged import StagedBatch, collate_staged
from laden.digest import file_digest
from laden.errors import DataError, MissingDependencyError
from laden.hookspecs import hookimpl
from laden.io import atomic_open
from laden.records import ChunkMeasure, LengthTable, Ragged, csr_take, offsets_from_sizes
from laden.registry import Registry
from laden.validators import one_of

__all__ = ["FORMAT", "StagedH5Source", "StagedSamples", "write_staged_h5"]

#: The ``laden_format`` attribute of a staged file's root.
FORMAT = "laden.staged"
FORMAT_VERSION = 1


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise MissingDependencyError("source", "staged_h5", ["h5py"], "h5") from exc
    return h5py


def _check_sample(
    path: str, index: int, sample: Mapping[str, Any], shapes: dict[str, tuple[int, ...]]
) -> list[dict[str, np.ndarray]]:
    """The stages of one converter input, checked: DataErrors name file, sample and key."""
    names = [k for k in sample if k not in ("key", "id")]
    if not names:
        raise DataError(f"sample {index} has no fields", file=path)
    counts = {name: len(sample[name]) for name in names}
    if len(set(counts.values())) != 1:
        raise DataError(f"sample {index}: fields have different stage counts {counts}", file=path)
    depth = counts[names[0]]
    if depth == 0:
        raise DataError(f"sample {index} has zero stages (a sample needs at least one)", file=path)
    stages = []
    for s in range(depth):
        stage: dict[str, np.ndarray] = {}
        for name in names:
            array = np.asarray(sample[name][s])
            if array.dtype == object or array.dtype.kind not in "biuf":
                raise DataError(
                    f"sample {index} stage {s} key {name!r}: not a numeric array "
                    f"(dtype {array.dtype})",
                    file=path,
                )
            want = shapes.setdefault(name, array.shape[1:])
            if array.ndim != len(want) + 1 or array.shape[1:] != want:
                raise DataError(
                    f"sample {index} stage {s} key {name!r}: shape {array.shape} has the wrong "
                    f"rank or features; every stage holds [T, {', '.join(map(str, want))}]"
                    if want
                    else f"sample {index} stage {s} key {name!r}: shape {array.shape}, "
                    "expected [T] (rank 1) as in the first sample",
                    file=path,
                )
            stage[name] = array
        steps = {name: a.shape[0] for name, a in stage.items()}
        if len(set(steps.values())) != 1:
            raise DataError(
                f"sample {index} stage {s}: fields have different steps {steps}", file=path
            )
        stages.append(stage)
    return stages


def write_staged_h5(
    path: str | os.PathLike[str],
    samples: Sequence[Mapping[str, Sequence[Any]]],
    *,
    layout: str = "csr",
) -> str:
    """Write staged samples, each ``{field: [one array per stage]}``, to an HDF5 file.

    Every stage of a sample has the same steps in every field; a field has
    the same rank and trailing shape everywhere. The file is written under a
    temporary name and renamed. Returns the path.

    :param layout: ``csr`` (default; fast to measure and read) or ``groups``.
    """
    h5py = _h5py()
    if layout not in ("csr", "groups"):
        raise DataError(f"layout must be 'csr' or 'groups', got {layout!r}", file=str(path))
    target = str(path)
    shapes: dict[str, tuple[int, ...]] = {}
    checked = [_check_sample(target, i, s, shapes) for i, s in enumerate(samples)]
    dtypes: dict[str, np.dtype[Any]] = {}
    for stages in checked:
        for stage in stages:
            for name, array in stage.items():
                dtypes[name] = np.result_type(dtypes.get(name, array.dtype), array.dtype)
    with atomic_open(target) as f, h5py.File(f, "w", track_order=True) as h5:
        h5.attrs["laden_format"] = FORMAT
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.attrs["layout"] = layout
        if layout == "csr":
            stage_counts = [len(stages) for stages in checked]
            steps = [st[next(iter(st))].shape[0] for stages in checked for st in stages]
            h5.create_dataset("stage_offsets", data=offsets_from_sizes(stage_counts))
            h5.create_dataset("stage_steps", data=np.asarray(steps, dtype=np.int64))
            group = h5.create_group("fields")
            for name, shape in shapes.items():
                parts = [st[name] for stages in checked for st in stages]
                data = (
                    np.concatenate(parts).astype(dtypes[name], copy=False)
                    if parts
                    else np.zeros((0, *shape), dtype=dtypes.get(name, np.float32))
                )
                group.create_dataset(name, data=data, track_times=False)
        else:
            group = h5.create_group("samples")
            group.attrs["count"] = len(checked)
            for i, stages in enumerate(checked):
                for s, stage in enumerate(stages):
                    for name, array in stage.items():
                        group.create_dataset(
                            f"{i}/{s}/{name}", data=array.astype(dtypes[name], copy=False)
                        )
    return target


@attrs.frozen(kw_only=True, eq=False)
class _Index:
    """What measuring found: the stage index of every sample, and the fields' shapes."""

    layout: str
    stage_offsets: np.ndarray
    stage_steps: np.ndarray
    fields: Mapping[str, tuple[tuple[int, ...], str]]  # name -> (trailing shape, dtype)


def _read_index(path: str) -> _Index:
    """Read the stage index (never the arrays) and check it: DataErrors name file and key."""
    h5py = _h5py()
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"cannot open as HDF5 ({exc})", file=path) from exc
    with h5:
        if h5.attrs.get("laden_format") != FORMAT:
            raise DataError(
                f"not a staged sample file (no laden_format {FORMAT!r}; "
                "write one with laden.contrib.staged_h5.write_staged_h5)",
                file=path,
            )
        version = int(h5.attrs.get("format_version", 0))
        if not 1 <= version <= FORMAT_VERSION:
            raise DataError(f"format_version {version} is not one this laden reads", file=path)
        layout = str(h5.attrs.get("layout", "csr"))
        if layout == "csr":
            return _read_csr_index(path, h5)
        if layout == "groups":
            return _read_group_index(path, h5)
        raise DataError(f"unknown layout {layout!r}", file=path)


def _read_csr_index(path: str, h5: Any) -> _Index:
    for key in ("stage_offsets", "stage_steps", "fields"):
        if key not in h5:
            raise DataError(f"key {key!r} is missing", file=path)
    offsets = np.asarray(h5["stage_offsets"][()], dtype=np.int64)
    steps = np.asarray(h5["stage_steps"][()], dtype=np.int64)
    if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or offsets[-1] != steps.size:
        raise DataError(
            f"key 'stage_offsets' must run from 0 to {steps.size} (one per stage)", file=path
        )
    counts = np.diff(offsets)
    if (counts < 0).any() or (steps < 0).any():
        raise DataError("key 'stage_offsets' or 'stage_steps' goes backwards", file=path)
    if (counts == 0).any():
        first = int(np.flatnonzero(counts == 0)[0])
        raise DataError(f"sample {first} has zero stages (key 'stage_offsets')", file=path)
    total = int(steps.sum())
    fields: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, ds in h5["fields"].items():
        if ds.ndim < 1 or ds.shape[0] != total:
            raise DataError(
                f"key 'fields/{name}' has shape {ds.shape}; the stages hold {total} steps, "
                "so it must be [total steps, ...]",
                file=path,
            )
        fields[name] = (tuple(ds.shape[1:]), ds.dtype.str)
    return _Index(layout="csr", stage_offsets=offsets, stage_steps=steps, fields=fields)


def _read_group_index(path: str, h5: Any) -> _Index:
    if "samples" not in h5:
        raise DataError("key 'samples' is missing", file=path)
    group = h5["samples"]
    n = int(group.attrs.get("count", len(group)))
    counts = np.zeros(n, dtype=np.int64)
    steps: list[int] = []
    fields: dict[str, tuple[tuple[int, ...], str]] = {}
    for i in range(n):  # shapes only: no array is read
        key = str(i)
        if key not in group or not len(group[key]):
            raise DataError(f"sample {i} has zero stages (key 'samples/{i}')", file=path)
        stages = group[key]
        counts[i] = len(stages)
        for s in range(len(stages)):
            if str(s) not in stages:
                raise DataError(f"sample {i}: key 'samples/{i}/{s}' is missing", file=path)
            stage = stages[str(s)]
            length = None
            for name, ds in stage.items():
                where = f"samples/{i}/{s}/{name}"
                shape = tuple(ds.shape)
                want = fields.setdefault(name, (shape[1:], ds.dtype.str))[0]
                if len(shape) != len(want) + 1 or shape[1:] != want:
                    raise DataError(
                        f"sample {i} key {where!r}: shape {shape} has the wrong rank or "
                        f"features; expected [T{''.join(f', {d}' for d in want)}]",
                        file=path,
                    )
                if length is not None and shape[0] != length:
                    raise DataError(
                        f"sample {i} key {where!r}: {shape[0]} steps, its stage has {length}",
                        file=path,
                    )
                length = shape[0]
            steps.append(int(length or 0))
    return _Index(
        layout="groups",
        stage_offsets=offsets_from_sizes(counts),
        stage_steps=np.asarray(steps, dtype=np.int64),
        fields=fields,
    )


def _stage_matrix(steps: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``[samples, most stages]`` steps per stage, 0 past a sample's last stage."""
    counts = np.diff(offsets)
    width = int(counts.max(initial=1))
    out = np.zeros((counts.size, width), dtype=np.int64)
    rank = np.arange(steps.size, dtype=np.int64) - np.repeat(offsets[:-1], counts)
    out[np.repeat(np.arange(counts.size), counts), rank] = steps
    return out


@attrs.frozen(kw_only=True)
class StagedH5Source:
    """Staged samples in an HDF5 file written by :func:`write_staged_h5` (either layout).

    An indexed source: :func:`laden.lengths.build_lengths` measures it (any
    tokenizer; it is not used) into a table with ``key`` = depth and
    ``length`` = steps over all stages, reading only the index. Samples come
    back as ``{field: [stage arrays], "key": depth, "id": index}``.

    :param path: the ``.h5`` file.
    :param on_error: only ``error``: a malformed file cannot be skipped row by row.
    """

    name: ClassVar[str] = "staged_h5"
    requires: ClassVar[tuple[str, ...]] = ("h5py",)
    extra: ClassVar[str] = "h5"

    path: str
    on_error: str = attrs.field(default="error", validator=one_of("error"))

    def index(self) -> _Index:
        return _read_index(self.path)

    def stage_steps(self) -> Ragged:
        """The steps of every stage, one row per sample (CSR)."""
        index = self.index()
        return Ragged(values=index.stage_steps, offsets=index.stage_offsets)

    def length_table(self) -> LengthTable:
        """``key`` = depth, ``length`` = steps over all stages, ``offset`` = sample index.

        Made from the index alone (no cache); use
        :func:`laden.lengths.build_lengths` for a saved, fingerprinted one.
        """
        measure = self.measure(0, 1, None)
        return LengthTable(
            length=measure.length,
            key=measure.key,
            offset=measure.offset,
            stage_length=measure.stage_length,
            meta={"dataset": os.path.abspath(self.path), "source": {"name": self.name}},
        )

    def fingerprint(self, *, progress: Callable[[int], object] | None = None) -> str:
        return file_digest(self.path, progress=progress)

    def chunks(self) -> list[tuple[int, int]]:
        """One range: measuring reads the index at once (it is small)."""
        return [(0, max(os.path.getsize(self.path), 1))]

    def measure(self, start: int, end: int, tokenizer: Any) -> ChunkMeasure:
        """Every sample when the range starts at 0 (the only chunk); else none."""
        if start != 0:
            n = 0
            length = key = np.zeros(0, dtype=np.int64)
            stages = np.zeros((0, 1), dtype=np.int64)
        else:
            index = self.index()
            counts = np.diff(index.stage_offsets)
            n = counts.size
            totals = offsets_from_sizes(index.stage_steps)[index.stage_offsets]
            length, key = np.diff(totals), counts - 1
            stages = _stage_matrix(index.stage_steps, index.stage_offsets)
        return ChunkMeasure(
            start=start,
            lines=n,
            length=length,
            offset=np.arange(n, dtype=np.int64),
            line=np.arange(n, dtype=np.int64),
            key=key,
            ids=None,
            has_id=np.zeros(n, dtype=bool),
            errors=[],
            blank=0,
            stage_length=stages,
        )

    def read_at(self, offsets: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """The samples at these indices, in this order."""
        return StagedSamples(source=self).read_samples(np.asarray(offsets, dtype=np.int64))

    def field_name(self, column: str) -> str:
        return column

    def __iter__(self) -> Iterator[dict[str, Any]]:
        samples = StagedSamples(source=self)
        n = len(samples)
        for lo in range(0, n, 1024):
            yield from samples.read_samples(np.arange(lo, min(lo + 1024, n)))


class StagedSamples:
    """Batches of a staged file, read and collated: the ``samples`` of a ``PlanDataset``.

    The index is read once per process; a ``csr`` file's contiguous datasets
    are memory-mapped, so a batch is one vectorized gather per field. It
    pickles as its path (worker processes reopen the file).

    :param source: the :class:`StagedH5Source`.
    :param fields: the fields to read (default: all).
    """

    def __init__(self, source: StagedH5Source, fields: Sequence[str] | None = None) -> None:
        self.source = source
        self.fields = tuple(fields) if fields is not None else None
        self._index: _Index | None = None
        self._maps: dict[str, np.ndarray] | None = None
        self._step_offsets: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source, "fields": self.fields}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["source"], state["fields"])  # type: ignore[misc]

    @property
    def index(self) -> _Index:
        if self._index is None:
            self._index = self.source.index()
            names = self.fields if self.fields is not None else tuple(self._index.fields)
            unknown = [n for n in names if n not in self._index.fields]
            if unknown:
                raise DataError(
                    f"no field {unknown[0]!r}; the file has {sorted(self._index.fields)}",
                    file=self.source.path,
                )
            self.fields = names
            self._step_offsets = offsets_from_sizes(self._index.stage_steps)
        return self._index

    def __len__(self) -> int:
        return int(self.index.stage_offsets.size - 1)

    def _memmaps(self) -> dict[str, np.ndarray] | None:
        """The csr datasets memory-mapped, or None when one is chunked or compressed."""
        if self._maps is None:
            h5py = _h5py()
            maps: dict[str, np.ndarray] = {}
            with h5py.File(self.source.path, "r") as h5:
                for name in self.fields or ():
                    ds = h5["fields"][name]
                    offset = ds.id.get_offset()
                    if ds.chunks is not None or ds.compression is not None or offset is None:
                        if ds.size:
                            return None
                        maps[name] = np.zeros(ds.shape, dtype=ds.dtype)
                        continue
                    # A plain ndarray view: indexing skips np.memmap's Python layer.
                    maps[name] = np.memmap(
                        self.source.path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape
                    ).view(np.ndarray)
            self._maps = maps
        return self._maps

    def fetch_batch(self, ids: Any) -> StagedBatch:
        """The samples ``ids`` (one depth), columnar, in the order given."""
        index = self.index
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = len(self)
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n):
            raise IndexError(f"sample out of range for {n} samples")
        counts = np.diff(index.stage_offsets)[ids]
        if ids.size and (counts != counts[0]).any():
            other = int(np.flatnonzero(counts != counts[0])[0])
            raise DataError(
                f"a batch mixes depths (sample {int(ids[0])} has {int(counts[0])} stages, "
                f"sample {int(ids[other])} {int(counts[other])}); plan it with depth_buckets",
                file=self.source.path,
            )
        if index.layout == "groups":
            return StagedBatch.from_samples(self.read_samples(ids), sample_ids=ids)
        stages, _ = csr_take(index.stage_offsets, ids)
        assert self._step_offsets is not None
        rows, _ = csr_take(self._step_offsets, stages)
        steps = index.stage_steps[stages].reshape(ids.size, int(counts[0]) if ids.size else 0)
        maps = self._memmaps()
        fields: dict[str, np.ndarray] = {}
        if maps is not None:  # collation gathers from the maps: one copy in all
            fields = {name: maps[name] for name in self.fields or ()}
            return StagedBatch(steps=steps, fields=fields, sample_ids=ids, rows=rows)
        else:
            h5py = _h5py()
            with h5py.File(self.source.path, "r") as h5:
                for name in self.fields or ():
                    ds = h5["fields"][name]
                    starts = self._step_offsets[stages]
                    ends = self._step_offsets[stages + 1]
                    parts = [ds[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
                    shape, dtype = index.fields[name]
                    fields[name] = (
                        np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=dtype)
                    )
        return StagedBatch(steps=steps, fields=fields, sample_ids=ids)

    def read_samples(self, ids: np.ndarray) -> list[dict[str, Any]]:
        """Samples as ``{field: [stage arrays], "key": depth, "id": index}`` (any depths)."""
        index = self.index
        out: list[dict[str, Any]] = []
        if index.layout == "groups":
            h5py = _h5py()
            with h5py.File(self.source.path, "r") as h5:
                group = h5["samples"]
                for i in np.asarray(ids).tolist():
                    stages = group[str(i)]
                    sample: dict[str, Any] = {
                        name: [stages[str(s)][name][()] for s in range(len(stages))]
                        for name in self.fields or ()
                    }
                    sample.update(key=len(stages) - 1, id=i)
                    out.append(sample)
            return out
        for i in np.asarray(ids).tolist():
            batch = self.fetch_batch([i])
            cut = np.cumsum(batch.steps[0])[:-1]
            sample = {
                name: np.split(np.asarray(v if batch.rows is None else v[batch.rows]), cut)
                for name, v in batch.fields.items()
            }
            sample.update(key=batch.num_stages - 1, id=i)
            out.append(sample)
        return out

    def collate_batch(self, ids: Any, backend: Any = None) -> Mapping[str, Any]:
        """Read and collate a batch (:func:`~laden.collate.collate_staged`), then
        ``backend.convert`` it (host numpy arrays without a backend)."""
        arrays = collate_staged(self.fetch_batch(ids))
        return arrays if backend is None else backend.convert(arrays)


@hookimpl
def laden_register_sources(registry: Registry) -> None:
    registry.add(StagedH5Source)

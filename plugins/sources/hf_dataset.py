"""``hf_dataset``: a Hugging Face dataset on disk (``save_to_disk``) or Parquet/Arrow files.

Lengths come from the Arrow offsets of the ``input_ids`` column (one
``np.diff`` per chunk: 1M rows in well under a second); rows are read back at
random by row index (the length table's ``offset`` column holds it), so
:class:`laden.collate.SourceSamples` and a plan's batches read only their rows.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.digest import digest, file_digest
from laden.errors import DataError
from laden.hookspecs import hookimpl
from laden.records import LengthTable
from laden.registry import Registry
from laden.validators import optional, positive

__all__ = ["HFDatasetSource", "data_files"]

#: Rows converted to Python at a time while iterating.
ITER_ROWS = 1024


def data_files(path: str, split: str | None = None) -> tuple[list[str], str]:
    """The data files of ``path`` in row order, and their format (``arrow`` or ``parquet``).

    ``path`` is a ``save_to_disk`` folder (its ``state.json`` lists the files;
    a ``DatasetDict`` needs ``split``), a folder of ``.parquet`` or ``.arrow``
    files (sorted by name), or one such file.
    """
    if os.path.isfile(path):
        files = [path]
    elif os.path.isdir(path):
        if os.path.exists(os.path.join(path, "dataset_dict.json")):
            with open(os.path.join(path, "dataset_dict.json")) as f:
                splits = json.load(f).get("splits", [])
            if split not in splits:
                raise DataError(
                    f"this DatasetDict has splits {splits}; set the source's split to one",
                    file=path,
                )
            path = os.path.join(path, str(split))
        state = os.path.join(path, "state.json")
        if os.path.exists(state):
            with open(state) as f:
                names = [d["filename"] for d in json.load(f)["_data_files"]]
            return [os.path.join(path, n) for n in names], "arrow"
        files = sorted(glob.glob(os.path.join(path, "*.parquet"))) or sorted(
            glob.glob(os.path.join(path, "*.arrow"))
        )
        if not files:
            raise DataError("no state.json, .parquet or .arrow files in this folder", file=path)
    else:
        raise DataError("no such file or folder", file=path)
    kind = "parquet" if files[0].endswith(".parquet") else "arrow"
    return files, kind


def _read_arrow(name: str) -> Any:
    import pyarrow as pa

    source = pa.memory_map(name)
    try:  # datasets writes the stream format; plain Arrow files are the file format
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(name)).read_all()


@functools.lru_cache(maxsize=4)
def _open(path: str, split: str | None) -> Any:
    """The whole dataset as one Arrow table (memory-mapped for Arrow files)."""
    import pyarrow as pa

    files, kind = data_files(path, split)
    tables = []
    for name in files:
        if kind == "parquet":
            import pyarrow.parquet as pq

            tables.append(pq.read_table(name, memory_map=True))
        else:
            tables.append(_read_arrow(name))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


@attrs.frozen(kw_only=True)
class HFDatasetSource:
    """A Hugging Face dataset saved to disk, or a folder of Parquet/Arrow files.

    Samples have ``input_ids`` (the ``ids_field`` column) and, where the data
    has them, ``loss_mask``, ``id`` and ``key``; other columns pass through.
    The length table (:meth:`lengths`) records each row's index as its
    ``offset``, which :meth:`read_at` takes.

    :param path: a ``save_to_disk`` folder, a folder of ``.parquet`` or
        ``.arrow`` files, or one such file.
    :param split: the split of a saved ``DatasetDict``.
    :param ids_field: the column of token ids (a list column).
    :param loss_mask_field: optional column of 0/1 per token.
    :param id_field: optional sample id column; ``key_field``: optional bucket key.
    :param vocab_size: when given, every token id must be below it.
    """

    name: ClassVar[str] = "hf_dataset"
    requires: ClassVar[tuple[str, ...]] = ("pyarrow",)
    extra: ClassVar[str] = "datasets"

    path: str
    split: str | None = None
    ids_field: str = "input_ids"
    loss_mask_field: str = "loss_mask"
    id_field: str = "id"
    key_field: str = "key"
    vocab_size: int | None = attrs.field(default=None, validator=optional(positive))

    def table(self) -> Any:
        """The dataset's Arrow table (cached per process; memory-mapped for Arrow files)."""
        table = _open(os.path.abspath(self.path), self.split)
        if self.ids_field not in table.column_names:
            raise DataError(
                f"no column {self.ids_field!r} (columns: {', '.join(table.column_names)}); "
                "set the source's ids_field",
                file=self.path,
            )
        return table

    def __len__(self) -> int:
        return int(self.table().num_rows)

    def _renames(self) -> dict[str, str]:
        names = {
            self.ids_field: "input_ids",
            self.loss_mask_field: "loss_mask",
            self.id_field: "id",
            self.key_field: "key",
        }
        return {theirs: ours for theirs, ours in names.items() if theirs != ours}

    def _rows(self, table: Any) -> list[dict[str, Any]]:
        renames = self._renames()
        dropped = {ours for ours in renames.values() if ours in table.column_names}
        columns = {
            renames.get(name, name): table.column(name).to_pylist()
            for name in table.column_names
            if name not in dropped
        }
        n = table.num_rows
        return [{k: v[i] for k, v in columns.items()} for i in range(n)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every row in order, as a sample in laden's field names."""
        table = self.table()
        for start in range(0, table.num_rows, ITER_ROWS):
            yield from self._rows(table.slice(start, ITER_ROWS))

    def read_at(self, offsets: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """The rows at these indices (a length table's ``offset``), in that order."""
        index = np.asarray(offsets, dtype=np.int64)
        n = len(self)
        if index.size and (index.min() < 0 or index.max() >= n):
            bad = int(index[(index < 0) | (index >= n)][0])
            raise IndexError(f"row {bad} out of range for {n} rows of {self.path}")
        return self._rows(self.table().take(index))

    def field_name(self, column: str) -> str:
        """What the data calls laden's field ``column``."""
        return {v: k for k, v in self._renames().items()}.get(column, column)

    def fingerprint(self) -> str:
        """A digest of the data files' bytes, in order."""
        files, _ = data_files(self.path, self.split)
        return digest(*(file_digest(f) for f in files))

    def lengths(self, *, fingerprint: bool = False) -> LengthTable:
        """The length table: tokens per row from the ``input_ids`` offsets, ``offset`` = row index.

        Token ids are checked (non-negative, below ``vocab_size`` when given)
        with whole-column reductions; a bad row is a DataError naming it.
        """
        import pyarrow.compute as pc

        from laden.hf import arrow_lengths

        table = self.table()
        column = table.column(self.ids_field)
        try:
            length = arrow_lengths(column, name=self.ids_field)
        except (DataError, ValueError) as exc:
            raise DataError(str(exc), file=self.path) from None
        self._check_ids(column, length, pc)
        key = None
        if self.key_field in table.column_names:
            key = table.column(self.key_field).to_numpy().astype(np.int64)
        meta: dict[str, Any] = {"source": self.name, "path": os.path.abspath(self.path)}
        if fingerprint:
            meta["dataset_digest"] = self.fingerprint()
        return LengthTable(
            length=length, key=key, offset=np.arange(length.size, dtype=np.int64), meta=meta
        )

    def _check_ids(self, column: Any, length: np.ndarray, pc: Any) -> None:
        flat = pc.list_flatten(column)
        if len(flat) == 0:
            return
        low, high = pc.min_max(flat).values()
        limit = self.vocab_size if self.vocab_size is not None else 1 << 31
        if low.as_py() >= 0 and high.as_py() < limit:
            return
        values = flat.to_numpy() if hasattr(flat, "to_numpy") else np.asarray(flat)
        bad = int(np.flatnonzero((values < 0) | (values >= limit))[0])
        row = int(np.searchsorted(np.cumsum(length), bad, side="right"))
        what = f"below vocab_size {limit}" if self.vocab_size is not None else "in int32"
        raise DataError(
            f"row {row}: {self.ids_field!r} holds token id {int(values[bad])}, not >= 0 and {what}",
            file=self.path,
        )


@hookimpl
def laden_register_sources(registry: Registry) -> None:
    registry.add(HFDatasetSource)

"""Sweep point files: many points per file, through the writer plugins where they fit.

The :class:`~laden.kinds.Writer` protocol writes flat columns plus a batch's
metadata, which is how ``npz`` and ``pt`` store points: one column per point
and field, named ``<point id>/<field>`` (``np.load(f)["gaussian_a10.0_s0.3_rep0/stimulus"]``,
``torch.load(f, weights_only=True)[...]``); parameters and seeds are in
``index.json``. ``h5`` follows the seed's layout, which the protocol cannot
express (attributes per point), so this layer writes it with h5py directly::

    part-00000.h5
    ├── metadata/  attrs: name, description, version, num_points, sweep (JSON)
    └── points/
        └── gaussian_a10.0_s0.3_rep0/   attrs: every parameter, seed, repetition,
            └── stimulus [32, 32]              block, generator

Every file is byte-identical when written again from the same points.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from laden.io import atomic_open

if TYPE_CHECKING:
    from laden.kernel import Kernel

__all__ = ["Entry", "SweepFiles", "part_name"]

#: One point in a file: its record (id, parameters, seed, ...) and its arrays.
Entry = tuple[Mapping[str, Any], Mapping[str, np.ndarray]]

SUFFIXES = {"npz": ".npz", "pt": ".pt", "h5": ".h5"}


def part_name(chunk: int, writer: str) -> str:
    """The name of chunk ``chunk``'s file (``part-00000.npz``)."""
    return f"part-{chunk:05d}{SUFFIXES[writer]}"


def _attr(value: Any) -> Any:
    """A parameter value as an HDF5 attribute (lists become arrays)."""
    if isinstance(value, list):
        try:
            return np.asarray(value)
        except ValueError:
            return json.dumps(value)
    return value


class SweepFiles:
    """Writes and reads the point files of one writer (``npz``, ``pt`` or ``h5``).

    :param writer: the writer's name.
    :param kernel: where the writer plugin comes from.
    :param metadata: the sweep's metadata (h5 files carry it as attributes).
    :param compress: compress the arrays (npz deflate, h5 gzip).
    """

    def __init__(
        self,
        writer: str,
        *,
        kernel: Kernel,
        metadata: Mapping[str, Any] | None = None,
        compress: bool = False,
        sweep: Mapping[str, Any] | None = None,
    ) -> None:
        self.writer = writer
        self.suffix = SUFFIXES[writer]
        self.metadata = dict(metadata or {})
        self.sweep = dict(sweep or {})
        self.compress = compress
        settings: dict[str, Any] = {"name": writer}
        if writer == "npz":
            settings["compress"] = compress
        self.plugin = kernel.create("writer", settings, path=("output", "writer"))

    def write(self, path: str | os.PathLike[str], entries: Sequence[Entry]) -> None:
        """Write ``entries`` (in order) to ``path``, atomically."""
        if self.writer == "h5":
            with atomic_open(path) as f:
                self._write_h5(f, entries)
            return
        columns: dict[str, np.ndarray] = {}
        for record, arrays in entries:
            for field, value in arrays.items():
                array = np.asarray(value)
                if not array.flags.writeable or not array.flags.c_contiguous:
                    array = np.array(array, order="C")  # torch.from_numpy wants its own copy
                columns[f"{record['id']}/{field}"] = array
        with atomic_open(path) as f:
            self.plugin.write(f, columns, {})

    def _write_h5(self, file: Any, entries: Sequence[Entry]) -> None:
        import h5py

        options: dict[str, Any] = (
            {"compression": "gzip", "compression_opts": 4} if self.compress else {}
        )
        with h5py.File(file, "w", track_order=True) as f:
            meta = f.create_group("metadata")
            for key, value in self.metadata.items():
                meta.attrs[key] = _attr(value)
            meta.attrs["num_points"] = len(entries)
            meta.attrs["sweep"] = json.dumps(self.sweep, sort_keys=True)
            points = f.create_group("points", track_order=True)
            for record, arrays in entries:
                group = points.create_group(str(record["id"]))
                for key, value in record["parameters"].items():
                    group.attrs[key] = _attr(value)
                group.attrs["seed"] = np.uint64(record["seed"])
                group.attrs["repetition"] = int(record["repetition"])
                group.attrs["block"] = str(record["block"])
                group.attrs["generator"] = str(record["generator"])
                for field, value in arrays.items():
                    array = np.asarray(value)
                    chunked = options if array.ndim and array.size else {}
                    group.create_dataset(field, data=array, track_times=False, **chunked)

    def read(self, path: str | os.PathLike[str]) -> dict[str, dict[str, np.ndarray]]:
        """Every point of a file: point id -> field -> array."""
        out: dict[str, dict[str, np.ndarray]] = {}
        if self.writer == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                for pid, group in f["points"].items():
                    out[pid] = {k: group[k][()] for k in group}
            return out
        for key, value in self.plugin.read(str(path)).items():
            pid, _, field = key.rpartition("/")
            out.setdefault(pid, {})[field] = value
        return out


def file_names(directory: Path, writer: str) -> list[Path]:
    """The part files of ``writer`` in ``directory``."""
    return sorted(directory.glob(f"part-*{SUFFIXES[writer]}"))

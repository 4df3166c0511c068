"""``SweepDataset``: a sweep's output directory as a map-style (torch-compatible) dataset.

::

    dataset = laden.SweepDataset("batch_results/my_dataset", sigma=[0.5, 1.0])
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True)

Only ``index.json`` is read up front; ``dataset[i]`` reads one point's arrays
from its file (an npz member, an h5 group, a memory-mapped ``.pt``), nothing
else. No pickle anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from laden.errors import DataError
from laden.io import read_json
from laden.sweep.files import SUFFIXES

__all__ = ["SweepDataset"]


class _Reader:
    """Reads one point from a part file, without the kernel (readers are plain libraries)."""

    def __init__(self, writer: str) -> None:
        self.writer = writer

    def read_point(self, path: Path, point: str) -> dict[str, np.ndarray]:
        if self.writer == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                group = f["points"][point]
                return {k: group[k][()] for k in group}
        prefix = f"{point}/"
        if self.writer == "npz":
            with np.load(path, allow_pickle=False) as data:
                return {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}
        import torch

        data = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
        return {k[len(prefix) :]: v.numpy().copy() for k, v in data.items() if k.startswith(prefix)}


def _matches(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, list | tuple | set | frozenset):
        return any(_matches(value, w) for w in wanted)
    if callable(wanted):
        return bool(wanted(value))
    return bool(value == wanted)


class SweepDataset:
    """The points of a sweep run that are ``ok``, in sweep order, filtered by value.

    ``dataset[i]`` is a dict of the point's arrays (plus ``parameters``, a dict
    of its parameter values, when ``parameters=True``).

    :param directory: a ``laden sweep`` output directory.
    :param parameters: add each point's parameters to its item.
    :param where: keep the points whose parameter (or ``block``, ``generator``,
        ``repetition``) has this value, one of these values (a list) or passes
        this test (a callable): ``SweepDataset(d, sigma=[0.5, 1.0], block="gaussian")``.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, parameters: bool = False, **where: Any
    ) -> None:
        self.directory = Path(directory)
        path = self.directory / "index.json"
        index = read_json(path)
        if not isinstance(index, Mapping) or not isinstance(index.get("points"), Mapping):
            raise DataError("not a laden sweep index (no 'points')", file=str(path))
        writer = index.get("writer")
        if writer not in SUFFIXES:
            raise DataError(f"unknown writer {writer!r}", file=str(path))
        self.index = index
        self.with_parameters = parameters
        self._reader = _Reader(str(writer))
        order = index.get("order") or list(index["points"])
        self.ids = [pid for pid in order if index["points"][pid].get("status") == "ok"]
        if where:
            self.ids = self._filter(self.ids, where)

    def _filter(self, ids: Iterable[str], where: Mapping[str, Any]) -> list[str]:
        out = []
        for pid in ids:
            entry = self.index["points"][pid]
            fields = {
                **entry["parameters"],
                **{k: entry[k] for k in ("block", "generator", "repetition")},
            }
            if all(k in fields and _matches(fields[k], v) for k, v in where.items()):
                out.append(pid)
        return out

    def filter(self, **where: Any) -> SweepDataset:
        """A copy holding only the points that match ``where`` (see the class)."""
        copy = object.__new__(SweepDataset)
        copy.__dict__.update(self.__dict__)
        copy.ids = self._filter(self.ids, where)
        return copy

    def __len__(self) -> int:
        return len(self.ids)

    def point(self, i: int) -> dict[str, Any]:
        """Point ``i``'s index entry (id, file, parameters, seed, ...)."""
        pid = self.ids[i]
        return {"id": pid, **self.index["points"][pid]}

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} points")
        pid = self.ids[i]
        entry = self.index["points"][pid]
        item: dict[str, Any] = dict(self._reader.read_point(self.directory / entry["file"], pid))
        if self.with_parameters:
            item["parameters"] = dict(entry["parameters"])
        return item

    def __repr__(self) -> str:
        return f"<SweepDataset {self.directory}: {len(self)} points>"

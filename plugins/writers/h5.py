"""``h5``: one batch per HDF5 file, chunked and compressed (extra ``h5``)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, BinaryIO, ClassVar

import attrs
import numpy as np

from laden.hookspecs import hookimpl
from laden.kinds import BATCH_META
from laden.registry import Registry
from laden.validators import one_of


@attrs.frozen(kw_only=True)
class H5Writer:
    """A group ``batch`` holding one chunked, compressed dataset per column; the
    metadata (``epoch``, ``step``, ``rank``, ``padding``, ``fingerprint``) as
    the group's attributes. Any HDF5 reader opens it (``h5py.File(path)["batch"]``).

    :param compression: ``gzip`` (portable), ``lzf`` (fast, h5py only) or ``none``.
    :param level: the gzip level (1-9).
    """

    name: ClassVar[str] = "h5"
    suffix: ClassVar[str] = ".h5"
    requires: ClassVar[tuple[str, ...]] = ("h5py",)
    extra: ClassVar[str] = "h5"

    compression: str = attrs.field(default="gzip", validator=one_of("gzip", "lzf", "none"))
    level: int = attrs.field(default=4, validator=one_of(*range(1, 10)))

    def write(
        self, file: BinaryIO, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None:
        import h5py

        options: dict[str, Any] = {}
        if self.compression != "none":
            options["compression"] = self.compression
            if self.compression == "gzip":
                options["compression_opts"] = self.level
        with h5py.File(file, "w") as f:
            group = f.create_group("batch")
            for key, value in arrays.items():
                array = np.asarray(value, order="C")
                chunked = options if array.ndim and array.size else {}
                group.create_dataset(
                    key, data=array, chunks=True if chunked else None, track_times=False, **chunked
                )
            for key, value in meta.items():
                group.attrs[key] = value

    def read(self, path: str) -> dict[str, np.ndarray]:
        """The columns, plus the batch's ``epoch``, ``step``, ``rank`` and ``padding``."""
        import h5py

        with h5py.File(path, "r") as f:
            return self._arrays(f)

    def read_bytes(self, buffer: np.ndarray, name: str) -> dict[str, np.ndarray]:
        """The same, from a file already in memory (``buffer``: its bytes, uint8)."""
        import h5py

        with h5py.File(io.BytesIO(memoryview(buffer)), "r") as f:  # type: ignore[arg-type]
            return self._arrays(f)

    @staticmethod
    def _arrays(f: Any) -> dict[str, np.ndarray]:
        group = f["batch"]
        out = {key: group[key][()] for key in group}
        for key in BATCH_META:  # read back with the columns (the batch's identity)
            if key in group.attrs:
                out[key] = np.asarray(group.attrs[key])
        return out


@hookimpl
def laden_register_writers(registry: Registry) -> None:
    registry.add(H5Writer)

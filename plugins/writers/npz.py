"""``npz``: one batch per numpy ``.npz`` file, readable by plain ``np.load``."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from typing import Any, BinaryIO, ClassVar

import attrs
import numpy as np

from laden.hookspecs import hookimpl
from laden.registry import Registry

#: A fixed timestamp for every member, so equal batches give byte-identical files.
_EPOCH = (1980, 1, 1, 0, 0, 0)


@attrs.frozen(kw_only=True)
class NpzWriter:
    """Each column as ``NAME.npy`` in a zip archive, plus 0-d ``epoch``, ``step``,
    ``rank`` and ``padding`` arrays. ``np.load(path)`` reads it (no pickle).

    :param compress: deflate the members (like ``np.savez_compressed``):
        smaller files, slower to write and read.
    """

    name: ClassVar[str] = "npz"
    suffix: ClassVar[str] = ".npz"

    compress: bool = False

    def write(
        self, file: BinaryIO, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None:
        method = zipfile.ZIP_DEFLATED if self.compress else zipfile.ZIP_STORED
        columns = dict(arrays)
        for key in ("epoch", "step", "rank", "padding"):
            if key in meta:
                columns[key] = np.asarray(meta[key])
        with zipfile.ZipFile(file, "w", compression=method, allowZip64=True) as archive:
            for key in sorted(columns):
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH)
                info.compress_type = method
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(
                        member, np.asarray(columns[key], order="C"), allow_pickle=False
                    )

    def read(self, path: str) -> dict[str, np.ndarray]:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}


@hookimpl
def laden_register_writers(registry: Registry) -> None:
    registry.add(NpzWriter)

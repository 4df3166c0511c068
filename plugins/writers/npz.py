"""``npz``: one batch per numpy ``.npz`` file, readable by plain ``np.load``."""

from __future__ import annotations

import io
import os
import struct
import zipfile
from collections.abc import Mapping
from typing import Any, BinaryIO, ClassVar

import attrs
import numpy as np

from laden.hookspecs import hookimpl
from laden.kinds import BATCH_META
from laden.registry import Registry

#: A fixed timestamp for every member, so equal batches give byte-identical files.
_EPOCH = (1980, 1, 1, 0, 0, 0)
#: Bytes zipfile appends to a local header's extra field when ``force_zip64`` is set.
_ZIP64_EXTRA = 20
#: Header id of the padding extra field (an unassigned id, as zipalign uses one).
_PAD_ID = 0xD935


class _BufferFile(io.RawIOBase):
    """A read-only file over a buffer, without the copy ``io.BytesIO`` makes."""

    def __init__(self, view: memoryview) -> None:
        self._view = view.cast("B")
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        chunk = self._view[self._at : self._at + len(memoryview(target).cast("B"))]
        memoryview(target).cast("B")[: len(chunk)] = chunk
        self._at += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._at, os.SEEK_END: len(self._view)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at


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
        for key in BATCH_META:
            if key in meta:
                columns[key] = np.asarray(meta[key])
        with zipfile.ZipFile(file, "w", compression=method, allowZip64=True) as archive:
            for key in sorted(columns):
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH)
                info.compress_type = method
                if method == zipfile.ZIP_STORED:
                    # Pad the local header so the member's data starts on a 64-byte
                    # boundary: with numpy's 64-byte .npy headers, the arrays are then
                    # aligned in the file and ``read`` can use them in place.
                    data = archive.start_dir + 30 + len(info.filename.encode()) + _ZIP64_EXTRA
                    pad = -(data + 4) % 64
                    info.extra = struct.pack("<HH", _PAD_ID, pad) + bytes(pad)
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(
                        member, np.asarray(columns[key], order="C"), allow_pickle=False
                    )

    def read(self, path: str) -> dict[str, np.ndarray]:
        """The columns of a file, read with one ``readinto`` (see :meth:`read_bytes`)."""
        with open(path, "rb") as f:
            buffer = np.empty(os.fstat(f.fileno()).st_size, dtype=np.uint8)  # no zero fill
            if f.readinto(memoryview(buffer)) != buffer.size:  # type: ignore[arg-type]
                raise ValueError(f"{path}: the file shrank while being read")
        return self.read_bytes(buffer, path)

    def read_bytes(self, buffer: np.ndarray, name: str) -> dict[str, np.ndarray]:
        """The columns of a file already in memory (``buffer``: its bytes, uint8).

        The file is read once (the copy happens outside the interpreter lock,
        so a prefetch thread overlaps with the consumer, and the caller can
        checksum the same buffer); in a stored (uncompressed) file aligned
        members become views of that buffer. Compressed or foreign files go
        through ``np.load``. ``name`` only labels errors.
        """
        with zipfile.ZipFile(_BufferFile(memoryview(buffer))) as archive:  # type: ignore[arg-type]
            infos = archive.infolist()
        if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
            with np.load(io.BytesIO(memoryview(buffer)), allow_pickle=False) as data:  # type: ignore[arg-type]
                return {key: data[key] for key in data.files}
        raw = memoryview(buffer)  # type: ignore[arg-type]
        out = {}
        for info in infos:
            local = info.header_offset
            if bytes(raw[local : local + 4]) != b"PK\x03\x04":
                raise ValueError(f"{name}: bad zip local header for {info.filename}")
            name_len, extra_len = struct.unpack_from("<HH", raw, local + 26)
            start = local + 30 + name_len + extra_len
            header = io.BytesIO(raw[start : start + min(info.file_size, 1 << 16)])
            version = np.lib.format.read_magic(header)
            shape, fortran, dtype = (
                np.lib.format.read_array_header_1_0(header)
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0(header)
            )
            if dtype.hasobject:
                raise ValueError(f"{name}: {info.filename} holds Python objects; not loaded")
            at = start + header.tell()
            count = int(np.prod(shape, dtype=np.int64))
            if at + count * dtype.itemsize > start + info.file_size:
                raise ValueError(f"{name}: {info.filename} is shorter than its header says")
            array = np.frombuffer(buffer, dtype=dtype, count=count, offset=at)
            if not array.flags.aligned:
                array = array.copy()
            out[info.filename.removesuffix(".npy")] = array.reshape(
                shape, order="F" if fortran else "C"
            )
        return out


@hookimpl
def laden_register_writers(registry: Registry) -> None:
    registry.add(NpzWriter)

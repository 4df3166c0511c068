"""Every hash laden records, in one place: blake2b digests and the reader's CRC-32.

A digest is 16 bytes of blake2b shown as hex. What is hashed decides what a
digest means: :func:`digest` over length-prefixed parts (fingerprints, over
:func:`canonical_json`), :func:`array_digest` over arrays' dtypes, shapes and
bytes (tables, plans), :func:`content_digest` over a batch's named columns
(the same whatever the file format), :func:`file_digest` and
:func:`file_checksums` over a file's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from laden.kinds import BATCH_META

__all__ = [
    "DIGEST_SIZE",
    "array_digest",
    "bytes_digest",
    "canonical_json",
    "content_digest",
    "digest",
    "file_checksums",
    "file_digest",
    "hasher",
]

#: Bytes in every digest laden records (32 hex characters).
DIGEST_SIZE = 16
#: Columns of a batch that say where it belongs, not what it holds (left out of
#: :func:`content_digest`, so a batch's content digest is the same at any position).
_POSITION = BATCH_META


def hasher() -> Any:
    """A fresh blake2b hash object of laden's digest size (``update`` / ``hexdigest``)."""
    return hashlib.blake2b(digest_size=DIGEST_SIZE)


def bytes_digest(data: bytes | memoryview) -> str:
    """blake2b of raw bytes (a buffer already in memory: no copy)."""
    h = hasher()
    h.update(data)
    return str(h.hexdigest())


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace: the input of every digest."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(*parts: bytes | str, size: int = DIGEST_SIZE) -> str:
    """A hex blake2b digest over ``parts`` (each length-prefixed, so ``ab|c`` != ``a|bc``)."""
    h = hashlib.blake2b(digest_size=size)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def array_digest(*arrays: np.ndarray | None, size: int = DIGEST_SIZE) -> str:
    """A blake2b digest over arrays' dtypes, shapes and little-endian bytes."""
    h = hashlib.blake2b(digest_size=size)
    for array in arrays:
        if array is None:
            h.update(b"\x00none")
            continue
        a = np.ascontiguousarray(array)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes() if a.dtype.kind != "U" else a.astype("U").tobytes())
    return h.hexdigest()


def content_digest(arrays: Mapping[str, Any], *, skip: Iterable[str] = _POSITION) -> str:
    """A digest of named columns (names, dtypes, shapes, values), whatever the file format.

    :param skip: columns left out; by default those that place a batch (epoch,
        step, rank, padding), so equal contents give equal digests anywhere.
    """
    left_out = set(skip)
    keys = sorted(k for k in arrays if k not in left_out)
    parts = [np.frombuffer("\0".join(keys).encode(), dtype=np.uint8)]
    parts += [np.asarray(arrays[k]) for k in keys]
    return array_digest(*parts)


def file_digest(
    path: str | os.PathLike[str],
    *,
    chunk: int = 1 << 20,
    progress: Callable[[int], object] | None = None,
) -> str:
    """blake2b of a file's bytes, read in chunks.

    :param progress: called with the size of every chunk read (for a bar).
    """
    h = hasher()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            if progress is not None:
                progress(len(block))
    return str(h.hexdigest())


def file_checksums(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> tuple[int, str, int]:
    """``(size, blake2b, crc32)`` of a file, read once.

    ``blake2b`` is a manifest's file checksum (what ``laden verify`` checks,
    equal to :func:`file_digest`); ``crc32`` is the cheap one
    :class:`~laden.files.read.BatchReader` checks on every read.
    """
    h = hasher()
    crc = size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            crc = zlib.crc32(block, crc)
            size += len(block)
    return size, str(h.hexdigest()), crc

"""Crash-safe files: temporary name, fsync, rename; zstd-compressed, checksummed arrays."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import zstandard

from laden.errors import DataError

__all__ = [
    "atomic_directory",
    "atomic_open",
    "atomic_write_bytes",
    "file_digest",
    "plain_json",
    "read_array",
    "read_json",
    "write_array",
    "write_json",
]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to fill; on success it is fsynced and renamed to ``path``.

    It is written under a temporary name (``.NAME.*.tmp``) beside ``path``; if
    the block fails (or the process dies) ``path`` is untouched and the
    temporary file is removed (or left for a resume to sweep).
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over it."""
    with atomic_open(path) as f:
        f.write(data)


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Fill a temporary directory; on success it replaces ``path`` in one rename.

    If the block fails, ``path`` keeps whatever it held before.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _fsync_dir(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_digest(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """blake2b of a file's bytes, read in chunks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_array(directory: Path, name: str, array: np.ndarray, *, level: int = 3) -> dict[str, Any]:
    """Write ``array`` as ``name.zst`` (raw little-endian bytes, zstd); return its metadata.

    Numeric dtypes only: nothing laden writes needs pickling to read back.
    The array is compressed straight from its memory (no intermediate copy).
    """
    a = np.ascontiguousarray(array)
    if a.dtype.kind not in "iufb":
        raise TypeError(f"{name}: only numeric arrays are stored, got dtype {a.dtype}")
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    raw = memoryview(a.reshape(-1)).cast("B")  # type: ignore[arg-type]
    data = zstandard.ZstdCompressor(level=level, threads=-1).compress(raw)
    atomic_write_bytes(directory / f"{name}.zst", data)
    return {
        "file": f"{name}.zst",
        "dtype": a.dtype.str,
        "shape": list(a.shape),
        "blake2b": hashlib.blake2b(raw, digest_size=16).hexdigest(),
    }


def read_array(directory: Path, info: Mapping[str, Any], *, chunk: int = 8 << 20) -> np.ndarray:
    """Read an array written by :func:`write_array`, checking size and checksum.

    Streamed: the file is decompressed chunk by chunk straight into the
    result, so peak memory is the array plus one chunk.
    """
    path = directory / info["file"]
    dtype = np.dtype(info["dtype"])
    out = np.empty(info["shape"], dtype=dtype)
    view = memoryview(out.reshape(-1)).cast("B")  # type: ignore[arg-type]
    expected = view.nbytes
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as reader:
            done = 0
            while done < expected:
                got = reader.readinto(view[done : done + chunk])
                if not got:
                    break
                h.update(view[done : done + got])
                done += got
            extra = reader.read(1)
    except FileNotFoundError:
        raise DataError("missing file", file=str(path)) from None
    except zstandard.ZstdError as exc:
        raise DataError(f"corrupt or truncated zstd data ({exc})", file=str(path)) from None
    if done != expected or extra:
        held = f"{done}" if not extra else f"more than {expected}"
        raise DataError(f"holds {held} bytes, expected {expected}", file=str(path))
    if h.hexdigest() != info["blake2b"]:
        raise DataError("checksum mismatch: the file was altered", file=str(path))
    return out


def plain_json(value: Any) -> Any:
    """A JSON-ready copy: tuples to lists, numpy scalars and arrays to Python values."""
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("missing file", file=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"not valid JSON ({exc})", file=str(path)) from None

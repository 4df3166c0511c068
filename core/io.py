"""Crash-safe files: temporary name, fsync, rename; zstd-compressed, checksummed arrays;
output directories laden may replace, and the format-version check of every artifact."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import zstandard

from laden.digest import bytes_digest, file_digest, hasher  # file_digest: re-exported
from laden.errors import ConfigError, DataError, LadenError

__all__ = [
    "ARTIFACT_KINDS",
    "artifact_kind",
    "atomic_directory",
    "atomic_open",
    "atomic_write_bytes",
    "check_format",
    "file_digest",
    "plain_json",
    "prepare_output",
    "prepare_output_file",
    "read_array",
    "read_json",
    "remove_artifact",
    "write_array",
    "write_json",
]


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it where the platform allows.

    Linux shows it in ``/proc/self/status``; elsewhere it is set and restored
    under a lock (``os.umask`` has no read-only form).
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        pass
    with _UMASK_LOCK:  # pragma: no cover - not Linux
        old = os.umask(0o077)
        os.umask(old)
    return old  # pragma: no cover


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
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # name the file asked for, not a temporary name
        raise _naming(exc, target) from exc
    try:
        # mkstemp makes 0600; a file laden writes is as readable as any other (0644 under 022).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None and not isinstance(exc, LadenError):
            raise _naming(exc, target) from exc  # a full disk: say which file
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _naming(exc: OSError, path: Path) -> OSError:
    """The same OS error (same errno and subclass), naming ``path``."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over it."""
    with atomic_open(path) as f:
        f.write(data)


@contextmanager
def atomic_directory(
    path: str | os.PathLike[str], *, kind: str | None = None, force: bool = True
) -> Iterator[Path]:
    """Fill a temporary directory; on success it replaces ``path`` in one rename.

    If the block fails, ``path`` keeps whatever it held before. With ``kind``,
    ``path`` is checked by :func:`prepare_output` first (and again just before
    the swap): only a missing or empty directory, or (with ``force``) an
    artifact of the same kind, is ever replaced.
    """
    target = Path(os.path.abspath(path))
    if kind is not None:
        prepare_output(target, kind, force=force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp
        _fsync_dir(tmp)
        if kind is not None:  # something else may have appeared there meanwhile
            prepare_output(target, kind, force=True)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        inside = exc.filename if isinstance(exc.filename, str | Path) else None
        if (
            inside is not None
            and Path(inside).is_relative_to(tmp)
            and not isinstance(exc, LadenError)
        ):  # a full disk: name the file in the directory asked for, not in the temporary
            raise _naming(exc, target / Path(inside).relative_to(tmp)) from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- outputs

#: What each kind of output directory laden writes is called in messages.
ARTIFACT_KINDS = {
    "laden.lengths": "length cache",
    "laden.plan": "batch plan",
    "laden.batches": "batch file directory",
    "laden.shards": "directory of rank-R plan shards",
    "laden.cli.demo": "laden demo output",
    "laden.replay_buffer": "saved replay buffer",
    "laden.rollouts": "rollout file directory",
    "laden.stream": "stream collection",
    "laden.sweep": "sweep output directory",
    "laden.timeseries": "time-series cache",
}
#: Kinds whose first files were written before the ``kind`` field (recognised without it).
_KINDLESS = frozenset({"laden.lengths", "laden.plan", "laden.batches"})
_RANK_DIR = re.compile(r"^rank-\d+$")


def _kind_of_meta(directory: Path) -> str | None:
    """The kind recorded in (or, for artifacts older than the ``kind`` field,
    recognised by the keys of) a directory's meta file; None when it is none."""
    for name in ("meta.json", "manifest.json", ".laden-demo", "collect.json"):
        path = directory / name
        if not path.is_file():
            continue
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict):
            return None
        kind = meta.get("kind")
        if isinstance(kind, str) and kind in ARTIFACT_KINDS:
            return kind
        if name == "meta.json" and {"columns", "table_digest", "format_version"} <= meta.keys():
            return "laden.lengths"
        if name == "meta.json" and {"fingerprint", "epochs", "table_digest"} <= meta.keys():
            return "laden.plan"
        if name == "manifest.json" and "files" in meta and "fingerprint" in meta:
            return "laden.batches"
        return None
    return None


def artifact_kind(path: str | os.PathLike[str]) -> str | None:
    """What laden artifact the directory ``path`` is (a key of :data:`ARTIFACT_KINDS`), or None.

    A directory holding nothing but ``rank-R`` plans (and laden's own
    temporaries) is ``laden.shards``.
    """
    root = Path(path)
    if not root.is_dir():
        return None
    kind = _kind_of_meta(root)
    if kind is not None:
        return kind
    if (root / "stdlib.jsonl").is_file() and _kind_of_meta(root / "lengths") == "laden.lengths":
        return "laden.cli.demo"  # written by a demo from before its marker file
    entries = list(root.iterdir())
    ranks = [e for e in entries if _RANK_DIR.match(e.name)]
    ours = all(
        _RANK_DIR.match(e.name) or (e.name.startswith(".rank-") and e.name.endswith(".tmp"))
        for e in entries
    )
    if ranks and ours and all(_kind_of_meta(r) == "laden.plan" for r in ranks):
        return "laden.shards"
    return None


def _describe(root: Path, found: str | None) -> str:
    if found is not None:
        return f"a {ARTIFACT_KINDS[found]}"
    entries = sorted(e.name for e in root.iterdir())
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} laden did not write ({shown})"


def _strangers(batches: Path) -> list[str]:
    """Entries of a batch file directory that its manifest does not list."""
    try:
        listed = json.loads((batches / "manifest.json").read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return sorted(
        e.name
        for e in batches.iterdir()
        if e.name != "manifest.json" and not e.name.startswith(".") and e.name not in listed
    )


def prepare_output(
    path: str | os.PathLike[str], kind: str, *, force: bool = False, option: str = "output"
) -> Path:
    """Check that ``path`` may become an output directory of ``kind``; returns it.

    Allowed: a path that does not exist, an empty directory, or (only with
    ``force``) a directory laden wrote as an artifact of the same kind,
    recognised by its meta file. Anything else (a file, a folder with other
    things in it, an artifact of another kind) is a ConfigError naming the path
    and what is there: laden never deletes what it did not write.

    :param option: the option the path came from, named in the error.
    """
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    target = Path(path)
    noun = ARTIFACT_KINDS[kind]
    if not target.exists() and not target.is_symlink():
        return target
    if not target.is_dir():
        raise ConfigError(
            f"{target} is a file, not a {noun}; laden will not replace it, choose another path",
            path=(option,),
        )
    try:
        empty = not any(target.iterdir())
    except OSError as exc:
        raise ConfigError(f"cannot read {target}: {exc.strerror}", path=(option,)) from None
    if empty:
        return target
    found = artifact_kind(target)
    if found == kind:
        strangers = _strangers(target) if kind == "laden.batches" else []
        if strangers:
            shown = ", ".join(strangers[:3]) + (", ..." if len(strangers) > 3 else "")
            raise ConfigError(
                f"{target} holds batch files and {len(strangers)} file(s) laden did not write "
                f"({shown}); move them away or choose another directory",
                path=(option,),
            )
        if force:
            return target
        raise ConfigError(
            f"{target} already holds a {noun}; pass --force to replace it", path=(option,)
        )
    raise ConfigError(
        f"{target} holds {_describe(target, found)}, not a {noun}; laden replaces only "
        f"a {noun} it wrote, so choose a new or empty directory",
        path=(option,),
    )


def remove_artifact(path: str | os.PathLike[str], kind: str) -> bool:
    """Delete the directory ``path`` if it is a laden artifact of ``kind``; True if it was.

    Anything else is left alone: this is how laden clears only what it wrote
    (e.g. the ``rank-R`` plans of a larger world size).
    """
    target = Path(path)
    if target.is_symlink() or artifact_kind(target) != kind:
        return False
    if kind != "laden.batches":
        shutil.rmtree(target)
        return True
    # Batch files are written into the folder itself: remove only what the manifest
    # lists (and laden's temporaries), so a file someone put beside them stays.
    manifest = target / "manifest.json"
    names = json.loads(manifest.read_text(encoding="utf-8")).get("files") or {}
    for name in names:
        if isinstance(name, str) and name == Path(name).name and not name.startswith("."):
            (target / name).unlink(missing_ok=True)
    for stale in target.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    manifest.unlink()
    if not any(target.iterdir()):
        target.rmdir()
    return True


def prepare_output_file(
    path: str | os.PathLike[str], *, force: bool = False, option: str = "output"
) -> Path:
    """Check that the single file ``path`` may be written: its folder exists, and an
    existing file there is replaced only with ``force`` (a directory never)."""
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise ConfigError(f"folder {folder} does not exist; create it first", path=(option,))
    if target.is_dir():
        raise ConfigError(f"{target} is a directory, not a file", path=(option,))
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists; pass --force to overwrite it", path=(option,))
    return target


def check_format(
    meta: Any, *, kind: str, version: int, file: str | os.PathLike[str] | None = None
) -> int:
    """The ``format_version`` of an artifact's metadata, checked: the one rule every
    artifact (length cache, plan, batch manifest, replay buffer, ...) is read by.

    A DataError naming ``file`` when ``meta`` is no mapping, holds another ``kind``
    (kinds older than the field may lack it), or has no ``format_version``, one
    below 1, or one newer than ``version`` (this laden's).

    :param kind: a key of :data:`ARTIFACT_KINDS`.
    :param version: the newest format version this laden reads (and writes).
    """
    noun = ARTIFACT_KINDS[kind]
    where = None if file is None else str(file)
    if not isinstance(meta, Mapping):
        raise DataError(f"not a {noun} (its metadata is no JSON object)", file=where)
    found = meta.get("kind")
    if found != kind and (found is not None or kind not in _KINDLESS):
        said = "no kind" if found is None else f"kind {found!r}"
        raise DataError(f"not a {noun} ({said}, expected {kind!r})", file=where)
    found_version = meta.get("format_version")
    if isinstance(found_version, bool) or not isinstance(found_version, int):
        said = "no format_version" if found_version is None else f"format_version {found_version!r}"
        raise DataError(f"not a {noun} ({said})", file=where)
    if found_version > version:
        raise DataError(
            f"format_version {found_version} is newer than this laden reads ({version}); "
            "upgrade laden",
            file=where,
        )
    if found_version < 1:
        raise DataError(f"format_version {found_version} is not one laden wrote", file=where)
    return found_version


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
        "blake2b": bytes_digest(raw),
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
    h = hasher()
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

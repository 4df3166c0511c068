"""Length caches: measure every sample once, save the columns, reuse them.

A length cache is a directory::

    meta.json        kind ("laden.lengths"), format_version, the dataset's absolute
                     path and digest, tokenizer hash and settings, counts, columns
    length.zst       int64 token counts (zstd)
    offset.zst       int64 byte offsets into the dataset
    key.zst          int64 bucket keys (optional)
    stage_length.zst int64 [samples, stages] steps per stage (optional; staged samples)
    ids.zst          int64 ids, or ids_blob.zst + ids_offsets.zst for string ids

It is written atomically: a crash leaves the previous cache (or none). Only a
missing or empty directory, or a previous length cache, is ever replaced.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from laden.digest import file_digest
from laden.errors import ConfigError, DataError, add_note
from laden.io import (
    ARTIFACT_KINDS,
    artifact_kind,
    atomic_directory,
    atomic_open,
    check_format,
    plain_json,
    prepare_output,
    read_array,
    read_json,
    write_array,
    write_json,
)
from laden.progress import Progress
from laden.records import ChunkMeasure, LengthTable, offsets_from_sizes

if TYPE_CHECKING:
    from laden.kernel import Kernel
    from laden.kinds import IndexedSource

__all__ = [
    "FORMAT_VERSION",
    "KIND",
    "build_lengths",
    "load_lengths",
    "save_lengths",
    "source_of",
    "tokenizer_of",
]

FORMAT_VERSION = 1
#: The ``kind`` in a length cache's meta.json.
KIND = "laden.lengths"
#: Meta keys that describe one loaded copy, not the cache: never saved.
_TRANSIENT = ("cache_path", "reused", "kind")


def _encode_ids(ids: np.ndarray) -> dict[str, np.ndarray]:
    if ids.dtype.kind in "iu":
        return {"ids": ids.astype(np.int64)}
    encoded = [str(i).encode("utf-8") for i in ids.tolist()]
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    offsets = offsets_from_sizes(lengths)
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return {"ids_blob": blob, "ids_offsets": offsets}


def _decode_ids(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    data = blob.tobytes()
    bounds = offsets.tolist()
    return np.array([data[a:b].decode("utf-8") for a, b in itertools.pairwise(bounds)])


def save_lengths(
    table: LengthTable, directory: str | os.PathLike[str], *, overwrite: bool = True
) -> Path:
    """Write ``table`` as a length cache directory (atomically); returns its path.

    ``directory`` must be new, empty, or (with ``overwrite``) a length cache:
    anything else is a ConfigError and is left untouched.
    """
    target = Path(directory)
    columns: dict[str, np.ndarray] = {"length": table.length}
    if table.offset is not None:
        columns["offset"] = table.offset
    if table.key is not None:
        columns["key"] = table.key
    if table.stage_length is not None:
        columns["stage_length"] = table.stage_length
    if table.ids is not None:
        columns.update(_encode_ids(table.ids))
    with atomic_directory(target, kind=KIND, force=overwrite) as tmp:
        infos = {name: write_array(tmp, name, array) for name, array in columns.items()}
        meta = {
            **{k: v for k, v in table.meta.items() if k not in _TRANSIENT},
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "num_samples": len(table),
            "num_tokens": table.num_tokens,
            "table_digest": table.digest(),
            "columns": infos,
        }
        write_json(tmp / "meta.json", meta)
    return target


def load_lengths(directory: str | os.PathLike[str]) -> LengthTable:
    """Read a length cache; a missing, truncated or altered file is a DataError naming it."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError("not a length cache directory", file=str(root))
    _require_kind(root, KIND)
    meta = read_json(root / "meta.json")
    if not isinstance(meta, dict) or "columns" not in meta:
        raise DataError("is not a length cache (no columns)", file=str(root / "meta.json"))
    check_format(meta, kind=KIND, version=FORMAT_VERSION, file=root / "meta.json")
    infos = meta.pop("columns")
    meta.pop("kind", None)
    meta["cache_path"] = os.path.abspath(root)  # where this copy was read: plans record it
    arrays = {name: read_array(root, info) for name, info in infos.items()}
    ids = arrays.get("ids")
    if "ids_blob" in arrays:
        ids = _decode_ids(arrays["ids_blob"], arrays["ids_offsets"])
    table = LengthTable(
        length=arrays["length"],
        offset=arrays.get("offset"),
        key=arrays.get("key"),
        ids=ids,
        meta=meta,
        stage_length=arrays.get("stage_length"),
    )
    if table.digest() != meta.get("table_digest"):
        raise DataError("columns do not match the recorded digest", file=str(root / "meta.json"))
    return table


def _require_kind(root: Path, kind: str) -> None:
    """A DataError unless ``root`` may be an artifact of ``kind``: says what it is instead."""
    found = artifact_kind(root)
    if found is not None and found != kind:
        hint = "; pass one of its rank-R folders" if found == "laden.shards" else ""
        raise DataError(
            f"is a {ARTIFACT_KINDS[found]}, not a {ARTIFACT_KINDS[kind]}{hint}", file=str(root)
        )
    if found is None and not (root / "meta.json").exists():
        raise DataError(f"missing file: not a {ARTIFACT_KINDS[kind]}", file=str(root / "meta.json"))


def _measure(task: tuple[Any, Any, int, int, str | None]) -> Any:
    """Worker: measure one byte range, and keep the result in the work directory."""
    source, tokenizer, start, end, workdir = task
    part = source.measure(start, end, tokenizer)
    if workdir is not None:
        _save_chunk(Path(workdir), start, end, part)
    return part


# --------------------------------------------------------- resumable measuring
#
# Each measured byte range is kept as an .npz (numeric and byte arrays only,
# read back with allow_pickle=False) in ``.NAME.partial`` beside the output,
# so a build stopped by Ctrl-C, a crash or kill -9 measures only the ranges
# still missing when run again. The directory holds ``partial.json`` naming
# what was measured (dataset digest, tokenizer hash, source settings); work
# for anything else is discarded. It is removed once the cache is saved.

#: Inline (no worker processes) below this size unless workers are asked for:
#: a pool takes longer to start than such a file takes to measure.
INLINE_BYTES = 4 << 20
#: Files at least this big show a bar while their digest is computed.
_HASH_BAR_BYTES = 256 << 20
_PARTIAL_KIND = "laden.lengths.partial"


def _pack_strings(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [v.encode("utf-8", "surrogatepass") for v in values]
    sizes = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets_from_sizes(sizes)


def _unpack_strings(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    data = blob.tobytes()
    return [
        data[a:b].decode("utf-8", "surrogatepass") for a, b in itertools.pairwise(offsets.tolist())
    ]


def _chunk_name(start: int, end: int) -> str:
    return f"chunk-{start:015d}-{end:015d}.npz"


#: ``np.savez`` with plain numeric arrays only (its ``allow_pickle`` keyword exists
#: from numpy 2.1 on; typed loosely so ``**arrays`` checks on every numpy).
_savez: Any = np.savez


def _save_chunk(workdir: Path, start: int, end: int, part: ChunkMeasure) -> None:
    """Keep one measured range (best effort: a failure only means measuring it again)."""
    arrays: dict[str, np.ndarray] = {
        "counts": np.asarray([part.start, part.lines, part.blank], dtype=np.int64),
        "length": np.asarray(part.length, dtype=np.int64),
        "offset": np.asarray(part.offset, dtype=np.int64),
        "line": np.asarray(part.line, dtype=np.int64),
        "has_id": np.asarray(part.has_id, dtype=bool),
        "error_line": np.asarray([line for line, _ in part.errors], dtype=np.int64),
    }
    arrays["error_blob"], arrays["error_offsets"] = _pack_strings([r for _, r in part.errors])
    if part.key is not None:
        arrays["key"] = np.asarray(part.key, dtype=np.int64)
    if part.stage_length is not None:
        arrays["stage_length"] = np.asarray(part.stage_length, dtype=np.int64)
    if part.ids is not None:
        # 0: no id, 1: an integer (of any size), 2: a string; kept as text, typed back.
        arrays["id_kind"] = np.asarray(
            [0 if v is None else 1 if isinstance(v, int) else 2 for v in part.ids], dtype=np.uint8
        )
        arrays["id_blob"], arrays["id_offsets"] = _pack_strings(
            ["" if v is None else str(v) for v in part.ids]
        )
    try:
        with atomic_open(workdir / _chunk_name(start, end)) as f:
            _savez(f, **arrays)
    except OSError:
        pass


def _load_chunk(workdir: Path, start: int, end: int) -> ChunkMeasure | None:
    """A kept range, or None when it is missing or unreadable (then it is measured again)."""
    path = workdir / _chunk_name(start, end)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            a = {name: npz[name] for name in npz.files}
        first, lines, blank = (int(v) for v in a["counts"])
        n = a["length"].size
        if first != start or not all(a[k].size == n for k in ("offset", "line", "has_id")):
            raise ValueError("inconsistent columns")
        ids = None
        if "id_kind" in a:
            kinds = a["id_kind"].tolist()
            texts = _unpack_strings(a["id_blob"], a["id_offsets"])
            ids = [
                None if k == 0 else int(t) if k == 1 else t
                for k, t in zip(kinds, texts, strict=True)
            ]
        reasons = _unpack_strings(a["error_blob"], a["error_offsets"])
        return ChunkMeasure(
            start=first,
            lines=lines,
            length=a["length"],
            offset=a["offset"],
            line=a["line"],
            key=a.get("key"),
            ids=ids,
            has_id=a["has_id"].astype(bool),
            errors=list(zip(a["error_line"].tolist(), reasons, strict=True)),
            blank=blank,
            stage_length=a.get("stage_length"),
        )
    except Exception:  # damaged or from another laden: measure it again
        path.unlink(missing_ok=True)
        return None


def _partial_dir(output: str | os.PathLike[str]) -> Path:
    target = Path(os.path.abspath(output))
    return target.parent / f".{target.name}.partial"


def _open_partial(output: str | os.PathLike[str], key: dict[str, Any], *, keep: bool) -> Path:
    """The work directory for ``key`` beside ``output``: kept work if it matches, else empty.

    A directory of that name that laden did not make is a ConfigError, never emptied.
    """
    workdir = _partial_dir(output)
    marker = {"kind": _PARTIAL_KIND, "key": key}
    if workdir.exists():
        try:
            found = read_json(workdir / "partial.json")
        except DataError:
            found = None
        if not isinstance(found, dict) or found.get("kind") != _PARTIAL_KIND:
            raise ConfigError(
                f"{workdir} exists and is not laden's work directory; move it away",
                path=("output",),
            )
        if keep and found == plain_json(marker):
            return workdir
        for stale in workdir.glob("chunk-*.npz"):
            stale.unlink(missing_ok=True)
        write_json(workdir / "partial.json", plain_json(marker))
        return workdir
    workdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{workdir.name}.", suffix=".tmp", dir=workdir.parent))
    try:
        write_json(tmp / "partial.json", plain_json(marker))
        os.replace(tmp, workdir)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not workdir.is_dir():  # not a lost race with another build
            raise
    return workdir


def _remove_partial(workdir: Path) -> None:
    """Remove the work directory (only the files laden put there)."""
    for path in workdir.glob("chunk-*.npz"):
        path.unlink(missing_ok=True)
    for path in workdir.glob(".*.tmp"):
        path.unlink(missing_ok=True)
    (workdir / "partial.json").unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # something else is in it: leave it
        workdir.rmdir()


def _digest(source: IndexedSource, size: int, progress: bool | None) -> str:
    """The dataset's digest (its fingerprint), with a transient bar for a big file."""
    if size < _HASH_BAR_BYTES:
        return source.fingerprint()
    with Progress(size, "hashing", enabled=progress, unit="bytes", leave=False) as bar:
        return source.fingerprint(progress=bar.update)


def _absolute(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings with a ``path`` to an existing file made absolute (usable from any directory)."""
    path = settings.get("path")
    if isinstance(path, str) and os.path.exists(path):
        settings["path"] = os.path.abspath(path)
    return settings


def _source_settings(source: Any) -> dict[str, Any]:
    from laden.serde import config_of

    settings = config_of(source)
    for field in attrs.fields(type(source)):
        if field.metadata.get("identity") is False:  # how it is read, not what it holds
            settings.pop(field.name, None)
    return _absolute(settings)


def _tokenizer_settings(tokenizer: Any) -> dict[str, Any]:
    from laden.serde import config_of

    return _absolute(config_of(tokenizer))


def _same_cache(cached: LengthTable, identity: dict[str, Any]) -> bool:
    """Whether a cache measured the same bytes at the same place with the same settings.

    Paths are compared resolved, so ``data.jsonl``, ``./data.jsonl`` and the
    absolute path reuse one cache (older caches stored the path as spelled).
    """
    meta = cached.meta
    if meta.get("dataset_digest") != identity["dataset_digest"]:
        return False
    if meta.get("tokenizer_hash") != identity["tokenizer_hash"]:
        return False
    recorded = meta.get("dataset")
    if not isinstance(recorded, str):
        return False
    if os.path.realpath(recorded) != os.path.realpath(identity["dataset"]):
        return False
    mine = {k: v for k, v in identity["source"].items() if k != "path"}
    theirs = {k: v for k, v in (meta.get("source") or {}).items() if k != "path"}
    return mine == theirs


def build_lengths(
    source: IndexedSource,
    tokenizer: Any,
    *,
    output: str | os.PathLike[str] | None = None,
    executor: Any = None,
    reuse: bool = True,
    progress: bool | None = None,
    overwrite: bool = True,
) -> LengthTable:
    """Measure every row of ``source`` with ``tokenizer`` into a :class:`LengthTable`.

    Work is split into byte ranges and run on ``executor`` (default: the
    builtin ``local`` executor, one worker per CPU). With ``output``, the
    table is saved there, and a
    rerun whose dataset digest, tokenizer hash and source settings match reuses
    it without measuring again (``table.meta["reused"]`` says so). Paths are
    recorded absolute (the dataset's, a tokenizer file's, with digests), so the
    cache is usable from any directory. ``output`` must be new, empty or a
    length cache; a cache that does not match is replaced only with
    ``overwrite`` (the CLI's ``--force``), anything else never. Until the cache
    is saved, each measured byte range is kept in ``.NAME.partial`` beside
    ``output``, so a build stopped by Ctrl-C, a crash or ``kill -9`` measures
    only the ranges still missing when run again (``reuse=False`` starts over).

    Malformed rows stop the build with a DataError naming file and line, or,
    with the source's ``on_error = "skip"``, are left out and counted in
    ``meta["skipped"]`` (their lines in ``meta["skipped_lines"]``, first 100).
    """
    from laden.kernel import builtin_kernel

    dataset_bytes = os.path.getsize(source.path)
    dataset_digest = _digest(source, dataset_bytes, progress)
    tokenizer_config = _tokenizer_settings(tokenizer)
    identity: dict[str, Any] = {
        "dataset": os.path.abspath(source.path),
        "dataset_digest": dataset_digest,
        "dataset_bytes": dataset_bytes,
        "tokenizer": type(tokenizer).name,
        "tokenizer_hash": tokenizer.fingerprint(),
        "tokenizer_config": tokenizer_config,
        "source": _source_settings(source),
    }
    tokenizer_path = tokenizer_config.get("path")
    if isinstance(tokenizer_path, str) and os.path.isfile(tokenizer_path):
        identity["tokenizer_file"] = {"path": tokenizer_path, "digest": file_digest(tokenizer_path)}
    if output is not None and reuse and (Path(output) / "meta.json").exists():
        try:
            cached = load_lengths(output)
        except DataError:
            cached = None  # damaged: measure again and overwrite
        if cached is not None and _same_cache(cached, identity):
            return attrs.evolve(cached, meta={**cached.meta, "reused": True})
    if output is not None:  # refuse before measuring, not after
        prepare_output(output, KIND, force=overwrite)
    if executor is None:
        executor = builtin_kernel().create("executor", "local")
    chunks = source.chunks()
    small = identity["dataset_bytes"] < INLINE_BYTES and getattr(executor, "workers", 0) is None
    if (len(chunks) <= 1 or small) and hasattr(executor, "workers"):
        executor = attrs.evolve(executor, workers=0)  # no pool start-up for little work
    workdir = None
    saved: dict[tuple[int, int], Any] = {}
    if output is not None:
        key = {
            "dataset_digest": dataset_digest,
            "tokenizer_hash": identity["tokenizer_hash"],
            "source": {k: v for k, v in identity["source"].items() if k != "path"},
        }
        workdir = _open_partial(output, key, keep=reuse)
        for start, end in chunks:
            part = _load_chunk(workdir, start, end)
            if part is not None:
                saved[start, end] = part
    where = None if workdir is None else str(workdir)
    tasks = [(source, tokenizer, a, b, where) for a, b in chunks if (a, b) not in saved]
    parts = []
    line_base = 0
    skipped_lines: list[int] = []
    skipped = blank = 0
    bar = Progress(identity["dataset_bytes"], "measuring", enabled=progress, unit="bytes")
    results = executor.map(_measure, tasks, total=len(tasks))
    try:
        with bar, contextlib.closing(results):
            bar.update(sum(b - a for a, b in saved))
            for start, end in chunks:
                part = saved.get((start, end))
                if part is None:
                    part = next(results)
                    bar.update(end - start)
                if part.errors:
                    if source.on_error == "error":
                        line, reason = part.errors[0]
                        raise DataError(reason, file=source.path, line=line_base + line + 1)
                    skipped += len(part.errors)
                    skipped_lines += [line_base + line + 1 for line, _ in part.errors][:100]
                blank += part.blank
                parts.append((part, line_base))
                line_base += part.lines
        table = _assemble(source, parts)
    except DataError:
        if workdir is not None:
            _remove_partial(workdir)  # the dataset must change: nothing to resume
        raise
    except KeyboardInterrupt as exc:
        if workdir is not None:
            add_note(
                exc,
                f"what was measured is kept in {workdir}; "
                "run the same command again to continue from there",
            )
        raise
    meta = {
        **identity,
        "num_lines": line_base,
        "skipped": skipped,
        "skipped_lines": skipped_lines[:100],
        "blank": blank,
    }
    table = attrs.evolve(table, meta=meta)
    if output is not None:
        save_lengths(table, output, overwrite=overwrite)
        if workdir is not None:
            _remove_partial(workdir)
        table = attrs.evolve(table, meta={**meta, "cache_path": os.path.abspath(output)})
    return table


def source_of(
    table: LengthTable,
    *,
    kernel: Kernel | None = None,
    dataset: str | os.PathLike[str] | None = None,
) -> Any:
    """The source a length cache was measured on, rebuilt from its recorded settings.

    :param table: a loaded length cache (its ``meta["source"]`` and ``meta["dataset"]``).
    :param kernel: creates the source (default: :func:`~laden.kernel.builtin_kernel`).
    :param dataset: the dataset's path when it moved (default: the recorded one).
    """
    from laden.kernel import builtin_kernel

    config = dict(table.meta.get("source") or {"name": "jsonl"})
    path = dataset if dataset is not None else table.meta.get("dataset", config.get("path"))
    if path is None:
        raise DataError("the length cache does not record its dataset; pass dataset=")
    config["path"] = str(path)
    return (kernel or builtin_kernel()).create("source", config, path=("source",))


def tokenizer_of(
    table: LengthTable,
    *,
    kernel: Kernel | None = None,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """The tokenizer a length cache was measured with, checked against its recorded hash.

    :param table: a loaded length cache (its ``meta["tokenizer_config"]`` and hash).
    :param kernel: creates the tokenizer (default: :func:`~laden.kernel.builtin_kernel`).
    :param options: settings that override the recorded ones (``laden write -T``).
    :raises ConfigError: the rebuilt tokenizer's hash is not the recorded one.
    """
    from laden.kernel import builtin_kernel

    meta = table.meta
    config = dict(meta.get("tokenizer_config") or {"name": meta.get("tokenizer", "bytes")})
    config.update(options or {})
    tokenizer = (kernel or builtin_kernel()).create("tokenizer", config, path=("tokenizer",))
    if meta.get("tokenizer_hash") and tokenizer.fingerprint() != meta["tokenizer_hash"]:
        raise ConfigError(
            f"tokenizer {config} is not the one the lengths were measured with "
            f"(hash {meta['tokenizer_hash']}); pass its settings with -T KEY=VALUE",
            path=("tokenizer",),
        )
    return tokenizer


def _assemble(source: IndexedSource, parts: list[tuple[ChunkMeasure, int]]) -> LengthTable:
    def cat(name: str) -> np.ndarray:
        arrays = [getattr(p, name) for p, _ in parts]
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)

    length = cat("length")
    offset = cat("offset")
    key = None
    if any(p.key is not None for p, _ in parts):

        def keys_of(p: Any) -> np.ndarray:
            return p.key if p.key is not None else np.full(p.length.size, -1, dtype=np.int64)

        key = np.concatenate([keys_of(p) for p, _ in parts])
        if (key < 0).any():
            first = _first_line(parts, lambda p: keys_of(p) < 0)
            name = source.field_name("key")
            raise DataError(f"row has no {name!r} while others do", file=source.path, line=first)
    ids = None
    if any(p.ids is not None for p, _ in parts):
        has_id = cat("has_id").astype(bool)
        if not has_id.all():
            first = _first_line(parts, lambda p: ~p.has_id)
            name = source.field_name("id")
            raise DataError(f"row has no {name!r} while others do", file=source.path, line=first)
        values = [v for p, _ in parts for v in (p.ids or [])]
        if all(isinstance(v, int) for v in values):
            ids = np.asarray(values, dtype=np.int64)
        else:
            ids = np.asarray([str(v) for v in values])
    return LengthTable(
        length=length, offset=offset, key=key, ids=ids, stage_length=_stages(parts, length.size)
    )


def _stages(parts: list[tuple[ChunkMeasure, int]], n: int) -> np.ndarray | None:
    """The parts' ``[rows, stages]`` columns side by side, zero-filled to the widest."""
    if not any(p.stage_length is not None for p, _ in parts):
        return None
    width = max(p.stage_length.shape[1] for p, _ in parts if p.stage_length is not None)
    out = np.zeros((n, width), dtype=np.int64)
    row = 0
    for p, _ in parts:
        rows = p.length.size
        if p.stage_length is not None:
            out[row : row + rows, : p.stage_length.shape[1]] = p.stage_length
        else:  # a part without stages: one stage of its whole length
            out[row : row + rows, 0] = p.length
        row += rows
    return out


def _first_line(parts: list[tuple[Any, int]], bad: Any) -> int:
    for part, base in parts:
        where = np.flatnonzero(bad(part))
        if where.size:
            return int(base + part.line[where[0]] + 1)
    raise AssertionError("no bad row")  # pragma: no cover

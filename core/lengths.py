"""Length caches: measure every sample once, save the columns, reuse them.

A length cache is a directory::

    meta.json        format_version, dataset digest, tokenizer hash, counts, columns
    length.zst       int64 token counts (zstd)
    offset.zst       int64 byte offsets into the dataset
    key.zst          int64 bucket keys (optional)
    ids.zst          int64 ids, or ids_blob.zst + ids_offsets.zst for string ids

It is written atomically: a crash leaves the previous cache (or none).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from laden.errors import DataError
from laden.io import atomic_directory, file_digest, read_array, read_json, write_array, write_json
from laden.progress import Progress
from laden.records import LengthTable, offsets_from_sizes

__all__ = ["FORMAT_VERSION", "build_lengths", "load_lengths", "save_lengths"]

FORMAT_VERSION = 1


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


def save_lengths(table: LengthTable, directory: str | os.PathLike[str]) -> Path:
    """Write ``table`` as a length cache directory (atomically); returns its path."""
    target = Path(directory)
    columns: dict[str, np.ndarray] = {"length": table.length}
    if table.offset is not None:
        columns["offset"] = table.offset
    if table.key is not None:
        columns["key"] = table.key
    if table.ids is not None:
        columns.update(_encode_ids(table.ids))
    with atomic_directory(target) as tmp:
        infos = {name: write_array(tmp, name, array) for name, array in columns.items()}
        meta = {
            **dict(table.meta),
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
    meta = read_json(root / "meta.json")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"format_version {version!r} is not supported (expected {FORMAT_VERSION})",
            file=str(root / "meta.json"),
        )
    infos = meta.pop("columns")
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
    )
    if table.digest() != meta.get("table_digest"):
        raise DataError("columns do not match the recorded digest", file=str(root / "meta.json"))
    return table


def _measure(task: tuple[Any, Any, int, int]) -> Any:
    source, tokenizer, start, end = task
    return source.measure(start, end, tokenizer)


def _source_settings(source: Any) -> dict[str, Any]:
    from laden.serde import config_of

    settings = config_of(source)
    settings.pop("chunk_bytes", None)  # how it is read, not what it holds
    return settings


def _tokenizer_settings(tokenizer: Any) -> dict[str, Any]:
    from laden.serde import config_of

    return config_of(tokenizer)


def build_lengths(
    source: Any,
    tokenizer: Any,
    *,
    output: str | os.PathLike[str] | None = None,
    executor: Any = None,
    reuse: bool = True,
    progress: bool | None = None,
) -> LengthTable:
    """Measure every row of ``source`` with ``tokenizer`` into a :class:`LengthTable`.

    Work is split into byte ranges and run on ``executor`` (default: ``local``
    with one worker per CPU). With ``output``, the table is saved there, and a
    rerun whose dataset digest, tokenizer hash and source settings match reuses
    it without measuring again (``table.meta["reused"]`` says so).

    Malformed rows stop the build with a DataError naming file and line, or,
    with the source's ``on_error = "skip"``, are left out and counted in
    ``meta["skipped"]`` (their lines in ``meta["skipped_lines"]``, first 100).
    """
    from laden.kernel import default_kernel

    dataset_digest = file_digest(source.path)
    identity = {
        "dataset": os.path.abspath(source.path),
        "dataset_digest": dataset_digest,
        "dataset_bytes": os.path.getsize(source.path),
        "tokenizer": type(tokenizer).name,
        "tokenizer_hash": tokenizer.fingerprint(),
        "tokenizer_config": _tokenizer_settings(tokenizer),
        "source": _source_settings(source),
    }
    if output is not None and reuse and (Path(output) / "meta.json").exists():
        try:
            cached = load_lengths(output)
        except DataError:
            cached = None  # damaged: measure again and overwrite
        same = ("dataset_digest", "tokenizer_hash", "source")
        if cached is not None and all(cached.meta.get(k) == identity[k] for k in same):
            return attrs.evolve(cached, meta={**cached.meta, "reused": True})
    if executor is None:
        executor = default_kernel().create("executor", "local")
    chunks = source.chunks()
    if len(chunks) <= 1 and hasattr(executor, "workers"):
        executor = attrs.evolve(executor, workers=0)  # no pool start-up for one range
    tasks = [(source, tokenizer, start, end) for start, end in chunks]
    parts = []
    line_base = 0
    skipped_lines: list[int] = []
    skipped = blank = 0
    bar = Progress(identity["dataset_bytes"], "measuring", enabled=progress, unit="bytes")
    with bar:
        results = executor.map(_measure, tasks, total=len(tasks))
        for (start, end), part in zip(chunks, results, strict=True):
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
    meta = {
        **identity,
        "num_lines": line_base,
        "skipped": skipped,
        "skipped_lines": skipped_lines[:100],
        "blank": blank,
    }
    table = attrs.evolve(table, meta=meta)
    if output is not None:
        save_lengths(table, output)
    return table


def _assemble(source: Any, parts: list[tuple[Any, int]]) -> LengthTable:
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
            raise DataError(
                f"row has no {source.key_field!r} while others do", file=source.path, line=first
            )
    ids = None
    if any(p.ids is not None for p, _ in parts):
        has_id = cat("has_id").astype(bool)
        if not has_id.all():
            first = _first_line(parts, lambda p: ~p.has_id)
            raise DataError(
                f"row has no {source.id_field!r} while others do", file=source.path, line=first
            )
        values = [v for p, _ in parts for v in (p.ids or [])]
        if all(isinstance(v, int) for v in values):
            ids = np.asarray(values, dtype=np.int64)
        else:
            ids = np.asarray([str(v) for v in values])
    return LengthTable(length=length, offset=offset, key=key, ids=ids)


def _first_line(parts: list[tuple[Any, int]], bad: Any) -> int:
    for part, base in parts:
        where = np.flatnonzero(bad(part))
        if where.size:
            return int(base + part.line[where[0]] + 1)
    raise AssertionError("no bad row")  # pragma: no cover

"""Batch files: every batch of a plan collated once and written by a writer plugin.

:func:`write_batches` turns a plan (or one rank's shard) into one file per
batch in an output directory, in parallel through an executor, and keeps a
``manifest.json`` there: the plan's fingerprint, the writer and backend
configs, and per file its epoch, step, rank, size, file checksum and content
checksum (a digest of the arrays, the same whatever the writer). Every file
is written under a temporary name, fsynced and renamed; the manifest is
replaced atomically. After a crash (even ``kill -9``) a rerun with
``resume=True`` keeps complete files, sweeps temporaries, redoes the rest,
and ends with the content checksums of an uninterrupted run.

:func:`verify_directory` re-checks every file against the manifest.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from laden.collate import BatchLayout
from laden.errors import ConfigError, DataError, LadenError
from laden.io import atomic_open, file_digest, plain_json, read_json, write_json
from laden.plan import BatchPlan
from laden.records import LengthTable, array_digest
from laden.samples import SourceSamples
from laden.serde import config_of

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "DiskFullError",
    "content_digest",
    "file_name",
    "load_manifest",
    "verify_directory",
    "write_batches",
]

MANIFEST = "manifest.json"
#: Version of the manifest layout.
FORMAT_VERSION = 1
#: Errors that mean the disk (or a size cap) is full: stop, keep what is written.
_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_NAME = re.compile(r"^e(\d{4})-s(\d{7})-r(\d{3})(\.\w+)$")


class DiskFullError(LadenError, OSError):
    """No room left for the next batch file; everything written so far is kept."""


def file_name(epoch: int, step: int, rank: int, suffix: str) -> str:
    """``e0001-s0000042-r000.npz``: sorts in plan order."""
    return f"e{epoch:04d}-s{step:07d}-r{rank:03d}{suffix}"


def content_digest(arrays: Mapping[str, Any]) -> str:
    """A digest of the columns (names, dtypes, shapes, values), whatever the file format."""
    keys = sorted(k for k in arrays if k not in ("epoch", "step", "rank", "padding"))
    parts = [np.frombuffer("\0".join(keys).encode(), dtype=np.uint8)]
    parts += [np.asarray(arrays[k]) for k in keys]
    return array_digest(*parts)


@attrs.frozen(kw_only=True)
class _Task:
    """One batch, with just what a worker needs to read and collate it."""

    epoch: int
    step: int
    rank: int
    padding: bool
    layout: BatchLayout  # over local sample numbers 0..k-1
    sample_ids: np.ndarray  # local -> global sample id
    lengths: np.ndarray  # of the local samples
    offsets: np.ndarray  # byte offsets of the local samples


@attrs.frozen(kw_only=True)
class _Context:
    source: Any
    tokenizer: Any
    writer: Any
    backend: Any
    output: str
    fingerprint: str


def _write_one(context: _Context, task: _Task) -> dict[str, Any]:
    name = file_name(task.epoch, task.step, task.rank, context.writer.suffix)
    record: dict[str, Any] = {
        "file": name,
        "epoch": task.epoch,
        "step": task.step,
        "rank": task.rank,
        "padding": task.padding,
    }
    try:
        table = LengthTable(length=task.lengths, offset=task.offsets)
        samples = SourceSamples(source=context.source, tokenizer=context.tokenizer, table=table)
        arrays = dict(context.backend.host(task.layout, samples))
        arrays["sample_ids"] = task.sample_ids[arrays["sample_ids"]]
        arrays["max_seqlen"] = np.asarray(arrays["max_seqlen"], dtype=np.int64)
        meta = {
            "epoch": task.epoch,
            "step": task.step,
            "rank": task.rank,
            "padding": task.padding,
            "fingerprint": context.fingerprint,
        }
        path = Path(context.output) / name
        with atomic_open(path) as f:
            context.writer.write(f, arrays, meta)
    except OSError as exc:
        if exc.errno in _FULL:
            raise DiskFullError(exc.errno, f"no room to write {name}: {exc.strerror}") from None
        return {**record, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:
        return {**record, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {
        **record,
        "status": "ok",
        "bytes": path.stat().st_size,
        "blake2b": file_digest(path),
        "content": content_digest(arrays),
    }


def _tasks(plan: BatchPlan, table: LengthTable, skip: set[str], suffix: str) -> Iterator[_Task]:
    """The batches still to write, made as the executor asks for them (a plan may hold
    hundreds of thousands)."""
    assert table.offset is not None
    lengths = plan.pack.pack_lengths if plan.pack is not None else table.length
    for epoch, step, spec in plan.iter_from():
        if file_name(epoch, step, plan.rank, suffix) in skip:
            continue
        layout = BatchLayout.for_batch(spec, lengths, plan.pack)
        uniq, local = np.unique(layout.sample, return_inverse=True)
        yield (
            _Task(
                epoch=epoch,
                step=step,
                rank=plan.rank,
                padding=spec.padding,
                layout=attrs.evolve(layout, sample=local.reshape(-1)),
                sample_ids=uniq,
                lengths=table.length[uniq],
                offsets=table.offset[uniq],
            )
        )


def load_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an output directory (DataError naming it when damaged)."""
    path = Path(directory) / MANIFEST
    manifest = read_json(path)
    if not isinstance(manifest, dict) or "files" not in manifest:
        raise DataError("not a laden batch manifest", file=str(path))
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise DataError(
            f"format_version {manifest['format_version']} is newer than this laden reads",
            file=str(path),
        )
    return manifest


def _check_inputs(plan: BatchPlan, table: LengthTable, source: Any) -> None:
    plan.require_table(table)
    if table.offset is None:
        raise DataError("the length table has no byte offsets; build it with `laden lengths build`")
    recorded = table.meta.get("dataset_digest")
    if recorded is not None:
        actual = file_digest(source.path)
        if actual != recorded:
            raise DataError(
                f"the dataset no longer matches the length table (digest {actual}, the table "
                f"was measured on {recorded}); rebuild the lengths and the plan",
                file=str(source.path),
            )


def _recover(output: Path, writer: Any, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Complete files of an interrupted run: the manifest's, plus renamed-but-unrecorded ones."""
    for stale in output.glob(".*.tmp"):  # a file being written when the run died
        stale.unlink(missing_ok=True)
    done = {
        name: record
        for name, record in manifest.get("files", {}).items()
        if record.get("status") == "ok" and (output / name).exists()
    }
    for path in sorted(output.iterdir()):
        if path.name in done or not _NAME.match(path.name):
            continue
        # Renamed into place (so complete) but the manifest was not updated yet.
        try:
            arrays = writer.read(str(path))
        except Exception:
            path.unlink(missing_ok=True)  # not readable: write it again
            continue
        epoch, step, rank = (int(g) for g in _NAME.match(path.name).groups()[:3])  # type: ignore[union-attr]
        done[path.name] = {
            "file": path.name,
            "epoch": epoch,
            "step": step,
            "rank": rank,
            "padding": bool(np.asarray(arrays.get("padding", False))),
            "status": "ok",
            "bytes": path.stat().st_size,
            "blake2b": file_digest(path),
            "content": content_digest(arrays),
        }
    return done


def write_batches(
    plan: BatchPlan,
    table: LengthTable,
    source: Any,
    tokenizer: Any,
    writer: Any,
    output: str | os.PathLike[str],
    *,
    backend: Any = None,
    executor: Any = None,
    resume: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    flush_seconds: float = 2.0,
) -> dict[str, Any]:
    """Write every batch of ``plan`` (one rank's, if it is a shard) to ``output``.

    :param table: the length table the plan was built from (with byte offsets).
    :param source: the source the table measured (its file must be unchanged).
    :param tokenizer: the tokenizer the table was measured with.
    :param writer: a writer strategy (``npz``, ``pt``, ``h5``, ...).
    :param backend: the collation settings (default: ``numpy``); arrays are
        written as host arrays whatever backend a reader uses later.
    :param executor: an executor strategy (default: ``local`` in this process).
    :param resume: continue an interrupted run in ``output``.
    :returns: a summary: files ``written``, ``kept`` from before, ``failed``
        (with their errors in the manifest), ``total``, ``seconds``.
    """
    from laden.kernel import default_kernel

    started = time.perf_counter()
    _check_inputs(plan, table, source)
    kernel = default_kernel()
    backend = backend if backend is not None else kernel.create("backend", "numpy")
    executor = (
        executor
        if executor is not None
        else kernel.create("executor", {"name": "local", "workers": 0})
    )
    out = Path(output)
    identity = {
        "fingerprint": plan.fingerprint,
        "rank": plan.rank,
        "world_size": plan.world_size,
        "writer": config_of(writer),
        "backend": config_of(backend),
    }
    manifest: dict[str, Any] = {"format_version": FORMAT_VERSION, **identity, "files": {}}
    if (out / MANIFEST).exists():
        if not resume:
            raise ConfigError(
                f"{out} already holds a batch manifest; pass --resume to continue that run "
                "or choose an empty directory",
                path=("output",),
            )
        previous = load_manifest(out)
        for key, value in identity.items():
            if plain_json(previous.get(key)) != plain_json(value):
                raise ConfigError(
                    f"cannot resume: the manifest's {key} is {previous.get(key)!r}, "
                    f"this run's is {value!r}",
                    path=("output",),
                )
        manifest["files"] = previous["files"]
    elif out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"{out} is not empty; choose an empty directory", path=("output",))
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".laden-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to {out}: {exc.strerror}", path=("output",)) from None

    done = _recover(out, writer, manifest) if resume else {}
    manifest["files"] = dict(done)
    total = plan.total_steps
    tasks = _tasks(plan, table, set(done), writer.suffix)
    todo = total - sum(1 for name in done if _NAME.match(name))
    context = _Context(
        source=source,
        tokenizer=tokenizer,
        writer=writer,
        backend=backend,
        output=str(out),
        fingerprint=plan.fingerprint,
    )
    written = failed = 0
    last_flush = time.monotonic()

    def flush(complete: bool = False) -> None:
        manifest["complete"] = complete
        manifest["files"] = dict(sorted(manifest["files"].items()))
        write_json(out / MANIFEST, plain_json(manifest))

    flush()
    try:
        for record in executor.map(
            functools.partial(_write_one, context), tasks, total=todo, progress=progress
        ):
            manifest["files"][record["file"]] = record
            if record["status"] == "ok":
                written += 1
            else:
                failed += 1
            if time.monotonic() - last_flush >= flush_seconds:
                flush()
                last_flush = time.monotonic()
    except DiskFullError:
        flush()
        raise
    except OSError as exc:
        if exc.errno in _FULL:
            flush()
            raise DiskFullError(exc.errno, f"no room left in {out}: {exc.strerror}") from None
        raise
    ok = sum(1 for r in manifest["files"].values() if r["status"] == "ok")
    flush(complete=ok == total)
    return {
        "written": written,
        "kept": len(done),
        "failed": failed,
        "total": total,
        "seconds": time.perf_counter() - started,
        "output": str(out),
    }


def verify_directory(directory: str | os.PathLike[str]) -> list[str]:
    """Problems found re-checking every file against the manifest (empty: all good)."""
    root = Path(directory)
    manifest = load_manifest(root)
    problems = []
    for name, record in manifest["files"].items():
        path = root / name
        if record.get("status") != "ok":
            problems.append(f"{path}: failed when written ({record.get('error')})")
            continue
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if size != record["bytes"]:
            problems.append(f"{path}: {size} bytes, the manifest says {record['bytes']}")
            continue
        if file_digest(path) != record["blake2b"]:
            problems.append(f"{path}: checksum mismatch (the file was altered)")
    if not manifest.get("complete"):
        problems.append(f"{root / MANIFEST}: the run did not finish (use `laden write --resume`)")
    return problems

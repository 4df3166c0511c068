"""Batch files: every batch of a plan collated once and written by a writer plugin.

:func:`write_batches` turns a plan (or one rank's shard) into one file per
batch in an output directory, in parallel through an executor, and keeps a
``manifest.json`` there: the plan's fingerprint, the writer and backend
configs, and per file its epoch, step, rank, size, file checksum and content
checksum (a digest of the arrays, the same whatever the writer). Every file
is written under a temporary name, fsynced and renamed; the manifest is
replaced atomically. After a crash (even ``kill -9``) a rerun with
``resume=True`` keeps complete files, sweeps temporaries, redoes the rest,
and ends with the content checksums of an uninterrupted run: every kept file
is re-checked against the manifest (size and checksum) and a damaged one is
rewritten. One run at a time: an exclusive lock on ``.laden-write.lock`` in
the output directory makes a second run into it fail at once.

A sample that several batches read (one split across packs, or any sample of
a plan with several epochs) is read and tokenized once per write, into a
temporary token file in the output directory, and sliced from there.

:func:`verify_directory` re-checks every file against the manifest.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import itertools
import os
import re
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from laden.collate import BatchLayout
from laden.collate.samples import SourceSamples
from laden.errors import ConfigError, DataError, LadenError, add_note
from laden.io import atomic_open, file_digest, plain_json, read_json, write_json
from laden.plan import BatchPlan
from laden.records import LengthTable, array_digest, csr_take
from laden.serde import config_of

__all__ = [
    "FORMAT_VERSION",
    "LOCK",
    "MANIFEST",
    "DiskFullError",
    "OutputBusyError",
    "content_digest",
    "file_checksums",
    "file_name",
    "load_manifest",
    "verify_directory",
    "write_batches",
]

MANIFEST = "manifest.json"
#: The lock file of a running ``laden write`` (holds its pid).
LOCK = ".laden-write.lock"
#: The temporary token file of samples read by several batches (``.tmp``: swept on resume).
_TOKENS = ".laden-tokens"
#: Below this many shared tokens, they are tokenized in this process (no worker start-up).
_INLINE_TOKENS = 1 << 18
#: Version of the manifest layout.
FORMAT_VERSION = 1
#: Errors that mean the disk (or a size cap) is full: stop, keep what is written.
_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_NAME = re.compile(r"^e(\d{4})-s(\d{7})-r(\d{3})(\.\w+)$")


class DiskFullError(LadenError, OSError):
    """No room left for the next batch file; everything written so far is kept."""


class OutputBusyError(LadenError):
    """Another ``laden write`` holds the output directory."""


def file_name(epoch: int, step: int, rank: int, suffix: str) -> str:
    """``e0001-s0000042-r000.npz``: sorts in plan order."""
    return f"e{epoch:04d}-s{step:07d}-r{rank:03d}{suffix}"


def content_digest(arrays: Mapping[str, Any]) -> str:
    """A digest of the columns (names, dtypes, shapes, values), whatever the file format."""
    keys = sorted(k for k in arrays if k not in ("epoch", "step", "rank", "padding"))
    parts = [np.frombuffer("\0".join(keys).encode(), dtype=np.uint8)]
    parts += [np.asarray(arrays[k]) for k in keys]
    return array_digest(*parts)


def file_checksums(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> tuple[int, str, int]:
    """``(size, blake2b, crc32)`` of a file, read once.

    ``blake2b`` is the manifest's file checksum (what ``laden verify`` checks,
    equal to :func:`laden.io.file_digest`); ``crc32`` is the cheap one
    :class:`~laden.files.read.BatchReader` checks on every read.
    """
    h = hashlib.blake2b(digest_size=16)
    crc = size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            crc = zlib.crc32(block, crc)
            size += len(block)
    return size, h.hexdigest(), crc


def _identity_problem(arrays: Mapping[str, Any], record: Mapping[str, Any]) -> str | None:
    """Why a file's stored epoch/step/rank are not its record's (None: they match or are absent)."""
    for key in ("epoch", "step", "rank"):
        if key in arrays and int(np.asarray(arrays[key])) != int(record[key]):
            held = ", ".join(
                f"{k} {int(np.asarray(arrays[k]))}"
                for k in ("epoch", "step", "rank")
                if k in arrays
            )
            return (
                f"the file holds {held}, the manifest says epoch {record['epoch']}, "
                f"step {record['step']}, rank {record['rank']} (a file copied or renamed over it)"
            )
    return None


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
    #: The shared token file's name stem (None: none), unique to one write.
    tokens: str | None = None


# ------------------------------------------------------------ shared tokens


def _token_paths(output: str | Path, stem: str) -> dict[str, Path]:
    root = Path(output)
    return {
        part: root / f"{stem}.{part}.tmp" for part in ("ids", "mask", "sample", "offsets", "masked")
    }


@attrs.frozen(kw_only=True)
class _SharedTokens:
    """Samples tokenized ahead, memory-mapped: ``sample`` (sorted global ids),
    their tokens ``ids[offsets[i]:offsets[i+1]]`` and loss masks (``masked``: had one)."""

    sample: np.ndarray
    offsets: np.ndarray
    masked: np.ndarray
    ids: np.ndarray
    mask: np.ndarray

    @classmethod
    def open(cls, output: str, stem: str) -> _SharedTokens:
        paths = _token_paths(output, stem)
        arrays = {k: np.load(paths[k], mmap_mode="r") for k in ("sample", "offsets", "masked")}
        size = int(arrays["offsets"][-1])
        # int32 unless an id did not fit (then the whole file was widened to int64).
        ids_dtype = np.int32 if paths["ids"].stat().st_size == 4 * size else np.int64

        def mapped(path: Path, dtype: Any) -> np.ndarray:
            if not size:  # an empty file cannot be mapped
                return np.zeros(0, dtype=dtype)
            return np.memmap(path, dtype=dtype, mode="r")

        return cls(
            ids=mapped(paths["ids"], ids_dtype), mask=mapped(paths["mask"], np.bool_), **arrays
        )


#: The shared token files open in this process, by stem (one write at a time).
_OPEN_TOKENS: dict[str, _SharedTokens] = {}


def _shared_tokens(context: _Context) -> _SharedTokens | None:
    if context.tokens is None:
        return None
    shared = _OPEN_TOKENS.get(context.tokens)
    if shared is None:
        _OPEN_TOKENS.clear()  # a finished write's files: drop the maps
        shared = _OPEN_TOKENS[context.tokens] = _SharedTokens.open(context.output, context.tokens)
    return shared


class _TaskSamples:
    """A batch's samples: from the shared token file when tokenized ahead, else read
    from the source and tokenized here (counted in ``tokenized``)."""

    def __init__(self, context: _Context, task: _Task) -> None:
        self.task = task
        self.shared = _shared_tokens(context)
        self.direct = SourceSamples(
            source=context.source,
            tokenizer=context.tokenizer,
            table=LengthTable(length=task.lengths, offset=task.offsets),
        )
        self.tokenized = 0

    def fetch(self, ids: np.ndarray) -> dict[int, dict[str, Any]]:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        out: dict[int, dict[str, Any]] = {}
        hit = np.zeros(ids.size, dtype=bool)
        shared = self.shared
        if shared is not None and shared.sample.size and ids.size:
            wanted = self.task.sample_ids[ids]
            at = np.minimum(np.searchsorted(shared.sample, wanted), shared.sample.size - 1)
            hit = shared.sample[at] == wanted
            for i, p in zip(ids[hit].tolist(), at[hit].tolist(), strict=True):
                start, end = int(shared.offsets[p]), int(shared.offsets[p + 1])
                sample: dict[str, Any] = {
                    "input_ids": np.asarray(shared.ids[start:end], dtype=np.int64)
                }
                if shared.masked[p]:
                    sample["loss_mask"] = np.array(shared.mask[start:end], dtype=bool)
                out[i] = sample
        if not hit.all():
            fetched = self.direct.fetch(ids[~hit])
            self.tokenized += sum(int(s["input_ids"].size) for s in fetched.values())
            out.update(fetched)
        return out


def _tokenize_chunk(context: _Context, chunk: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Tokens of some samples (their lengths and offsets given), in order, for the token file."""
    lengths, offsets = chunk
    samples = SourceSamples(
        source=context.source,
        tokenizer=context.tokenizer,
        table=LengthTable(length=lengths, offset=offsets),
    )
    fetched = samples.fetch(np.arange(lengths.size))
    items = [fetched[i] for i in range(lengths.size)]
    sizes = np.array([s["input_ids"].size for s in items], dtype=np.int64)
    ids = (
        np.concatenate([s["input_ids"] for s in items]) if items else np.zeros(0, np.int64)
    ).astype(np.int64, copy=False)
    masked = np.array(["loss_mask" in s for s in items], dtype=bool)
    mask = np.ones(ids.size, dtype=bool)
    if masked.any():
        mask = np.concatenate(
            [s.get("loss_mask", np.ones(s["input_ids"].size, bool)) for s in items]
        ).astype(bool)
    return {"sizes": sizes, "ids": ids, "mask": mask, "masked": masked}


def _shared_samples(plan: BatchPlan, table: LengthTable, skip: set[tuple[int, int]]) -> np.ndarray:
    """The samples that more than one of the batches still to write reads (sorted)."""
    n = len(table)
    counts = np.zeros(n, dtype=np.int64)
    for e, epoch in enumerate(plan.epochs):
        sizes = np.diff(epoch.offsets)
        wanted = np.ones(sizes.size, dtype=bool)
        for s in (s for (ee, s) in skip if ee == e):
            wanted[s] = False
        batch = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
        units = np.asarray(epoch.order, dtype=np.int64)
        keep = wanted[batch]
        units, batch = units[keep], batch[keep]
        if plan.pack is not None:
            where, new = csr_take(plan.pack.offsets, units)
            samples = plan.pack.order[where].astype(np.int64)
            batch = np.repeat(batch, np.diff(new))
            live = plan.pack.seg_length[where] > 0
        else:
            samples = units
            live = table.length[units] > 0
        key = np.unique(batch[live] * n + samples[live])  # each sample once per batch
        counts += np.bincount(key % n, minlength=n)
    return np.flatnonzero(counts > 1)


def _tokenize_ahead(
    context: _Context,
    shared: np.ndarray,
    table: LengthTable,
    executor: Any,
    progress: Callable[[int, int | None], None] | None,
) -> int:
    """Write the shared samples' tokens to the token file; returns the tokens read."""
    assert table.offset is not None
    assert context.tokens is not None
    paths = _token_paths(context.output, context.tokens)
    lengths = table.length[shared].astype(np.int64)
    # Chunks of about 1M tokens (or 4096 samples), in file order.
    bounds = [0]
    total = np.cumsum(lengths)
    while bounds[-1] < shared.size:
        base = int(total[bounds[-1] - 1]) if bounds[-1] else 0
        end = int(np.searchsorted(total, base + (1 << 20), side="right"))
        bounds.append(min(max(end, bounds[-1] + 1), bounds[-1] + 4096, shared.size))
    chunks = (
        (table.length[shared[a:b]], table.offset[shared[a:b]])
        for a, b in itertools.pairwise(bounds)
    )
    sizes, masked = [], []
    dtype: type[np.signedinteger[Any]] = np.int32
    narrow = np.iinfo(np.int32)
    count = 0
    work = functools.partial(_tokenize_chunk, context)
    # A few tokens are quicker to tokenize here than to start worker processes for.
    parts = (
        map(work, chunks)
        if int(lengths.sum()) < _INLINE_TOKENS
        else executor.map(work, chunks, total=len(bounds) - 1)
    )
    with open(paths["ids"], "wb") as ids_file, open(paths["mask"], "wb") as mask_file:
        for done, part in enumerate(parts, 1):
            ids = part["ids"]
            if (
                dtype is np.int32
                and ids.size
                and (ids.min() < narrow.min or ids.max() > narrow.max)
            ):
                # An id beyond int32: widen what is written so far.
                ids_file.flush()
                old = np.fromfile(paths["ids"], dtype=np.int32).astype(np.int64)
                ids_file.seek(0)
                ids_file.truncate()
                old.tofile(ids_file)
                dtype = np.int64
            ids.astype(dtype).tofile(ids_file)
            part["mask"].astype(np.bool_).tofile(mask_file)
            sizes.append(part["sizes"])
            masked.append(part["masked"])
            count += int(ids.size)
            if progress is not None:
                progress(done, len(bounds) - 1)
    np.save(paths["sample"], shared.astype(np.int64))
    np.save(
        paths["offsets"],
        np.concatenate([[0], np.cumsum(np.concatenate(sizes))]).astype(np.int64)
        if sizes
        else np.zeros(1, dtype=np.int64),
    )
    np.save(paths["masked"], np.concatenate(masked) if masked else np.zeros(0, dtype=bool))
    for name in ("sample", "offsets", "masked"):  # np.save appends .npy
        Path(f"{paths[name]}.npy").replace(paths[name])
    return count


def _remove_tokens(output: Path, stem: str | None) -> None:
    if stem is None:
        return
    _OPEN_TOKENS.pop(stem, None)
    for path in _token_paths(output, stem).values():
        path.unlink(missing_ok=True)
        Path(f"{path}.npy").unlink(missing_ok=True)


# ------------------------------------------------------------------ writing


def _write_one(context: _Context, task: _Task) -> dict[str, Any]:
    name = file_name(task.epoch, task.step, task.rank, context.writer.suffix)
    record: dict[str, Any] = {
        "file": name,
        "epoch": task.epoch,
        "step": task.step,
        "rank": task.rank,
        "padding": task.padding,
    }
    samples = None
    try:
        samples = _TaskSamples(context, task)
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
        size, blake2b, crc32 = file_checksums(path)
    except OSError as exc:
        if exc.errno in _FULL:
            raise DiskFullError(exc.errno, f"no room to write {name}: {exc.strerror}") from None
        return {
            **record,
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "_tokenized": samples.tokenized if samples else 0,
        }
    except Exception as exc:
        return {
            **record,
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "_tokenized": samples.tokenized if samples else 0,
        }
    return {
        **record,
        "status": "ok",
        "bytes": size,
        "blake2b": blake2b,
        "crc32": crc32,
        "content": content_digest(arrays),
        "_tokenized": samples.tokenized,
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


def _kept_file_problem(path: Path, record: Mapping[str, Any]) -> str | None:
    """Why a file the manifest lists as written may not be kept (None: it is intact)."""
    try:
        size = path.stat().st_size
        if size != record.get("bytes"):
            return f"{size} bytes, the manifest says {record.get('bytes')}"
        if "crc32" in record:
            _, _, crc = file_checksums(path)
            if crc != record["crc32"]:
                return "checksum mismatch (the file was altered)"
        elif file_digest(path) != record.get("blake2b"):
            return "checksum mismatch (the file was altered)"
    except FileNotFoundError:
        return "missing"
    return None


def _recover(
    output: Path,
    writer: Any,
    manifest: dict[str, Any],
    progress: Callable[[int, int | None], None] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Intact files of an interrupted run, and the damaged ones (name -> why) it deleted.

    Every file the manifest lists is re-checked (size and checksum): a
    truncated, altered, swapped or missing file is not kept, so it is written
    again. Files renamed into place after the last manifest update are read
    back and kept when readable and holding the batch their name says.
    """
    for stale in output.glob(".*.tmp"):  # a file being written when the run died
        stale.unlink(missing_ok=True)
    done: dict[str, dict[str, Any]] = {}
    damaged: dict[str, str] = {}
    listed = [
        (name, record)
        for name, record in manifest.get("files", {}).items()
        if record.get("status") == "ok"
    ]
    for count, (name, record) in enumerate(listed, 1):
        problem = _kept_file_problem(output / name, record)
        if problem is None:
            done[name] = record
        else:
            damaged[name] = problem
            (output / name).unlink(missing_ok=True)
        if progress is not None:
            progress(count, len(listed))
    for path in sorted(output.iterdir()):
        match = _NAME.match(path.name)
        if path.name in done or not match:
            continue
        epoch, step, rank = (int(g) for g in match.groups()[:3])
        new = {"file": path.name, "epoch": epoch, "step": step, "rank": rank}
        # Renamed into place (so complete) but the manifest was not updated yet.
        try:
            arrays = writer.read(str(path))
            problem = _identity_problem(arrays, new)
        except Exception as exc:
            problem = f"unreadable ({type(exc).__name__})"
        if problem is not None:
            damaged[path.name] = problem
            path.unlink(missing_ok=True)  # write it again
            continue
        size, blake2b, crc32 = file_checksums(path)
        done[path.name] = {
            **new,
            "padding": bool(np.asarray(arrays.get("padding", False))),
            "status": "ok",
            "bytes": size,
            "blake2b": blake2b,
            "crc32": crc32,
            "content": content_digest(arrays),
        }
    return done, damaged


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold the output directory's write lock (``flock``; the kernel frees it when the
    process dies, however it dies). Another holder is an :class:`OutputBusyError`."""
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusyError(
                f"another laden write is running in {out} (pid {holder}); wait for it to "
                "finish, or stop it and rerun with --resume"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed it as we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # still locked: no one else holds this inode
        os.close(fd)


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
    force: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    stage_progress: Callable[[str, int, int | None], None] | None = None,
    tokenize_once: bool = True,
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
    :param resume: continue an interrupted run in ``output``; every file kept
        from it is re-checked first and a damaged one is written again.
    :param force: start over in an ``output`` that holds a previous run:
        its batch files and manifest are deleted (under the lock, so never
        under a running write); anything else there is still refused.
    :param progress: ``progress(done, total)`` as batch files are written.
    :param stage_progress: ``stage_progress(what, done, total)`` during the
        steps before writing (checking kept files, tokenizing shared samples).
    :param tokenize_once: read and tokenize a sample that several batches
        read once, into a temporary token file in ``output`` (removed at the
        end); ``False`` reads it again for every batch (no temporary file).
    :returns: a summary: files ``written``, ``kept`` from before, ``damaged``
        (kept files found damaged and written again, with ``damaged_files``),
        ``failed`` (with their errors in the manifest), ``total``,
        ``tokens_tokenized`` (tokens read from the dataset and tokenized, or
        taken from its ids), ``seconds``.
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
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".laden-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to {out}: {exc.strerror}", path=("output",)) from None
    with _exclusive(out):
        return _write_locked(
            plan,
            table,
            source,
            tokenizer,
            writer,
            out,
            backend=backend,
            executor=executor,
            resume=resume,
            force=force,
            progress=progress,
            stage_progress=stage_progress,
            tokenize_once=tokenize_once,
            flush_seconds=flush_seconds,
            started=started,
        )


def _write_locked(
    plan: BatchPlan,
    table: LengthTable,
    source: Any,
    tokenizer: Any,
    writer: Any,
    out: Path,
    *,
    backend: Any,
    executor: Any,
    resume: bool,
    force: bool,
    progress: Callable[[int, int | None], None] | None,
    stage_progress: Callable[[str, int, int | None], None] | None,
    tokenize_once: bool,
    flush_seconds: float,
    started: float,
) -> dict[str, Any]:
    identity = {
        "fingerprint": plan.fingerprint,
        "rank": plan.rank,
        "world_size": plan.world_size,
        "writer": config_of(writer),
        "backend": config_of(backend),
    }
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": "laden.batches",
        **identity,
        "files": {},
    }
    if force and resume:
        raise ConfigError("force starts over and resume continues: pass one", path=("output",))
    if force and (out / MANIFEST).exists():
        load_manifest(out)  # only a batch directory laden wrote
        for path in out.iterdir():
            ours = path.name == MANIFEST or _NAME.match(path.name)
            temporary = path.name.startswith(".") and path.name.endswith(".tmp")
            if (ours or temporary) and path.is_file():
                path.unlink(missing_ok=True)
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
    elif any(p.name != LOCK for p in out.iterdir()):  # with --resume too: not laden's run
        raise ConfigError(f"{out} is not empty; choose an empty directory", path=("output",))

    def stage(what: str) -> Callable[[int, int | None], None] | None:
        if stage_progress is None:
            return None
        return functools.partial(stage_progress, what)

    done, damaged = (
        _recover(out, writer, manifest, stage("checking kept files")) if resume else ({}, {})
    )
    manifest["files"] = dict(done)
    total = plan.total_steps
    todo = total - sum(1 for name in done if _NAME.match(name))
    written = failed = tokenized = 0
    last_flush = time.monotonic()

    def flush(complete: bool = False) -> None:
        manifest["complete"] = complete
        manifest["files"] = dict(sorted(manifest["files"].items()))
        write_json(out / MANIFEST, plain_json(manifest))

    flush()
    context = _Context(
        source=source,
        tokenizer=tokenizer,
        writer=writer,
        backend=backend,
        output=str(out),
        fingerprint=plan.fingerprint,
    )
    try:
        if tokenize_once and todo:
            skip = {
                (int(m.group(1)), int(m.group(2)))
                for m in map(_NAME.match, done)
                if m and int(m.group(3)) == plan.rank
            }
            shared = _shared_samples(plan, table, skip)
            if shared.size:
                context = attrs.evolve(context, tokens=f"{_TOKENS}-{uuid.uuid4().hex[:12]}")
                tokenized += _tokenize_ahead(
                    context, shared, table, executor, stage("tokenizing shared samples")
                )
        tasks = _tasks(plan, table, set(done), writer.suffix)
        for record in executor.map(
            functools.partial(_write_one, context), tasks, total=todo, progress=progress
        ):
            tokenized += record.pop("_tokenized", 0)
            manifest["files"][record["file"]] = record
            if record["status"] == "ok":
                written += 1
            else:
                failed += 1
            if time.monotonic() - last_flush >= flush_seconds:
                flush()
                last_flush = time.monotonic()
    except KeyboardInterrupt as exc:
        flush()  # what is done stays done
        add_note(exc, f"the files written so far are kept in {out}; rerun with --resume")
        raise
    except DiskFullError:
        flush()
        raise
    except OSError as exc:
        if exc.errno in _FULL:
            flush()
            raise DiskFullError(exc.errno, f"no room left in {out}: {exc.strerror}") from None
        raise
    except BaseException:  # Ctrl-C, a bug: record what was written, for --resume
        with contextlib.suppress(OSError):
            flush()
        raise
    finally:
        _remove_tokens(out, context.tokens)
    ok = sum(1 for r in manifest["files"].values() if r["status"] == "ok")
    flush(complete=ok == total)
    return {
        "written": written,
        "kept": len(done),
        "damaged": len(damaged),
        "damaged_files": dict(sorted(damaged.items())),
        "failed": failed,
        "total": total,
        "tokens_tokenized": tokenized,
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

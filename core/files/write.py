"""Batch files: every batch of a plan collated once and written by a writer plugin.

:func:`write_batches` turns a plan (or one rank's shard) into one file per
batch in an output directory, in parallel through an executor, and keeps a
``manifest.json`` there: the plan's fingerprint, the writer and backend
configs, and per file its epoch, step, rank, size, file checksum and content
checksum (a digest of the arrays, the same whatever the writer). Every file
is written under a temporary name, fsynced and renamed. The manifest is a
:class:`~laden.files.manifest.RunManifest`, which owns resume, per-file
status, recovery after a crash, the disk-full stop and the write lock; this
module only says what a batch file is: how to make one, and how to read one
back that was renamed into place but not yet recorded.

A sample that several batches read (one split across packs, or any sample of
a plan with several epochs) is read and tokenized once per write, into a
temporary token file in the output directory, and sliced from there.

:func:`verify_directory` re-checks every file against the manifest.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from laden.batching import smallest_int
from laden.collate import BatchLayout
from laden.collate.samples import SourceSamples
from laden.digest import content_digest
from laden.errors import DataError
from laden.files.manifest import (
    LOCK,
    MANIFEST,
    DiskFullError,
    OutputBusyError,
    RunManifest,
    failure,
    file_problem,
    file_record,
    is_disk_full,
)
from laden.files.manifest import load_manifest as _load_manifest
from laden.io import atomic_open
from laden.plan import BatchPlan
from laden.records import LengthTable, csr_take
from laden.serde import config_of

__all__ = [
    "FORMAT_VERSION",
    "KIND",
    "LOCK",
    "MANIFEST",
    "DiskFullError",
    "OutputBusyError",
    "file_name",
    "is_batch_file",
    "load_manifest",
    "verify_directory",
    "write_batches",
]

#: The temporary token file of samples read by several batches (``.tmp``: swept on resume).
_TOKENS = ".laden-tokens"
#: Below this many shared tokens, they are tokenized in this process (no worker start-up).
_INLINE_TOKENS = 1 << 18
#: Version of the manifest layout.
FORMAT_VERSION = 1
#: The artifact kind of a batch file directory.
KIND = "laden.batches"
_NAME = re.compile(r"^e(\d{4})-s(\d{7})-r(\d{3})(\.\w+)$")


def file_name(epoch: int, step: int, rank: int, suffix: str) -> str:
    """``e0001-s0000042-r000.npz``: sorts in plan order."""
    return f"e{epoch:04d}-s{step:07d}-r{rank:03d}{suffix}"


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
                and smallest_int(int(ids.min()), int(ids.max())) != np.int32
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
        checksums = file_record(path)
    except Exception as exc:
        if is_disk_full(exc):  # stop the run: the next file would not fit either
            raise DiskFullError(exc.errno, f"no room to write {name}: {exc.strerror}") from None
        return {**record, **failure(exc), "_tokenized": samples.tokenized if samples else 0}
    return {
        **record,
        "status": "ok",
        **checksums,
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
    """The manifest of a batch file directory (DataError naming it when damaged)."""
    return _load_manifest(directory, kind=KIND, version=FORMAT_VERSION)


def _check_inputs(plan: BatchPlan, table: LengthTable, source: Any) -> None:
    plan.require_table(table)
    if table.offset is None:
        raise DataError("the length table has no byte offsets; build it with `laden lengths build`")
    recorded = table.meta.get("dataset_digest")
    if recorded is not None:
        actual = source.fingerprint()
        if actual != recorded:
            raise DataError(
                f"the dataset no longer matches the length table (digest {actual}, the table "
                f"was measured on {recorded}); rebuild the lengths and the plan",
                file=str(source.path),
            )


def is_batch_file(name: str) -> bool:
    """``e0000-s0000000-r000.<suffix>``: a batch file name (see :func:`file_name`)."""
    return _NAME.match(name) is not None


def _adopt(writer: Any, path: Path) -> dict[str, Any] | str:
    """A batch file renamed into place but not recorded: its record when it holds the
    batch its name says (else why not; an exception: unreadable)."""
    match = _NAME.match(path.name)
    assert match is not None
    epoch, step, rank = (int(g) for g in match.groups()[:3])
    record = {"file": path.name, "epoch": epoch, "step": step, "rank": rank}
    arrays = writer.read(str(path))
    problem = _identity_problem(arrays, record)
    if problem is not None:
        return problem
    padding = bool(np.asarray(arrays.get("padding", False)))
    return {**record, "padding": padding, "content": content_digest(arrays)}


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
    from laden.kernel import builtin_kernel

    started = time.perf_counter()
    _check_inputs(plan, table, source)
    kernel = builtin_kernel()  # the builtin numpy backend and local executor
    backend = backend if backend is not None else kernel.create("backend", "numpy")
    executor = (
        executor
        if executor is not None
        else kernel.create("executor", {"name": "local", "workers": 0})
    )
    manifest = RunManifest(
        output,
        kind=KIND,
        version=FORMAT_VERSION,
        identity={
            "fingerprint": plan.fingerprint,
            "rank": plan.rank,
            "world_size": plan.world_size,
            "writer": config_of(writer),
            "backend": config_of(backend),
        },
        owns=is_batch_file,
        flush_seconds=flush_seconds,
    )
    out = manifest.directory
    with manifest.locked():
        kept = manifest.open(
            resume=resume,
            force=force,
            adopt=functools.partial(_adopt, writer),
            progress=_stage(stage_progress, "checking kept files"),
        )
        context = _Context(
            source=source,
            tokenizer=tokenizer,
            writer=writer,
            backend=backend,
            output=str(out),
            fingerprint=plan.fingerprint,
        )
        tokenized = 0
        with manifest.guard():
            try:
                shared = (
                    _shared_samples(plan, table, _kept_steps(kept, plan.rank))
                    if tokenize_once and _todo(plan, kept)
                    else np.zeros(0, dtype=np.int64)
                )
                if shared.size:
                    context = attrs.evolve(context, tokens=f"{_TOKENS}-{uuid.uuid4().hex[:12]}")
                    stage = _stage(stage_progress, "tokenizing shared samples")
                    tokenized += _tokenize_ahead(context, shared, table, executor, stage)
                tokenized += _write_all(manifest, context, plan, table, executor, progress)
            finally:
                _remove_tokens(out, context.tokens)
        manifest.finish(plan.total_steps)
    return {
        "written": manifest.added["ok"],
        "kept": len(kept),
        "damaged": len(manifest.damaged),
        "damaged_files": dict(sorted(manifest.damaged.items())),
        "failed": manifest.added["failed"],
        "total": plan.total_steps,
        "tokens_tokenized": tokenized,
        "seconds": time.perf_counter() - started,
        "output": str(out),
    }


def _stage(
    stage_progress: Callable[[str, int, int | None], None] | None, what: str
) -> Callable[[int, int | None], None] | None:
    return None if stage_progress is None else functools.partial(stage_progress, what)


def _todo(plan: BatchPlan, kept: Mapping[str, Any]) -> int:
    """Batch files still to write."""
    return plan.total_steps - sum(1 for name in kept if _NAME.match(name))


def _kept_steps(kept: Mapping[str, Any], rank: int) -> set[tuple[int, int]]:
    """``(epoch, step)`` of this rank's batch files kept from before."""
    matches = (_NAME.match(name) for name in kept)
    return {(int(m.group(1)), int(m.group(2))) for m in matches if m and int(m.group(3)) == rank}


def _write_all(
    manifest: RunManifest,
    context: _Context,
    plan: BatchPlan,
    table: LengthTable,
    executor: Any,
    progress: Callable[[int, int | None], None] | None,
) -> int:
    """Write every batch file not kept, recording each; returns the tokens tokenized."""
    kept = manifest.kept
    tasks = _tasks(plan, table, set(kept), context.writer.suffix)
    tokenized = 0
    work = functools.partial(_write_one, context)
    for record in executor.map(work, tasks, total=_todo(plan, kept), progress=progress):
        tokenized += record.pop("_tokenized", 0)
        manifest.add(record["file"], record)
    return tokenized


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
        problem = file_problem(path, record, thorough=True)
        if problem is not None:
            problems.append(f"{path}: {problem}")
    if not manifest.get("complete"):
        problems.append(f"{root / MANIFEST}: the run did not finish (use `laden write --resume`)")
    return problems

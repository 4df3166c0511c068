"""``BatchReader``: written batch files back, in plan order, with prefetch and a cache.

Background threads decode the next files through the writer's reader half
into a bounded, ordered queue, so training never waits on disk while the queue holds
something; decoded files are kept in an LRU cache (bounded by a count and a
memory cap) for random access with :meth:`BatchReader.get`. Batches come out
on the chosen backend (numpy, torch, optionally pinned and moved to a device,
or mlx), and iteration resumes from a ``state_dict`` like the plan loader.

Every file is checked as it is read: its size and a CRC-32 of its bytes
against the manifest (computed over the buffer the file is read into, so it
costs one pass over memory), and the epoch, step and rank stored inside it
against the manifest's record, so a truncated, altered, or swapped file is a
:class:`~laden.errors.DataError` naming it, never a batch.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from laden.digest import bytes_digest
from laden.errors import DataError
from laden.files.write import _identity_problem, load_manifest
from laden.kinds import BATCH_META
from laden.prefetch import ordered_prefetch
from laden.stateful import check_state

__all__ = ["BatchReader"]

#: The ``kind`` of a reader's state.
STATE_KIND = "laden.batch_reader"


def _nbytes(arrays: Mapping[str, Any]) -> int:
    return sum(int(getattr(v, "nbytes", 0)) for v in arrays.values())


def _held(values: list[int]) -> str:
    """``0-3`` or ``0, 2, 5``: the epochs or ranks a directory holds."""
    if not values:
        return "none"
    if values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values))


class BatchReader:
    """Iterate the batch files of a ``laden write`` output directory in plan order.

    :param directory: the output directory (its ``manifest.json`` lists the files).
    :param epoch: only this epoch (default: every epoch, in order).
    :param rank: only this rank's files (default: the manifest's rank).
    :param backend: a backend strategy, or a name (``numpy``, ``torch``, ``mlx``)
        or a config mapping; default ``numpy``. A ``torch`` backend with
        ``device: cuda`` pins and moves every batch.
    :param prefetch: files decoded ahead of the consumer (the queue bound);
        0 decodes in the consumer's thread (no overlap, least overhead).
    :param threads: decoding threads (file reads and decompression release the GIL).
    :param cache_files: decoded files kept for :meth:`get` (LRU).
    :param memory_cap: bytes the cache and the prefetch queue may hold
        together (half each; files ahead are counted by their size on disk);
        beyond it the cache evicts and the prefetcher waits (one batch always
        fits).
    :param verify: check each file's size and checksum against the manifest
        as it is read (default); ``False`` skips the checksum (the size and
        the epoch, step and rank stored in the file are still checked: they
        cost nothing). A manifest written before checksums were recorded for
        reading is checked with its ``blake2b`` (slower).
    :param kernel: announce every batch through ``laden_batch_produced``, and
        create the writer and backend from (default: laden's builtins only,
        :func:`~laden.kernel.builtin_kernel`).
    :raises DataError: the directory holds no files for ``epoch`` or ``rank``
        (naming what it holds), the write did not finish or failed, and while
        reading, a missing or damaged file (naming it).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        epoch: int | None = None,
        rank: int | None = None,
        backend: Any = None,
        prefetch: int = 4,
        threads: int = 1,
        cache_files: int = 16,
        memory_cap: int = 1 << 30,
        verify: bool = True,
        kernel: Any = None,
    ) -> None:
        from laden.kernel import builtin_kernel

        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        self.kernel = kernel
        factory = kernel if kernel is not None else builtin_kernel()
        self.writer = factory.create("writer", self.manifest["writer"], path=("writer",))
        if backend is None or isinstance(backend, str | Mapping):
            backend = factory.create("backend", backend or "numpy", path=("backend",))
        self.backend = backend
        self.rank = self.manifest.get("rank", 0) if rank is None else rank
        if prefetch < 0 or threads < 1 or cache_files < 0 or memory_cap < 1:
            raise ValueError(
                "prefetch must be >= 0, threads >= 1, cache_files >= 0, memory_cap >= 1"
            )
        self.prefetch, self.threads = prefetch, threads
        self.cache_files, self.memory_cap = cache_files, memory_cap
        self.verify = verify
        self.epoch = epoch
        every = list(self.manifest["files"].values())
        ranks = sorted({int(r["rank"]) for r in every})
        if every and self.rank not in ranks:
            raise DataError(
                f"no batch files of rank {self.rank}; this directory holds rank(s) {_held(ranks)}",
                file=str(self.directory),
            )
        epochs = sorted({int(r["epoch"]) for r in every if r["rank"] == self.rank})
        if every and epoch is not None and epoch not in epochs:
            raise DataError(
                f"no batch files of epoch {epoch} (rank {self.rank}); this directory holds "
                f"epoch(s) {_held(epochs)}",
                file=str(self.directory),
            )
        records = sorted(
            (
                r
                for r in self.manifest["files"].values()
                if r["rank"] == self.rank and (epoch is None or r["epoch"] == epoch)
            ),
            key=lambda r: (r["epoch"], r["step"]),
        )
        bad = [r for r in records if r.get("status") != "ok"]
        if bad:
            first = bad[0]
            raise DataError(
                f"{len(bad)} batch file(s) failed when written, the first {first['file']} "
                f"({first.get('error')}); rerun `laden write --resume`",
                file=str(self.directory / "manifest.json"),
            )
        if not self.manifest.get("complete"):
            raise DataError(
                "the write did not finish; rerun `laden write --resume`",
                file=str(self.directory / "manifest.json"),
            )
        self.records = records
        self._position = 0
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.records) - self._position

    # ------------------------------------------------------------- decoding

    def _decode(self, record: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            hit = self._cache.get(record["file"])
            if hit is not None:
                self._cache.move_to_end(record["file"])
                return hit
        path = self.directory / record["file"]
        try:
            arrays = self._read(path, record)
        except FileNotFoundError:
            raise DataError(
                "missing batch file; rerun `laden write --resume` to write it again",
                file=str(path),
            ) from None
        except DataError:
            raise
        except Exception as exc:  # each format fails its own way (BadZipFile, OSError, ...)
            raise DataError(
                f"cannot read batch file ({type(exc).__name__}: {exc}); rerun "
                "`laden write --resume` to write it again",
                file=str(path),
            ) from None
        problem = _identity_problem(arrays, record)
        if problem is not None:
            raise DataError(
                f"{problem}; rerun `laden write --resume` to write it again", file=str(path)
            )
        host = {k: v for k, v in arrays.items() if k not in BATCH_META}
        self._remember(record["file"], host)
        return host

    def _read(self, path: Path, record: Mapping[str, Any]) -> dict[str, Any]:
        """The file's arrays, once its size (and, with ``verify``, its checksum) match."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if "bytes" in record and size != record["bytes"]:
                raise DataError(
                    f"{size} bytes, the manifest says {record['bytes']} (a damaged file); "
                    "rerun `laden write --resume` to write it again",
                    file=str(path),
                )
            read_bytes = getattr(self.writer, "read_bytes", None)
            if read_bytes is None and not self.verify:
                return dict(self.writer.read(str(path)))
            buffer = np.empty(size, dtype=np.uint8)  # no zero fill
            if f.readinto(memoryview(buffer)) != size:  # type: ignore[arg-type]
                raise DataError("the file shrank while being read", file=str(path))
        if self.verify:
            if "crc32" in record:  # crc32 and blake2b release the GIL on big buffers
                altered = zlib.crc32(memoryview(buffer)) != record["crc32"]  # type: ignore[arg-type]
            else:
                altered = bytes_digest(memoryview(buffer)) != record.get("blake2b")  # type: ignore[arg-type]
            if altered:
                raise DataError(
                    "checksum mismatch with the manifest (the file was altered); rerun "
                    "`laden write --resume` to write it again",
                    file=str(path),
                )
        if read_bytes is None:  # a writer that reads only from a path
            return dict(self.writer.read(str(path)))
        return dict(read_bytes(buffer, str(path)))

    def _remember(self, name: str, arrays: dict[str, Any]) -> None:
        if not self.cache_files:
            return
        size = _nbytes(arrays)
        with self._lock:
            self._cache[name] = arrays
            self._cached_bytes += size
            while self._cache and (
                len(self._cache) > self.cache_files or self._cached_bytes > self.memory_cap // 2
            ):
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= _nbytes(old)

    def _batch(self, record: Mapping[str, Any], host: Mapping[str, Any]) -> dict[str, Any]:
        arrays = dict(host)
        if "max_seqlen" in arrays:
            arrays["max_seqlen"] = int(np.asarray(arrays["max_seqlen"]))
        batch = dict(self.backend.convert(arrays))
        batch.update(
            epoch=record["epoch"],
            step=record["step"],
            rank=record["rank"],
            padding=bool(record.get("padding", False)),
        )
        return batch

    def _announce(self, record: Mapping[str, Any], batch: dict[str, Any]) -> None:
        if self.kernel is not None:
            self.kernel.hook.laden_batch_produced(
                batch=batch, epoch=record["epoch"], step=record["step"], kernel=self.kernel
            )

    def get(self, index: int) -> dict[str, Any]:
        """Batch ``index`` of this reader's files (through the LRU cache)."""
        record = self.records[index]
        return self._batch(record, self._decode(record))

    # ------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """From the resume point on; background threads decode ahead, in order."""
        records = self.records[self._position :]
        if self.prefetch == 0:
            for record in records:
                batch = self._batch(record, self._decode(record))
                self._position += 1
                self._announce(record, batch)
                yield batch
            return
        cap = self.memory_cap // 2  # the other half is the cache's
        with ThreadPoolExecutor(self.threads, thread_name_prefix="laden-reader") as pool:
            decoded = ordered_prefetch(
                lambda record: pool.submit(self._decode, record),
                records,
                ahead=self.prefetch,
                weigh=lambda record: int(record.get("bytes", 0)),  # on-disk size as the estimate
                budget=cap,
            )
            try:
                for record, host in decoded:
                    batch = self._batch(record, host)
                    self._position += 1
                    self._announce(record, batch)
                    yield batch
            finally:
                decoded.close()  # cancels the decoding not yet started

    def state_dict(self) -> dict[str, Any]:
        """The files consumed so far, tied to this directory's plan."""
        return {
            "kind": STATE_KIND,
            "fingerprint": self.manifest["fingerprint"],
            "rank": self.rank,
            "epoch": self.epoch,
            "position": self._position,
            "files": len(self.records),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue after the last batch a saved state had consumed."""
        held = f"this reader holds {len(self.records)} files of rank {self.rank}" + (
            f", epoch {self.epoch}" if self.epoch is not None else ""
        )
        check_state(
            state,
            kind=STATE_KIND,
            fingerprint=self.manifest["fingerprint"],
            fits={"rank": self.rank, "epoch": self.epoch, "files": len(self.records)},
            within={"position": (0, len(self.records))},
            holds=held,
            where=str(self.directory),
        )
        self._position = int(state["position"])

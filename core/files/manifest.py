"""One resumable run's manifest: what it has done, item by item, crash-safe.

A run (``laden write``'s batch files; later a sweep's points) writes one file
per item into an output directory and keeps a JSON manifest beside them::

    {"format_version": 1, "kind": "laden.batches", <identity keys>,
     "files": {NAME: {"status": "ok", "bytes": ..., "blake2b": ..., "crc32": ...,
                      <the run's own fields>} | {"status": "failed", "error": ...}},
     "complete": true}

:class:`RunManifest` owns everything about that file, so a driver only says
what an item is: the identity a resume must match, per-item ``ok`` / ``failed``
status with the error, a flush (atomic replace) every few seconds and at every
stop, recovery after a crash (temporaries swept, every kept file re-checked,
files renamed into place but not yet recorded read back through the driver's
``adopt`` callback), the disk-full stop that keeps what is written, the write
lock, and the format-version check (:func:`laden.io.check_format`). Nothing in
it knows what a batch is.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeGuard

from laden.digest import file_checksums, file_digest
from laden.errors import ConfigError, DataError, LadenError, add_note
from laden.io import ARTIFACT_KINDS, check_format, plain_json, read_json, write_json

__all__ = [
    "DISK_FULL",
    "LOCK",
    "MANIFEST",
    "DiskFullError",
    "OutputBusyError",
    "RunManifest",
    "ensure_writable",
    "exclusive",
    "failure",
    "file_problem",
    "file_record",
    "is_disk_full",
    "load_manifest",
]

MANIFEST = "manifest.json"
#: The lock file of a running write (holds its pid).
LOCK = ".laden-write.lock"
#: Errors that mean the disk (or a size cap) is full: stop, keep what is written.
DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class DiskFullError(LadenError, OSError):
    """No room left for the next file; everything written so far is kept."""


class OutputBusyError(LadenError):
    """Another run holds the output directory."""


def is_disk_full(exc: BaseException) -> TypeGuard[OSError]:
    """Whether ``exc`` says the disk (or a file size cap) is full."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def failure(exc: BaseException) -> dict[str, Any]:
    """The status of an item that failed with ``exc`` (to merge into its record)."""
    return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def file_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checksums a manifest keeps of an item's file: ``bytes``, ``blake2b``, ``crc32``."""
    size, blake2b, crc32 = file_checksums(path)
    return {"bytes": size, "blake2b": blake2b, "crc32": crc32}


def file_problem(
    path: str | os.PathLike[str], record: Mapping[str, Any], *, thorough: bool = False
) -> str | None:
    """Why the file at ``path`` is not the one ``record`` describes (None: it is).

    Size first, then the cheap ``crc32`` (a manifest from before it: ``blake2b``);
    ``thorough`` checks ``blake2b`` always (what ``laden verify`` does).
    """
    try:
        size = Path(path).stat().st_size
        if size != record.get("bytes"):
            return f"{size} bytes, the manifest says {record.get('bytes')}"
        if "crc32" in record and not thorough:
            altered = file_checksums(path)[2] != record["crc32"]
        else:
            altered = file_digest(path) != record.get("blake2b")
    except FileNotFoundError:
        return "missing"
    return "checksum mismatch (the file was altered)" if altered else None


def ensure_writable(directory: Path, *, option: str = "output") -> None:
    """Create ``directory`` if needed and check a file can be made there (ConfigError if not)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".laden-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to {directory}: {exc.strerror}", path=(option,)) from None


@contextlib.contextmanager
def exclusive(directory: Path, *, lock: str = LOCK, what: str = "laden write") -> Iterator[None]:
    """Hold the directory's write lock (``flock``; the kernel frees it when the process
    dies, however it dies). Another holder is an :class:`OutputBusyError` naming its pid."""
    path = directory / lock
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusyError(
                f"another {what} is running in {directory} (pid {holder}); wait for it to "
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


def load_manifest(
    directory: str | os.PathLike[str],
    *,
    kind: str = "laden.batches",
    version: int = 1,
    name: str = MANIFEST,
    items: str = "files",
) -> dict[str, Any]:
    """The manifest of an output directory (a DataError naming it when damaged, of
    another kind, or of a newer format)."""
    path = Path(directory) / name
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get(items), dict):
        raise DataError(f"not a laden run manifest (no {items!r})", file=str(path))
    check_format(manifest, kind=kind, version=version, file=path)
    return manifest


#: Reads back a file renamed into place but not yet recorded: its record's own
#: fields, or why it cannot be kept (it is then deleted and written again).
Adopt = Callable[[Path], "Mapping[str, Any] | str"]
#: Why a kept item is not intact (None: it is); by default :func:`file_problem`.
Check = Callable[[str, "Mapping[str, Any]"], "str | None"]


class RunManifest:
    """The manifest of one resumable run in ``directory``; see the module docstring.

    Use: ``with m.locked(): m.open(resume=..., force=..., adopt=...)``, then
    :meth:`add` every item's record as it comes, inside ``with m.guard():``,
    and :meth:`finish`.

    :param kind: the run's artifact kind (a key of :data:`laden.io.ARTIFACT_KINDS`).
    :param version: the manifest format this laden writes and the newest it reads.
    :param identity: what a resume must match (plain data: configs, fingerprint);
        stored as top-level keys.
    :param owns: whether a file name in ``directory`` is an item file of such a
        run (cleared by ``force``; a candidate for adoption after a crash).
    :param writes: whether a file name in ``directory`` is another file the run
        writes beside its items (an index, saved state): cleared by ``force``
        too, never adopted. ``force`` refuses a directory holding any file
        that is neither, before it removes anything.
    :param items: the key holding the items (``files`` for batch files).
    :param flush_seconds: the manifest is rewritten at most this often while
        items come in (and always at a stop).
    :param option: the option the directory came from, named in errors.
    :param what: what the run is called in messages (``laden write``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        kind: str,
        version: int,
        identity: Mapping[str, Any],
        owns: Callable[[str], bool],
        writes: Callable[[str], bool] | None = None,
        items: str = "files",
        name: str = MANIFEST,
        lock: str = LOCK,
        flush_seconds: float = 2.0,
        option: str = "output",
        what: str = "laden write",
    ) -> None:
        if kind not in ARTIFACT_KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}")
        self.directory = Path(directory)
        self.kind = kind
        self.version = version
        self.identity = dict(identity)
        self.owns = owns
        self.writes = writes
        self.items_key = items
        self.path = self.directory / name
        self.lock = lock
        self.flush_seconds = flush_seconds
        self.option = option
        self.what = what
        #: Every item, by name: what the manifest file says after the next flush.
        self.items: dict[str, dict[str, Any]] = {}
        #: Items kept from an interrupted run (re-checked), and damaged ones (name -> why).
        self.kept: dict[str, dict[str, Any]] = {}
        self.damaged: dict[str, str] = {}
        #: Items added by this run, ``ok`` and ``failed``.
        self.added = {"ok": 0, "failed": 0}
        self._flushed = time.monotonic()

    # ----------------------------------------------------------- the file

    def load(self) -> dict[str, Any]:
        """The manifest on disk (DataError when damaged, of another kind or a newer format)."""
        return load_manifest(
            self.directory,
            kind=self.kind,
            version=self.version,
            name=self.path.name,
            items=self.items_key,
        )

    def flush(self, *, complete: bool = False) -> None:
        """Replace the manifest file atomically with what is recorded now."""
        manifest = {
            "format_version": self.version,
            "kind": self.kind,
            **self.identity,
            self.items_key: dict(sorted(self.items.items())),
            "complete": complete,
        }
        write_json(self.path, plain_json(manifest))
        self._flushed = time.monotonic()

    # ------------------------------------------------------ start and resume

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunManifest]:
        """Make the directory (ConfigError if it cannot be written) and hold its lock."""
        ensure_writable(self.directory, option=self.option)
        with exclusive(self.directory, lock=self.lock, what=self.what):
            yield self

    def open(
        self,
        *,
        resume: bool = False,
        force: bool = False,
        adopt: Adopt | None = None,
        check: Check | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Start the run (hold :meth:`locked` first): refuse a directory that is not
        this run's to write, continue (``resume``) or clear (``force``) a previous
        run, and write the first manifest. Returns the items kept.

        :param adopt: reads back a file renamed into place but not recorded
            (see :data:`Adopt`); without it such a file is written again.
        :param check: re-checks a kept item (see :data:`Check`).
        :param progress: ``progress(done, total)`` while kept items are checked.
        """
        if force and resume:
            raise ConfigError(
                "force starts over and resume continues: pass one", path=(self.option,)
            )
        if force and self.path.exists():
            self.load()  # only a directory such a run wrote
            strangers = sorted(p.name for p in self.directory.iterdir() if not self._ours(p.name))
            if strangers:  # refused before anything is removed
                shown = ", ".join(strangers[:3]) + (", ..." if len(strangers) > 3 else "")
                raise ConfigError(
                    f"{self.directory} holds files this run did not write ({shown}); --force "
                    "starts over only in a directory of this run's own files",
                    path=(self.option,),
                )
            self._clear()
        if self.path.exists():
            if not resume:
                raise ConfigError(
                    f"{self.directory} already holds a {ARTIFACT_KINDS[self.kind]}; pass "
                    "--resume to continue that run or choose an empty directory",
                    path=(self.option,),
                )
            previous = self.load()
            self._check_identity(previous)
            self._recover(previous, adopt=adopt, check=check, progress=progress)
        elif any(p.name != self.lock for p in self.directory.iterdir()):
            # with --resume too: not a run of ours
            raise ConfigError(
                f"{self.directory} is not empty; choose an empty directory", path=(self.option,)
            )
        self.flush()
        return self.kept

    def _ours(self, name: str) -> bool:
        """A name this run writes: the manifest, the lock, its items, or a temporary."""
        temporary = name.startswith(".") and name.endswith(".tmp")
        also = self.writes is not None and self.writes(name)
        return name in (self.path.name, self.lock) or self.owns(name) or also or temporary

    def _clear(self) -> None:
        for path in self.directory.iterdir():
            if path.name != self.lock and self._ours(path.name) and path.is_file():
                path.unlink(missing_ok=True)

    def _check_identity(self, previous: Mapping[str, Any]) -> None:
        for key, value in self.identity.items():
            if plain_json(previous.get(key)) != plain_json(value):
                raise ConfigError(
                    f"cannot resume: the manifest's {key} is {previous.get(key)!r}, "
                    f"this run's is {value!r}",
                    path=(self.option,),
                )

    def recover(
        self,
        *,
        adopt: Adopt | None = None,
        check: Check | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Keep what an interrupted run completed; returns the items kept.

        Temporaries (``.*.tmp``) are swept. Every ``ok`` item is re-checked and
        a damaged one deleted (so written again); a ``failed`` one is dropped
        (tried again). An item file renamed into place after the last flush
        is kept when ``adopt`` reads it back; otherwise it is deleted.
        """
        return self._recover(self.load(), adopt=adopt, check=check, progress=progress)

    def _recover(
        self,
        manifest: Mapping[str, Any],
        *,
        adopt: Adopt | None,
        check: Check | None,
        progress: Callable[[int, int | None], None] | None,
    ) -> dict[str, dict[str, Any]]:
        previous = manifest[self.items_key]
        for stale in self.directory.glob(".*.tmp"):  # a file being written when the run died
            stale.unlink(missing_ok=True)
        check = check or (lambda name, record: file_problem(self.directory / name, record))
        listed = [(n, r) for n, r in previous.items() if r.get("status") == "ok"]
        kept: dict[str, dict[str, Any]] = {}
        for count, (name, record) in enumerate(listed, 1):
            problem = check(name, record)
            if problem is None:
                kept[name] = record
            else:
                self.damaged[name] = problem
                (self.directory / name).unlink(missing_ok=True)
            if progress is not None:
                progress(count, len(listed))
        for path in sorted(self.directory.iterdir()):
            if path.name in kept or not self.owns(path.name):
                continue
            adopted = self._adopt(path, adopt)
            if isinstance(adopted, str):
                self.damaged[path.name] = adopted
                path.unlink(missing_ok=True)  # write it again
            else:
                kept[path.name] = adopted
        self.kept = kept
        self.items = dict(kept)
        return kept

    @staticmethod
    def _adopt(path: Path, adopt: Adopt | None) -> dict[str, Any] | str:
        """The record of a file renamed into place but not recorded, or why not kept."""
        if adopt is None:
            return "not recorded in the manifest"
        try:
            fields = adopt(path)
        except Exception as exc:
            return f"unreadable ({type(exc).__name__})"
        if isinstance(fields, str):
            return fields
        return {**fields, "status": "ok", **file_record(path)}

    # ------------------------------------------------------------ the items

    def add(self, name: str, record: Mapping[str, Any]) -> None:
        """Record an item (its ``status`` is ``ok`` or ``failed`` with an ``error``);
        the manifest is flushed when the last flush is ``flush_seconds`` old."""
        status = record.get("status")
        if status not in self.added:
            raise ValueError(f"an item's status is 'ok' or 'failed', got {status!r}")
        self.items[name] = dict(record)
        self.added[status] += 1
        if time.monotonic() - self._flushed >= self.flush_seconds:
            self.flush()

    @property
    def ok(self) -> int:
        """Items recorded ``ok`` (kept and added)."""
        return sum(1 for r in self.items.values() if r.get("status") == "ok")

    def finish(self, total: int) -> bool:
        """The last flush: complete when ``total`` items are ``ok``. Returns whether it is."""
        complete = self.ok == total
        self.flush(complete=complete)
        return complete

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Around the work: whatever stops it, what is recorded is flushed first.

        Ctrl-C gets a note saying the run can be resumed; a full disk (from
        anywhere inside) becomes a :class:`DiskFullError`, everything written
        so far kept.
        """
        try:
            yield
        except KeyboardInterrupt as exc:
            self._flush_quietly()  # what is done stays done
            add_note(
                exc, f"the files written so far are kept in {self.directory}; rerun with --resume"
            )
            raise
        except DiskFullError:
            self._flush_quietly()
            raise
        except OSError as exc:
            self._flush_quietly()
            if is_disk_full(exc):
                raise DiskFullError(
                    exc.errno, f"no room left in {self.directory}: {exc.strerror}"
                ) from None
            raise
        except BaseException:  # a bug: record what was written, for --resume
            self._flush_quietly()
            raise

    def _flush_quietly(self) -> None:
        with contextlib.suppress(OSError):
            self.flush()

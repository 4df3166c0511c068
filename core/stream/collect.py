"""Collect a stream into a dataset: what ``laden stream collect`` does, as a library.

:func:`collect` pulls samples from any source plugin (sync or async) into a
:class:`~laden.stream.ReplayBuffer` and writes, in one output directory:

- ``samples.jsonl``: one JSON row per sample, readable by every offline
  command (``laden lengths build``, ``plan build``, ``write``): ``id`` and
  ``input_ids`` (tokenized with the given tokenizer when the sample carried
  text), ``loss_mask`` where it is not all ones, the sample's own ``text`` or
  ``prompt``/``completion``, then ``sample_id``, ``episode_id``,
  ``step_index``, ``difficulty``, ``success``, ``reward``, ``source``, ``meta``;
- ``buffer/``: the buffer, saved with :meth:`ReplayBuffer.save`;
- ``collect.json``: the summary (``"kind": "laden.stream"``): what was
  collected from which source, errors, throughput, where the stream stands.

Errors of the stream are counted, never fatal unless no sample arrives: a
sample that breaks the stream sample contract is skipped; a source that raises
is reopened at the position reached (``iter_from``, or by skipping what was
seen), with backoff, until ``max_failures`` failures in a row. Ctrl-C keeps
everything collected; ``resume=True`` continues the run and never writes a
sample id twice.

:func:`online_demo` is the online section of ``laden demo``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from laden import __version__
from laden.errors import ConfigError, DataError, LadenError, RegistryError, add_note
from laden.io import (
    artifact_kind,
    check_format,
    plain_json,
    prepare_output,
    read_json,
    write_json,
)
from laden.serde import config_of
from laden.stream.buffer import BufferConfig, ReplayBuffer
from laden.stream.record import SampleChunk

if TYPE_CHECKING:
    from laden.kernel import Kernel

__all__ = [
    "BUFFER_DIR",
    "DATASET",
    "FORMAT_VERSION",
    "KIND",
    "SUMMARY",
    "CollectStatus",
    "collect",
    "load_summary",
    "online_demo",
    "stream_stats",
]

#: The ``kind`` of a collection's ``collect.json`` (and of its directory).
KIND = "laden.stream"
#: Version of the layout written; a newer one is refused.
FORMAT_VERSION = 1
#: File names inside the output directory.
DATASET = "samples.jsonl"
SUMMARY = "collect.json"
BUFFER_DIR = "buffer"

_SUMMARY_EVERY = 2.0  # seconds between summary rewrites while collecting
_PROGRESS_EVERY = 0.1  # seconds between progress callbacks
_BLOCK = 256  # samples added to the buffer at a time
_BACKOFF_MAX = 2.0


@attrs.frozen(kw_only=True)
class CollectStatus:
    """What a progress callback of :func:`collect` is told (at most ~10 times a second).

    ``samples`` counts every sample in the dataset (earlier runs included),
    ``new`` those of this run; ``samples_per_second`` is this run's rate.
    """

    samples: int
    target: int
    new: int
    errors: int
    seconds: float
    samples_per_second: float
    done: bool = False


# --------------------------------------------------------------- rows


def _row(sample: Mapping[str, Any], chunk: SampleChunk, sample_id: int) -> dict[str, Any]:
    """The dataset row of one sample (its chunk holds the checked, tokenized columns)."""
    row: dict[str, Any] = {"id": sample_id, "input_ids": chunk.tokens.tolist()}
    if chunk.loss_mask is not None and not chunk.loss_mask.all():
        row["loss_mask"] = chunk.loss_mask.tolist()
    for key in ("text", "prompt", "completion"):
        value = sample.get(key)
        if isinstance(value, str):
            row[key] = value
    success = int(chunk.success[0])
    row.update(
        sample_id=sample_id,
        episode_id=int(chunk.episode_id[0]),
        step_index=int(chunk.step_index[0]),
        # The sample's own floats, not their float32 columns (0.3, not 0.30000001).
        difficulty=float(sample.get("difficulty", 0.0)),
        success=None if success < 0 else bool(success),
        reward=float(sample.get("reward", 0.0)),
        source=chunk.source_name(0),
        meta=chunk.meta(0),
    )
    return row


def _sample_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A dataset row back as a stream sample (tokens as written, no tokenizer needed)."""
    keep = (
        "input_ids",
        "loss_mask",
        "sample_id",
        "episode_id",
        "step_index",
        "difficulty",
        "success",
        "reward",
        "source",
        "meta",
    )
    return {k: row[k] for k in keep if k in row}


class _Scan(NamedTuple):
    rows: int
    tokens: int
    ids: set[int]
    tail: list[dict[str, Any]]  # the rows from ``keep_from`` on
    torn_bytes: int


def _scan_dataset(path: Path, keep_from: int) -> _Scan:
    """Read back a dataset this module wrote (see :class:`_Scan`).

    A torn tail (a row cut by a crash or a full disk) is cut off; only the
    tail can be torn since rows are only ever appended.
    """
    if not path.exists():
        return _Scan(0, 0, set(), [], 0)
    ids: set[int] = set()
    tokens = 0
    kept: list[dict[str, Any]] = []
    good = 0  # bytes of complete, valid rows
    rows = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                row = json.loads(line)
                sample_id = int(row["id"])
                tokens += len(row["input_ids"])
            except (ValueError, KeyError, TypeError):
                break
            ids.add(sample_id)
            if rows >= keep_from:
                kept.append(row)
            rows += 1
            good += len(line)
    torn = path.stat().st_size - good
    if torn:
        with open(path, "r+b") as f:
            f.truncate(good)
    return _Scan(rows, tokens, ids, kept, torn)


# ------------------------------------------------------------ the run


def _identity(source: Any, tokenizer: Any) -> dict[str, Any]:
    return {
        "source": _config(source),
        "tokenizer": None if tokenizer is None else _config(tokenizer),
    }


def _config(strategy: Any) -> dict[str, Any]:
    try:
        return plain_json(config_of(strategy))  # type: ignore[no-any-return]
    except (TypeError, AttributeError, attrs.exceptions.NotAnAttrsClassError):
        return {"name": getattr(strategy, "name", type(strategy).__name__)}


def _buffer_config(buffer: BufferConfig | Mapping[str, Any] | None, samples: int) -> BufferConfig:
    if isinstance(buffer, BufferConfig):
        return buffer
    settings = dict(buffer or {})
    settings.setdefault("capacity", max(samples, 1))
    try:
        return BufferConfig(**settings)
    except TypeError as exc:
        raise ConfigError(str(exc), path=("buffer",)) from None


def load_summary(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``collect.json`` of a collection directory (format checked)."""
    path = Path(directory) / SUMMARY
    if not path.is_file():
        found = artifact_kind(directory)
        what = f"holds a {found}" if found else "has no collect.json"
        raise DataError(f"is not a stream collection ({what})", file=str(directory))
    summary = read_json(path)
    check_format(summary, kind=KIND, version=FORMAT_VERSION, file=path)
    return summary  # type: ignore[no-any-return]


class _Run:
    """One collection run over an output directory (see :func:`collect`)."""

    def __init__(
        self,
        source: Any,
        *,
        samples: int,
        output: Path,
        tokenizer: Any,
        progress: Callable[[CollectStatus], None] | None,
        buffer: BufferConfig | Mapping[str, Any] | None,
        max_failures: int,
        max_seconds: float | None,
        backoff: float,
    ) -> None:
        self.source = source
        self.name = str(getattr(source, "name", type(source).__name__))
        self.target = samples
        self.output = output
        self.tokenizer = tokenizer
        self.progress = progress
        self.buffer_setting = buffer
        self.max_failures = max_failures
        self.max_seconds = max_seconds
        self.backoff = backoff
        self.identity = _identity(source, tokenizer)
        self.count = 0  # rows in the dataset
        self.position = 0  # samples the stream yielded (what a reopened stream skips)
        self.ids: set[int] = set()
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.last_error: str | None = None
        self.restarts = 0
        self.duplicates = 0
        self.runs = 1
        self.seconds_before = 0.0
        self.new = 0
        self.status = "running"
        self.torn_bytes = 0
        self.started = time.monotonic()
        self.tokens = 0  # tokens in the dataset
        self.pending: list[SampleChunk] = []
        self.buffer: ReplayBuffer
        self.final: dict[str, Any] = {}

    # ----------------------------------------------------------- opening

    def open(self, resume: bool, force: bool) -> None:
        out = self.output
        if resume and artifact_kind(out) == KIND:
            self._resume()
            return
        if not force and artifact_kind(out) == KIND:
            raise ConfigError(
                f"{out} already holds a stream collection; pass --resume to continue it "
                "or --force to replace it",
                path=("output",),
            )
        prepare_output(out, KIND, force=force, option="output")  # says what is there instead
        if out.exists():  # a collection replaced with force: clear only what we wrote
            (out / DATASET).unlink(missing_ok=True)
            shutil.rmtree(out / BUFFER_DIR, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        self.buffer = ReplayBuffer(
            config=_buffer_config(self.buffer_setting, self.target), tokenizer=self.tokenizer
        )
        (out / DATASET).touch()
        self.write_summary()  # marks the directory as a collection at once

    def _resume(self) -> None:
        summary = load_summary(self.output)
        mine, theirs = self.identity, {k: summary.get(k) for k in self.identity}
        if mine != theirs:
            diff = ", ".join(k for k in mine if mine[k] != theirs[k])
            raise ConfigError(
                f"{self.output} was collected with another {diff}; resume with the same "
                "settings, or choose a new directory",
                path=("resume",),
            )
        saved = BufferConfig(**summary["buffer"])
        if self.buffer_setting is not None:
            asked = _buffer_config(self.buffer_setting, self.target)
            if asked != saved:
                raise ConfigError(
                    f"{self.output} was collected into a buffer configured "
                    f"{attrs.asdict(saved)}, not {attrs.asdict(asked)}",
                    path=("buffer",),
                )
        buffer_dir = self.output / BUFFER_DIR
        buffer: ReplayBuffer | None = None
        if (buffer_dir / "meta.json").is_file():
            with contextlib.suppress(LadenError, OSError):
                buffer = ReplayBuffer.load(buffer_dir, tokenizer=self.tokenizer)
        if buffer is not None and buffer.config != saved:
            buffer = None
        scan = _scan_dataset(self.output / DATASET, buffer.adds if buffer else 0)
        if buffer is not None and buffer.adds > scan.rows:  # only if edited by hand: rebuild
            buffer = None
            scan = _scan_dataset(self.output / DATASET, 0)
        if buffer is None:
            buffer = ReplayBuffer(config=saved, tokenizer=self.tokenizer)
        if scan.tail:  # rows written after the buffer was last saved (a hard kill)
            buffer.add_chunk(SampleChunk.from_samples([_sample_of(r) for r in scan.tail]))
        self.buffer = buffer
        rows = self.count = scan.rows
        self.ids, self.tokens, self.torn_bytes = scan.ids, scan.tokens, scan.torn_bytes
        counters = summary.get("counters", {})
        # Rows written after the summary was last saved each moved the stream by one.
        self.position = int(counters.get("position", 0)) + max(
            rows - int(summary.get("samples", 0)), 0
        )
        self.errors = int(counters.get("errors", 0))
        self.error_kinds = dict(counters.get("error_kinds", {}))
        self.restarts = int(counters.get("restarts", 0))
        self.duplicates = int(counters.get("duplicates", 0))
        self.last_error = summary.get("last_error")
        self.runs = int(summary.get("runs", 0)) + 1
        self.seconds_before = float(summary.get("seconds", 0.0))
        if self.target < self.count:
            self.target = self.count

    # ----------------------------------------------------------- the stream

    def _iterator(self) -> Generator[Any, None, None]:
        """The stream from :attr:`position`: ``iter_from`` when the source has it,
        else a fresh iteration (sync, or async driven here) skipping what was seen."""
        source = self.source
        if hasattr(source, "iter_from"):
            yield from source.iter_from(self.position)
            return
        if hasattr(source, "__iter__"):
            it = iter(source)
        elif hasattr(source, "__aiter__"):
            from laden.stream.net import iterate_sync

            it = iterate_sync(source.__aiter__)
        else:
            raise ConfigError(f"source {self.name!r} is neither iterable nor async iterable")
        try:
            for _ in range(self.position):
                if next(it, _DONE) is _DONE:
                    return
            yield from it
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def _error(self, exc: BaseException) -> None:
        self.errors += 1
        kind = type(exc).__name__
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        self.last_error = f"{kind}: {exc}"

    def _chunk(self, sample: Any) -> SampleChunk | None:
        """One sample checked and tokenized, or None (a bad sample, counted)."""
        if (
            self.tokenizer is None
            and isinstance(sample, Mapping)
            and sample.get("input_ids") is None
            and (sample.get("text") is not None or sample.get("prompt") is not None)
        ):
            raise ConfigError(
                f"source {self.name!r} yields text samples: give a tokenizer to tokenize "
                "them (--tokenizer)",
                path=("tokenizer",),
            )
        try:
            return SampleChunk.from_samples(
                [sample], tokenizer=self.tokenizer, where=f"{self.name} {self.position}"
            )
        except DataError as exc:
            self._error(exc)
            return None

    def run(self) -> None:
        path = self.output / DATASET
        failures = 0  # source failures since the last sample
        last_summary = last_progress = time.monotonic()
        with open(path, "a", encoding="utf-8") as dataset:
            try:
                while self.count < self.target and self.status == "running":
                    it = self._iterator()
                    try:
                        while self.count < self.target:
                            try:
                                sample = next(it)
                            except StopIteration:
                                self.status = "exhausted"
                                break
                            except (ConfigError, RegistryError):
                                raise
                            except Exception as exc:  # the stream's own failure: counted
                                failures = self._failed(exc, failures)
                                break
                            self.position += 1
                            chunk = self._chunk(sample)
                            if chunk is not None:
                                failures = 0
                                self._keep(sample, chunk, dataset)
                            now = time.monotonic()
                            if now - last_progress >= _PROGRESS_EVERY:
                                last_progress = now
                                self._report()
                                if now - last_summary >= _SUMMARY_EVERY:
                                    last_summary = now
                                    dataset.flush()
                                    self.write_summary()
                            if self.max_seconds is not None and self._elapsed() > self.max_seconds:
                                self.status = "time_limit"
                                break
                    finally:
                        it.close()
                if self.status == "running":
                    self.status = "complete"
            except KeyboardInterrupt:
                self.status = "interrupted"
                raise
            except BaseException:
                if self.status == "running":
                    self.status = "failed"
                raise
            finally:
                self._add_pending()
                dataset.flush()
                os.fsync(dataset.fileno())
                self.save()

    def _failed(self, exc: BaseException, failures: int) -> int:
        """Count a failure of the source; stop after ``max_failures`` in a row."""
        self._error(exc)
        self._report()
        failures += 1
        if failures > self.max_failures:
            self.status = "source_failed"
            return failures
        self.restarts += 1
        time.sleep(min(self.backoff * 2 ** (failures - 1), _BACKOFF_MAX))
        return failures

    def _keep(self, sample: Any, chunk: SampleChunk, dataset: Any) -> None:
        sample_id = int(chunk.sample_id[0])
        if sample_id < 0:
            sample_id = self.position - 1
            chunk.sample_id[0] = sample_id
        if sample_id in self.ids:
            self.duplicates += 1
            return
        dataset.write(json.dumps(_row(sample, chunk, sample_id), separators=(",", ":")) + "\n")
        self.ids.add(sample_id)
        self.count += 1
        self.tokens += chunk.num_tokens
        self.new += 1
        self.pending.append(chunk)
        if len(self.pending) >= _BLOCK:
            self._add_pending()

    def _add_pending(self) -> None:
        if self.pending:
            self.buffer.add_chunk(SampleChunk.concatenate(self.pending))
            self.pending = []

    # ----------------------------------------------------------- reports

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _report(self, done: bool = False) -> None:
        if self.progress is None:
            return
        elapsed = self._elapsed()
        self.progress(
            CollectStatus(
                samples=self.count,
                target=self.target,
                new=self.new,
                errors=self.errors,
                seconds=elapsed,
                samples_per_second=self.new / elapsed if elapsed > 0 else 0.0,
                done=done,
            )
        )

    def summary(self) -> dict[str, Any]:
        elapsed = self._elapsed()
        stats = self.buffer.stats()
        return {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "laden_version": __version__,
            "status": self.status,
            **self.identity,
            "buffer": attrs.asdict(self.buffer.config),
            "target": self.target,
            "samples": self.count,
            "new_samples": self.new,
            "tokens": self.tokens,
            "buffer_stats": stats,
            "errors": self.errors,
            "last_error": self.last_error,
            "seconds": round(self.seconds_before + elapsed, 3),
            "run_seconds": round(elapsed, 3),
            "samples_per_second": round(self.new / elapsed, 1) if elapsed > 0 else 0.0,
            "runs": self.runs,
            "dataset": DATASET,
            "buffer_dir": BUFFER_DIR,
            "counters": {
                "position": self.position,
                "errors": self.errors,
                "error_kinds": dict(self.error_kinds),
                "restarts": self.restarts,
                "duplicates": self.duplicates,
                "torn_bytes": self.torn_bytes,
            },
        }

    def write_summary(self) -> dict[str, Any]:
        summary = self.summary()
        write_json(self.output / SUMMARY, plain_json(summary))
        return summary

    def save(self) -> None:
        self.buffer.save(self.output / BUFFER_DIR)
        self.final = self.write_summary()
        self._report(done=True)


_DONE = object()


def collect(
    source: Any,
    *,
    samples: int,
    output: str | os.PathLike[str],
    kernel: Kernel,
    tokenizer: Any = None,
    progress: Callable[[CollectStatus], None] | None = None,
    resume: bool = False,
    force: bool = False,
    buffer: BufferConfig | Mapping[str, Any] | None = None,
    max_failures: int = 5,
    max_seconds: float | None = None,
    backoff: float = 0.05,
) -> dict[str, Any]:
    """Pull ``samples`` samples from ``source`` into a replay buffer and a JSONL dataset.

    Returns the summary also written to ``output/collect.json`` (``status``:
    ``complete``, ``exhausted`` (the stream ended first), ``source_failed``,
    ``time_limit``; ``samples``, ``errors``, ``samples_per_second``,
    ``buffer_stats``, ...).

    :param source: a source strategy (sync iterable, ``iter_from`` for cheap
        resumption, or async iterable only), or any iterable of sample dicts.
    :param samples: the dataset's size when done (earlier runs included).
    :param output: a new or empty directory, a collection to resume
        (``resume``) or to replace (``force``); anything else is refused.
    :param kernel: the kernel the strategies came from (announces nothing yet;
        kept for symmetry with every other driver).
    :param tokenizer: tokenizes samples that carry ``text`` or
        ``prompt``/``completion`` (required for those).
    :param progress: called with a :class:`CollectStatus` as samples arrive.
    :param resume: continue the collection in ``output`` (same source and
        tokenizer config); sample ids already written are never written again.
    :param buffer: the replay buffer's settings (default: room for every sample).
    :param max_failures: failures of the source in a row (no sample between
        them) before the run stops; a stream that yielded nothing at all is a
        DataError.
    :param max_seconds: stop collecting after this long (``time_limit``).
    :param backoff: seconds before reopening a failed source (doubled per
        failure in a row, at most 2 s).
    """
    del kernel  # library signature: strategies are explicit, nothing is created here
    if samples < 1:
        raise ConfigError(f"must be >= 1, got {samples}", path=("samples",))
    if max_failures < 0:
        raise ConfigError(f"must be >= 0, got {max_failures}", path=("max_failures",))
    run = _Run(
        source,
        samples=samples,
        output=Path(output),
        tokenizer=tokenizer,
        progress=progress,
        buffer=buffer,
        max_failures=max_failures,
        max_seconds=max_seconds,
        backoff=backoff,
    )
    run.open(resume, force)
    try:
        run.run()
    except KeyboardInterrupt as exc:
        add_note(
            exc,
            f"{run.count:,} samples kept in {output}; rerun with --resume to continue",
        )
        raise
    summary = run.final
    if not summary["samples"]:
        why = f"{run.errors} error(s), the last {run.last_error}" if run.errors else "it ended"
        raise DataError(f"no sample arrived from source {run.name!r} ({why})", file=str(output))
    return summary


def stream_stats(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``laden stream stats`` shows: the summary, the buffer's statistics and
    the dataset's length statistics (read from the saved buffer, not the JSONL)."""
    from laden.analysis import length_stats

    summary = load_summary(directory)
    out = dict(summary)
    buffer_dir = Path(directory) / BUFFER_DIR
    if (buffer_dir / "meta.json").is_file():
        buffer = ReplayBuffer.load(buffer_dir)
        out["buffer_stats"] = buffer.stats()
        lengths = buffer.snapshot().table.length
        out["lengths"] = length_stats(lengths) if lengths.size else {}
    return out


# --------------------------------------------------------------- the online demo


def _launcher() -> str | None:
    found = shutil.which("server-launcher")
    local = Path(sys.executable).parent / "server-launcher"
    return str(local) if local.exists() else found


def _arcade_available(kernel: Kernel) -> bool:
    if importlib.util.find_spec("chuk_puzzles_gym") is None or _launcher() is None:
        return False
    try:
        return bool(kernel.registry("source").entry("puzzle_arcade").available)
    except LadenError:
        return False


@contextlib.contextmanager
def _arcade_server(timeout: float) -> Iterator[int]:
    """A puzzle arcade server on 127.0.0.1 (a free port), stopped by its PID at exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    launcher = _launcher()
    assert launcher is not None
    command = [
        launcher,
        "chuk_puzzles_gym.server:ArcadeHandler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--transport",
        "telnet",
    ]
    # Its own session: a Ctrl-C sent to the terminal's process group must reach laden,
    # which then stops the server by its PID below, not kill the server mid-collection.
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise DataError(f"the puzzle arcade server exited with {process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise DataError(
                        f"the puzzle arcade server did not accept on port {port} in {timeout} s"
                    ) from None
                time.sleep(0.05)
        yield port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


#: Arcade games whose puzzles are generated in milliseconds (the demo's budget is seconds).
DEMO_GAMES = ("sudoku", "kenken", "futoshiki", "skyscrapers", "binary", "lights", "nqueens")


def online_demo(
    output: str | os.PathLike[str],
    *,
    kernel: Kernel,
    seconds_budget: float = 10.0,
    samples: int = 400,
    token_budget: int = 4096,
    arcade: bool | None = None,
) -> dict[str, Any]:
    """Collect a stream, then plan one rolling window of it: the online part of ``laden demo``.

    Uses a loopback puzzle arcade server (started here, stopped by PID) when the
    ``arcade`` extra is installed, else the ``mock`` source. Collection stops
    at ``samples`` or after about half of ``seconds_budget``. Then the samples
    become one rolling window: a ``best_fit``-packed ``token_budget`` plan.

    ``output`` is replaced if it holds a collection (a new or empty directory
    otherwise). Returns plain data: ``source``, ``samples``, ``errors``,
    ``samples_per_second``, ``collect_seconds``, ``window_fingerprint``,
    ``plan_fingerprint``, ``batches``, ``tokens``, ``padded_tokens``,
    ``efficiency``, ``pack_efficiency``, ``seconds``, ``output``.

    :param arcade: force the arcade (True) or the mock (False); default: the
        arcade when it is available.
    """
    from laden.stream.window import RollingPlanWindow

    started = time.monotonic()
    use_arcade = _arcade_available(kernel) if arcade is None else arcade
    tokenizer = kernel.create("tokenizer", "bytes")
    max_length = token_budget // 4
    sampler = kernel.create(
        "sampler", {"name": "token_budget", "token_budget": token_budget, "overflow": "truncate"}
    )
    packer = kernel.create(
        "packer", {"name": "best_fit", "max_length": max_length, "overflow": "split"}
    )
    with contextlib.ExitStack() as stack:
        if use_arcade:
            port = stack.enter_context(_arcade_server(timeout=seconds_budget / 3))
            source = kernel.create(
                "source",
                {
                    "name": "puzzle_arcade",
                    "port": port,
                    "games": list(DEMO_GAMES),
                    "difficulties": ["easy"],
                    # Twice the seeds needed: some puzzles are solved in fewer than 8 moves.
                    "seed_range": [0, max(1, -(-2 * samples // (8 * len(DEMO_GAMES))))],
                    "hints_per_episode": 8,
                    "connections": 8,
                    "read_timeout": max(seconds_budget / 3, 1.0),
                    "retries": 2,
                },
            )
        else:
            source = kernel.create(
                "source",
                {"name": "mock", "seed": 0, "num_samples": samples, "max_length": max_length},
            )
        left = seconds_budget - (time.monotonic() - started)
        try:
            summary = collect(
                source,
                samples=samples,
                output=output,
                kernel=kernel,
                tokenizer=tokenizer,
                force=True,
                max_seconds=max(left / 2, 0.5),
                max_failures=2,
            )
        except KeyboardInterrupt as exc:
            # collect()'s "--resume" hint is for `laden stream collect`; a demo starts over.
            exc.__dict__["__notes__"] = [f"what was collected is kept in {output}"]
            raise
    collected = summary["samples"]
    with open(Path(output) / DATASET, encoding="utf-8") as f:
        stream = [_sample_of(json.loads(line)) for line in f]
    windows = RollingPlanWindow(
        stream,
        window_size=collected,
        sampler=sampler,
        packer=packer,
        seed=0,
        kernel=kernel,
    )
    with windows:
        window = windows.next_window(timeout=max(seconds_budget - (time.monotonic() - started), 1))
    assert window is not None
    plan = window.plan
    tokens, padded = sum(plan.tokens), sum(plan.padded_tokens)
    return {
        "source": "puzzle_arcade" if use_arcade else "mock",
        "samples": collected,
        "errors": summary["errors"],
        "samples_per_second": summary["samples_per_second"],
        "collect_seconds": summary["run_seconds"],
        "window_fingerprint": window.fingerprint,
        "plan_fingerprint": plan.fingerprint,
        "window": {"start": window.start, "stop": window.stop, "count": window.count},
        "batches": plan.total_steps,
        "tokens": tokens,
        "padded_tokens": padded,
        "efficiency": tokens / max(padded, 1),
        "pack_efficiency": None if plan.pack is None else float(plan.pack.efficiency),
        "seconds": round(time.monotonic() - started, 3),
        "output": str(output),
    }

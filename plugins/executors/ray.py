"""``ray``: the same ordered, bounded, chunked map as ``local``, on a Ray cluster (extra ``ray``).

With ``address`` None, laden starts a local Ray cluster for the map (its
processes on 127.0.0.1, no dashboard) and stops it when the map ends, however
it ends (results read, an error, Ctrl-C, the results closed early); ``auto``
joins the cluster this machine belongs to and ``ray://host:port`` connects a
Ray client; laden only disconnects from a cluster it did not start. A process
that already called ``ray.init`` keeps its connection: the map uses it and
leaves it open.

The processes of a cluster laden started never outlive it: they carry a mark in
their environment, and a small watchdog process (Linux) waits for this process
to end, however it ends (``kill -9`` too), then kills every process still
carrying the mark (Ray's own clean-up leaves its agents running after a
``kill -9`` of the driver).

Ray starts in seconds (6-7 s on a small machine) and pays about half a
millisecond per task, so on one machine ``local`` is faster; Ray is for work
that outgrows one machine. Items travel in chunks, as with ``local``
(:mod:`laden.chunks`), and the workers need ``laden`` importable (installed on
every node, or shipped through ``runtime_env``).
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager, suppress
from typing import IO, Any, ClassVar, TypeVar

import attrs

from laden.chunks import (
    ChunkResult,
    Chunksize,
    ChunkSizer,
    check_chunksize,
    chunk_items,
    run_chunk,
    unchunk,
)
from laden.errors import ConfigError
from laden.hookspecs import hookimpl
from laden.prefetch import ordered_prefetch
from laden.registry import Registry
from laden.validators import at_least, optional

T = TypeVar("T")
R = TypeVar("R")

#: Chunks in flight per CPU of the cluster when ``max_in_flight`` is not set.
IN_FLIGHT_PER_CPU = 2
#: The environment variable that marks the processes of a cluster laden started.
MARK = "LADEN_RAY_CLUSTER"

#: How often the watchdog notes the processes of the cluster (seconds).
WATCH_SECONDS = 0.5


def _processes() -> dict[int, tuple[int, str, bytes]]:
    """Every readable process: pid -> (parent pid, start time, environment)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        out[int(name)] = (int(stat[1]), stat[19].decode(), environ)
    return out


def _watch(token: str) -> None:
    """The watchdog's body: note the marked processes and their descendants (Ray's
    agents are started without the mark) until stdin ends, then kill them all."""
    import select
    import signal

    needle = f"{MARK}={token}".encode()
    seen: dict[int, str] = {}  # pid -> start time (a reused pid is not ours)

    def note() -> dict[int, tuple[int, str, bytes]]:
        table = _processes()
        for pid, (parent, start, environ) in table.items():
            if pid == os.getpid():
                continue
            marked = needle in environ.split(b"\0")
            if marked or (
                parent in seen and table.get(parent, (0, seen[parent]))[1] == seen[parent]
            ):
                seen.setdefault(pid, start)
        return table

    while not select.select([sys.stdin], [], [], WATCH_SECONDS)[0]:
        note()
    sys.stdin.buffer.read()
    for _ in range(3):  # what was starting while we swept is caught next round
        table = note()
        for pid, start in seen.items():
            if pid in table and table[pid][1] == start:
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


@contextmanager
def _marked_cluster() -> Iterator[None]:
    """Mark the processes started inside this block; a watchdog kills them once we end."""
    if not sys.platform.startswith("linux"):
        yield  # pragma: no cover - no /proc: Ray's own clean-up only
        return
    token = secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if k != MARK}
    watchdog = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from laden.plugins.executors.ray import _watch; _watch({token!r})",
        ],
        stdin=subprocess.PIPE,
        env=env,
        start_new_session=True,  # a Ctrl-C to our process group leaves it to clean up
    )
    previous = os.environ.get(MARK)
    os.environ[MARK] = token
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(MARK, None)
        else:  # pragma: no cover - nested clusters
            os.environ[MARK] = previous
        stdin: IO[bytes] | None = watchdog.stdin
        if stdin is not None:
            stdin.close()  # the watchdog sweeps up now (nothing, after a clean shutdown)
        watchdog.wait(10)


def _check_address(_instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None or value == "auto" or value.startswith("ray://") or ":" in value:
        return
    raise ConfigError(
        f'must be none (a local cluster), "auto", "ray://host:port" or "host:port", got {value!r}',
        path=(attribute.name,),
    )


class _Pending:
    """A Ray object ref shaped like a future, for :func:`laden.prefetch.ordered_prefetch`."""

    def __init__(self, ray: Any, ref: Any) -> None:
        self.ray = ray
        self.ref = ref

    def result(self) -> Any:
        return self.ray.get(self.ref)

    def cancel(self) -> bool:
        try:
            self.ray.cancel(self.ref)
        except Exception:  # finished, or the cluster is going away: nothing to cancel
            return False
        return True


@attrs.frozen(kw_only=True)
class RayExecutor:
    """Runs ``fn`` over items as Ray tasks and yields results in input order.

    At most ``max_in_flight`` chunks are submitted ahead of the results read;
    a task's exception surfaces (same type and message) when its result is
    reached, and what has not started is cancelled.

    :param address: None for a local cluster started and stopped by laden,
        ``auto`` for the cluster this machine belongs to, or ``ray://host:port``.
    :param num_cpus: CPUs of the local cluster (None: all); only with ``address`` None.
    :param chunksize: items per task, or ``auto`` (start with one, then enough for ~5 ms).
    :param max_in_flight: chunks submitted ahead (None: twice the cluster's CPUs).
    :param runtime_env: Ray's ``runtime_env`` for the job (``pip``, ``env_vars``, ...).
    """

    name: ClassVar[str] = "ray"
    requires: ClassVar[tuple[str, ...]] = ("ray",)
    extra: ClassVar[str] = "ray"

    address: str | None = attrs.field(default=None, validator=_check_address)
    num_cpus: int | None = attrs.field(default=None, validator=optional(at_least(1)))
    chunksize: Chunksize = attrs.field(default="auto", validator=check_chunksize)
    max_in_flight: int | None = attrs.field(default=None, validator=optional(at_least(1)))
    runtime_env: dict[str, Any] | None = None

    def __attrs_post_init__(self) -> None:
        if self.num_cpus is not None and self.address is not None:
            raise ConfigError(
                "is the size of a local cluster: it goes with address none, "
                f"not with address {self.address!r}",
                path=("num_cpus",),
            )

    def init_settings(self) -> dict[str, Any]:
        """The keyword arguments of ``ray.init`` for this config."""
        settings: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "runtime_env": self.runtime_env,
        }
        if self.address is None:  # a cluster of our own, on loopback only
            settings.update(address="local", num_cpus=self.num_cpus, _node_ip_address="127.0.0.1")
        else:
            settings["address"] = self.address
        return settings

    def map(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        total: int | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> Iterator[R]:
        """Yield ``fn(item)`` for every item, in order, calling ``progress(done, total)``."""
        import ray

        if total is None and isinstance(items, Sized):
            total = len(items)
        iterator = iter(items)
        first = next(iterator, _NONE)
        if first is _NONE:  # nothing to do: no cluster to start
            return
        started = not ray.is_initialized()
        with _marked_cluster() if started and self.address is None else _nothing():
            if started:
                ray.init(**self.init_settings())
            try:
                yield from self._run(ray, fn, first, iterator, total, progress)
            finally:
                if started:
                    ray.shutdown()  # stops the local cluster laden started; else disconnects

    def _run(
        self,
        ray: Any,
        fn: Callable[[T], R],
        first: T,
        iterator: Iterator[T],
        total: int | None,
        progress: Callable[[int, int | None], None] | None,
    ) -> Iterator[R]:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        ahead = self.max_in_flight or IN_FLIGHT_PER_CPU * cpus
        task = ray.remote(num_cpus=1)(_run_cached)
        # Stored once; the ref travels boxed in a list, so Ray does not fetch and
        # unpickle the function for every task: each worker does it once (_run_cached).
        fn_ref = ray.put(fn)
        key = secrets.token_hex(8)

        def submit(chunk: list[T]) -> _Pending:
            return _Pending(ray, task.remote(key, [fn_ref], chunk))

        sizer = ChunkSizer(self.chunksize, workers=cpus, total=total)
        inputs = itertools.chain([first], iterator)
        chunks = ordered_prefetch(submit, chunk_items(inputs, sizer), ahead=ahead)
        try:
            results: Iterator[ChunkResult[R]] = (result for _, result in chunks)
            yield from unchunk(results, sizer, total=total, progress=progress)
        finally:
            chunks.close()  # cancels what has not finished


#: The function of the map a Ray worker last served: (key, function).
_CACHED: list[tuple[str, Any]] = []


def _run_cached(key: str, box: list[Any], chunk: list[Any]) -> ChunkResult[Any]:
    """A Ray task: run the map's function over ``chunk``, fetching the function (a
    tokenizer or a source inside it is rebuilt when unpickled) once per worker and map."""
    if not _CACHED or _CACHED[0][0] != key:
        import ray

        _CACHED[:] = [(key, ray.get(box[0]))]
    return run_chunk(_CACHED[0][1], chunk)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


_NONE: Any = object()


@hookimpl
def laden_register_executors(registry: Registry) -> None:
    registry.add(RayExecutor)

"""``local``: a map over a pool of worker processes on this machine.

Items travel in chunks (``chunksize``; ``auto`` measures the first items and
groups enough of them that a task lasts about 5 ms), so tiny tasks cost
microseconds each rather than a process round trip; results and progress
still come one per item, in order (:mod:`laden.chunks`).

Workers never outlive the process that started them: each asks the kernel to
kill it when its parent dies (``PR_SET_PDEATHSIG`` on Linux) and also watches
its parent pid from a thread (every platform), so a parent killed by
``kill -9`` or SIGTERM leaves no worker behind. Workers ignore SIGINT: Ctrl-C
on a terminal reaches the whole process group, and it is the parent that
decides; when the parent is interrupted (or stops reading results) it cancels
what has not started and terminates the workers instead of waiting for them.

What makes two workers twice as fast as one: the mapped function is pickled
once and unpickled once per worker (a function holding a tokenizer or a
source rebuilt it for every task before), and every worker keeps its BLAS and
OpenMP libraries to one thread, as Ray does, so ``n`` workers run ``n``
threads and not ``n`` times the CPUs, spinning against each other.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Any, ClassVar, TypeVar

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
from laden.hookspecs import hookimpl
from laden.prefetch import ordered_prefetch
from laden.registry import Registry
from laden.validators import at_least, one_of, optional

T = TypeVar("T")
R = TypeVar("R")

#: How often a worker checks its parent pid where it has no parent sentinel (seconds).
PARENT_POLL_SECONDS = 0.5
#: How long an abandoned pool's workers get to exit after SIGTERM before SIGKILL.
TERMINATE_GRACE_SECONDS = 0.5

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Exit this worker as soon as the process that started the pool is gone.

    Two guards: the kernel's parent-death signal (Linux; it fires even while
    this worker is stuck in C code holding the GIL), and a thread that waits
    on multiprocessing's parent sentinel (every platform and start method; a
    forkserver worker's direct parent is the fork server, not the pool's owner).
    """
    if sys.platform.startswith("linux") and os.getppid() == parent:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the thread below
            pass
        if os.getppid() != parent:  # it died before the signal was armed
            os._exit(1)
    owner = multiprocessing.parent_process()
    sentinel = getattr(owner, "sentinel", None)

    def watch() -> None:
        if sentinel is not None:
            wait([sentinel])  # readable (EOF) once the owner has exited
        else:  # pragma: no cover - no sentinel: poll the parent pid
            while os.getppid() == parent:
                time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="laden-parent-watch", daemon=True).start()


#: Threads a worker's BLAS/OpenMP libraries may use, unless the user's environment says:
#: the worker count is the parallelism, as with Ray (which sets ``OMP_NUM_THREADS=1``).
WORKER_THREADS = 1
#: Environment variables that size the thread pools of BLAS and OpenMP libraries.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "RAYON_NUM_THREADS",  # Rust's rayon: Hugging Face tokenizers' encode_batch
)
#: Functions that resize a loaded library's thread pool at run time, by library file name.
_THREAD_SETTERS = (
    ("openblas", ("openblas_set_num_threads", "openblas_set_num_threads64_")),
    ("openblas", ("scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_")),
    ("gomp", ("omp_set_num_threads",)),
    ("iomp", ("omp_set_num_threads",)),
    ("libomp", ("omp_set_num_threads",)),
    ("mkl_rt", ("MKL_Set_Num_Threads",)),
)


def _loaded_libraries() -> list[str]:
    """Paths of the shared libraries mapped into this process (Linux; elsewhere none)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[-1].strip() for line in maps if ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


def _limit_threads(threads: int) -> None:
    """Keep the BLAS and OpenMP libraries of this worker to ``threads`` threads.

    Each library (OpenBLAS in numpy, say) starts as many threads as the
    machine has CPUs, so ``n`` workers doing numpy work on ``n`` cores would run
    ``n * n`` threads that spin while they wait: on 2 busy cores, 2 workers of
    20 ms matrix products took 1.7x as long as one worker (146 s against 86 s
    for 100 items; 8.4 s with one thread each). If the user set any of the
    variables, none is changed. Otherwise they are set, for libraries loaded
    later, and the libraries already loaded (numpy is often imported before the
    initializer runs) are resized through their own functions, as threadpoolctl
    does.
    """
    if any(name in os.environ for name in THREAD_VARIABLES):
        return
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    import ctypes

    for path in _loaded_libraries():
        base = os.path.basename(path)
        for marker, setters in _THREAD_SETTERS:
            if marker not in base:
                continue
            try:
                library = ctypes.CDLL(path)
            except OSError:  # pragma: no cover - mapped but not loadable by name
                continue
            for setter in setters:
                function = getattr(library, setter, None)
                if function is not None:
                    function(ctypes.c_int(threads))
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(threads)


#: The function of the map this worker serves: pickled bytes until first used.
_FN: list[Any] = []


def _worker_init(parent: int, threads: int, fn: bytes) -> None:
    """Initializer of every worker: ignore Ctrl-C, die with the pool's owner, keep
    BLAS/OpenMP to ``threads`` threads, and hold the map's function (pickled once)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    _limit_threads(threads)
    _FN[:] = [fn]


def _run_shipped(chunk: list[Any]) -> ChunkResult[Any]:
    """Run the worker's function over ``chunk``; it is unpickled on first use, once per
    worker, so a function holding a tokenizer or an open source is not rebuilt per task."""
    fn = _FN[0]
    if isinstance(fn, bytes):
        fn = _FN[0] = pickle.loads(fn)
    return run_chunk(fn, chunk)


@contextmanager
def _starting_workers() -> Iterator[None]:
    """Ignore SIGINT while a worker may be started, so that it starts ignoring it.

    A spawned worker inherits an ignored SIGINT (Python keeps it ignored), so
    a Ctrl-C that reaches it while Python starts up, before its initializer,
    does not print a KeyboardInterrupt traceback. Only the first ``workers``
    submissions can start a process; each takes a few milliseconds.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be changed from the main thread
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _abandon(pool: ProcessPoolExecutor) -> None:
    """Stop ``pool`` now: cancel what has not started and end its workers.

    Used on Ctrl-C, on an error and when the caller stops reading results, so
    that nothing waits for tasks whose results nobody will read.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1.0)


@attrs.frozen(kw_only=True)
class LocalExecutor:
    """Runs ``fn`` over items in worker processes and yields results in input order.

    At most ``workers * prefetch`` chunks are in flight, so an endless or huge
    input is consumed lazily (with ``auto``, at most
    ``workers * prefetch * MAX_AUTO_CHUNK`` items). The first failure cancels what has not started
    and is raised in the caller. Ctrl-C, an error, or closing the iterator
    early ends the workers at once (tasks already running are not waited
    for); workers also exit by themselves when this process dies. ``fn`` is
    pickled once and sent once to each worker, not with every chunk. Each
    worker keeps BLAS and OpenMP to one thread (unless ``OMP_NUM_THREADS`` or a
    sibling variable is set), so the worker count is the parallelism.

    :param workers: worker processes; None for one per CPU, 0 to run in this process.
    :param start_method: ``spawn`` (safe default), ``forkserver`` or ``fork``.
    :param prefetch: chunks queued per worker ahead of the results being read.
    :param chunksize: items per task, or ``auto`` (start with one, then enough for ~5 ms).
    """

    name: ClassVar[str] = "local"

    workers: int | None = attrs.field(default=None, validator=optional(at_least(0)))
    start_method: str = attrs.field(
        default="spawn", validator=one_of("spawn", "forkserver", "fork")
    )
    prefetch: int = attrs.field(default=2, validator=at_least(1))
    chunksize: Chunksize = attrs.field(default="auto", validator=check_chunksize)

    @property
    def effective_workers(self) -> int:
        return (os.cpu_count() or 1) if self.workers is None else self.workers

    def map(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        total: int | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> Iterator[R]:
        """Yield ``fn(item)`` for every item, in order, calling ``progress(done, total)``."""
        if total is None and isinstance(items, Sized):
            total = len(items)
        workers = self.effective_workers
        if workers == 0:
            yield from self._inline(fn, items, total, progress)
            return
        # The function travels once per worker, not with every chunk: a function holding a
        # tokenizer or a source would otherwise be pickled here and rebuilt there per task.
        shipped = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        context = multiprocessing.get_context(self.start_method)
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_worker_init,
            initargs=(os.getpid(), WORKER_THREADS, shipped),
        )
        submitted = 0

        def submit(chunk: list[T]) -> Future[ChunkResult[R]]:
            nonlocal submitted
            submitted += 1
            if submitted <= workers:  # only the first submissions can start a worker
                with _starting_workers():
                    return pool.submit(_run_shipped, chunk)
            return pool.submit(_run_shipped, chunk)

        sizer = ChunkSizer(self.chunksize, workers=workers, total=total)
        chunks = ordered_prefetch(submit, chunk_items(items, sizer), ahead=workers * self.prefetch)
        results = unchunk((result for _, result in chunks), sizer, total=total, progress=progress)
        finished = False
        try:
            yield from results
            finished = True
        finally:
            chunks.close()  # cancels what it holds that has not started
            if finished:
                pool.shutdown(wait=True)
            else:
                _abandon(pool)

    @staticmethod
    def _inline(
        fn: Callable[[T], R],
        items: Iterable[T],
        total: int | None,
        progress: Callable[[int, int | None], None] | None,
    ) -> Iterator[R]:
        for done, item in enumerate(items, 1):
            result = fn(item)
            if progress is not None:
                progress(done, total)
            yield result


@hookimpl
def laden_register_executors(registry: Registry) -> None:
    registry.add(LocalExecutor)

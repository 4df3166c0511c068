"""Executors: chunking (``laden.chunks``), the chunked ``local`` executor, and ``ray``.

Every test that starts Ray runs it in a network namespace of its own with only
loopback up (``unshare --net --map-root-user``), and checks inside it that
``lo`` is the only interface before Ray starts: Ray opens listeners beyond
loopback and probes an outside address even when told 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import laden
from laden.chunks import (
    MAX_AUTO_CHUNK,
    TARGET_SECONDS,
    ChunkSizer,
    RemoteTraceback,
    chunk_items,
    run_chunk,
    unchunk,
)
from laden.errors import ConfigError
from laden.plugins.executors.local import LocalExecutor
from laden.testing import check_executor

ROOT = Path(__file__).resolve().parent.parent


def tiny(i: int) -> int:
    return i + 1


def fail_at(i: int) -> int:
    if i == 15:
        raise ValueError(f"task {i} failed on purpose")
    return i


class Unpicklable(Exception):
    def __init__(self, handle: Any) -> None:
        super().__init__("cannot travel")
        self.handle = handle


def raise_unpicklable(i: int) -> int:
    raise Unpicklable(lambda: i)


# ------------------------------------------------------------------ chunking


def run_in_process(fn: Any, items: list[int], chunksize: Any, workers: int = 2) -> Iterator[int]:
    """The chunked map with chunks run here: what an executor does, minus the processes."""
    calls: list[tuple[int, int | None]] = []
    sizer = ChunkSizer(chunksize, workers=workers, total=len(items))
    chunks = (run_chunk(fn, chunk) for chunk in chunk_items(items, sizer))
    yield from unchunk(chunks, sizer, total=len(items), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, len(items)) for i in range(1, len(items) + 1)]


@given(
    n=st.integers(0, 300),
    chunksize=st.one_of(st.just("auto"), st.integers(1, 50)),
    workers=st.integers(1, 8),
)
@settings(max_examples=60, deadline=None)
def test_chunks_keep_order_and_progress_per_item(n: int, chunksize: Any, workers: int) -> None:
    items = list(range(n))
    assert list(run_in_process(tiny, items, chunksize, workers)) == [i + 1 for i in items]


@given(chunksize=st.one_of(st.just("auto"), st.integers(1, 40)))
@settings(max_examples=30, deadline=None)
def test_a_failure_inside_a_chunk_comes_after_the_results_before_it(chunksize: Any) -> None:
    got: list[int] = []
    results = unchunk_plain(fail_at, list(range(40)), chunksize)
    with pytest.raises(ValueError, match="task 15 failed on purpose") as caught:
        got.extend(results)
    assert got == list(range(15))
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_at" in str(cause)
    assert "task 15 failed" in str(cause)


def unchunk_plain(fn: Any, items: list[int], chunksize: Any) -> Iterator[int]:
    sizer = ChunkSizer(chunksize, workers=2, total=len(items))
    chunks = (run_chunk(fn, chunk) for chunk in chunk_items(items, sizer))
    return unchunk(chunks, sizer, total=len(items), progress=None)


def test_an_unpicklable_error_travels_as_a_runtime_error_naming_it() -> None:
    result = run_chunk(raise_unpicklable, [1, 2])
    assert isinstance(result.error, RuntimeError)
    assert "Unpicklable: cannot travel" in str(result.error)


def test_auto_starts_with_one_item_then_aims_at_the_target() -> None:
    sizer = ChunkSizer("auto", workers=2, total=None)
    assert sizer.next_size() == 1
    sizer.observe(1, TARGET_SECONDS / 10)  # an item takes a tenth of the target
    assert sizer.next_size() == 10
    sizer.observe(10, 10 * TARGET_SECONDS * 2)  # slower items: fewer per task
    assert sizer.next_size() == 1
    fast = ChunkSizer("auto", workers=2, total=None)
    fast.observe(100, 1e-6)
    assert fast.next_size() == MAX_AUTO_CHUNK
    balanced = ChunkSizer("auto", workers=2, total=1000)
    balanced.observe(100, 1e-6)
    assert balanced.next_size() == 125  # 4 chunks per worker at least
    assert ChunkSizer(7, workers=2, total=10).next_size() == 7


def test_chunk_items_pulls_lazily() -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        while True:
            pulled += 1
            yield pulled

    chunks = chunk_items(endless(), ChunkSizer(5, workers=1, total=None))
    assert next(chunks) == [1, 2, 3, 4, 5]
    assert pulled == 5


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, 'chunksize: must be "auto" or an integer >= 1, got 0'),
        ("big", "chunksize: expected an integer, got 'big'"),
        (True, "chunksize"),
    ],
)
def test_chunksize_config_is_checked(value: Any, message: str) -> None:
    kernel = laden.Kernel()
    with pytest.raises(ConfigError, match=message):
        kernel.create("executor", {"name": "local", "chunksize": value})
    assert kernel.create("executor", {"name": "local", "chunksize": 3}).chunksize == 3


# ------------------------------------------------------------------ local


@pytest.mark.parametrize("chunksize", [1, 7, "auto"])
def test_chunked_local_conforms(chunksize: Any) -> None:
    check_executor(LocalExecutor, workers=2, chunksize=chunksize)


def test_local_sends_tiny_tasks_in_few_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    submitted: list[int] = []
    original = ProcessPoolExecutor.submit

    def counting(self: ProcessPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        submitted.append(len(args[0]))  # submit(_run_shipped, chunk)
        return original(self, fn, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", counting)
    calls: list[int] = []
    n = 10_000
    results = list(
        LocalExecutor(workers=2).map(tiny, range(n), progress=lambda d, t: calls.append(d))
    )
    assert results == [i + 1 for i in range(n)]
    assert calls == list(range(1, n + 1))  # progress per item, not per chunk
    assert sum(submitted) == n
    assert len(submitted) < 100, f"{len(submitted)} tasks for {n} tiny items"
    assert submitted[0] == 1  # auto measures the first items before grouping


def test_local_failure_in_a_chunk_keeps_the_results_before_it() -> None:
    got: list[int] = []
    results = LocalExecutor(workers=2, chunksize=10).map(fail_at, range(40))
    with pytest.raises(ValueError, match="task 15 failed on purpose") as caught:
        got.extend(results)
    assert got == list(range(15))
    assert isinstance(caught.value.__cause__, RemoteTraceback)


#: Pids of the processes that unpickled a :class:`CountsItsUnpickling` (one entry each time).
UNPICKLED: list[int] = []


def _rebuild_counter() -> CountsItsUnpickling:
    UNPICKLED.append(os.getpid())
    return CountsItsUnpickling()


class CountsItsUnpickling:
    """A mapped function that says how often its process unpickled one: a function
    holding a tokenizer or a source pays that cost each time."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _rebuild_counter, ()

    def __call__(self, i: int) -> tuple[int, int]:
        return os.getpid(), len(UNPICKLED)


def test_local_unpickles_the_function_once_per_worker_not_per_task() -> None:
    results = list(LocalExecutor(workers=2, chunksize=1).map(CountsItsUnpickling(), range(40)))
    assert {count for _, count in results} == {1}, results
    assert 1 <= len({pid for pid, _ in results}) <= 2


def blas_threads(_: int) -> dict[str, Any]:
    """What this worker's BLAS was told: the variables, and OpenBLAS's own thread count."""
    import ctypes

    from laden.plugins.executors.local import THREAD_VARIABLES, _loaded_libraries

    counts = []
    for path in _loaded_libraries():
        if "openblas" in os.path.basename(path):
            library = ctypes.CDLL(path)
            for name in ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_"):
                getter = getattr(library, name, None)
                if getter is not None:
                    counts.append(int(getter()))
    return {"env": {k: os.environ.get(k) for k in THREAD_VARIABLES}, "openblas": counts}


def _openblas_loaded_here() -> bool:
    from laden.plugins.executors.local import _loaded_libraries

    return any("openblas" in os.path.basename(p) for p in _loaded_libraries())


def test_local_workers_keep_blas_to_one_thread_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from laden.plugins.executors.local import THREAD_VARIABLES

    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    share = 1  # the worker count is the parallelism
    results = list(LocalExecutor(workers=2, chunksize=1).map(blas_threads, range(4)))
    for got in results:
        assert got["env"] == dict.fromkeys(THREAD_VARIABLES, str(share))
        if _openblas_loaded_here():  # numpy was loaded before the initializer: resized in place
            assert got["openblas"], got
            assert set(got["openblas"]) == {share}, got


def test_local_workers_leave_a_thread_setting_the_user_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from laden.plugins.executors.local import THREAD_VARIABLES

    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # laden would set 1
    (got,) = LocalExecutor(workers=2).map(blas_threads, [0])
    assert got["env"]["OPENBLAS_NUM_THREADS"] == "2"
    assert got["env"]["OMP_NUM_THREADS"] is None
    if _openblas_loaded_here():  # OpenBLAS keeps to the CPUs there are
        assert got["openblas"] == [min(2, os.cpu_count() or 1)]


def test_ray_tasks_fetch_the_function_once_per_worker_and_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from laden.plugins.executors import ray as ray_executor

    fetched: list[Any] = []

    class FakeRay:
        @staticmethod
        def get(ref: Any) -> Any:
            fetched.append(ref)
            return tiny if ref == "ref-1" else abs

    monkeypatch.setitem(sys.modules, "ray", FakeRay)
    monkeypatch.setattr(ray_executor, "_CACHED", [])
    first = [ray_executor._run_cached("map-1", ["ref-1"], [i, i + 1]).results for i in range(5)]
    assert first == [[i + 1, i + 2] for i in range(5)]
    assert fetched == ["ref-1"]  # once, not per task
    assert ray_executor._run_cached("map-2", ["ref-2"], [-3]).results == [3]
    assert fetched == ["ref-1", "ref-2"]  # a new map fetches its own function


class RecordingExecutor:
    """Runs in this process and notes how many items each task held (sweep: points)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def map(self, fn: Any, items: Any, **_: Any) -> Iterator[Any]:
        for item in items:
            self.sizes.append(len(item[1]))
            yield fn(item)


@pytest.mark.parametrize(("points", "most"), [(100, 2), (1000, 16), (20_000, 64)])
def test_a_sweep_cuts_its_points_into_enough_tasks_to_spread(
    tmp_path: Path, points: int, most: int
) -> None:
    from laden.sweep import parse_sweep, run_sweep
    from tests import sweep_helpers

    kernel = laden.Kernel(autoload=False)
    kernel.register(sweep_helpers, "sweep_helpers")
    spec = parse_sweep(
        {
            "sweep": {"points": [{"type": "instant", "parameters": {"i": list(range(points))}}]},
            "output": {"writer": "npz", "points_per_file": 1000},
        },
        kernel=kernel,
    )
    recording = RecordingExecutor()
    result = run_sweep(spec, kernel=kernel, output=tmp_path / "o", executor=recording)
    assert result.ok == points
    assert sum(recording.sizes) == points
    assert max(recording.sizes) == most  # 100 points of 20 ms were 64 + 36 before
    assert len(recording.sizes) >= points / most


# ------------------------------------------------------------------ ray


def _namespace_problem() -> str | None:
    """Why Ray cannot be tested here, or None."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install laden[ray])"
    if (
        not sys.platform.startswith("linux")
        or not shutil.which("unshare")
        or not shutil.which("ip")
    ):
        return "needs Linux network namespaces (unshare, ip): Ray must not reach beyond loopback"
    probe = subprocess.run(
        ["unshare", "--net", "--map-root-user", "ip", "-o", "link"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"network namespaces are unavailable here: {probe.stderr.strip()}"
    return None


NAMESPACE_PROBLEM = _namespace_problem()
needs_ray_namespace = pytest.mark.skipif(
    NAMESPACE_PROBLEM is not None, reason=str(NAMESPACE_PROBLEM)
)

#: Run first in every namespace script: only loopback may exist, and it must be up.
PRELUDE = """
import json, os, sys
names = [line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]]
assert names == ["lo"], f"not a loopback-only network namespace: {names}"
"""


def in_namespace(code: str, *, timeout: float = 300, cwd: Path | None = None) -> dict[str, Any]:
    """Run Python ``code`` in a new network namespace with only ``lo`` up; its last line is JSON."""
    script = PRELUDE + textwrap.dedent(code)
    proc = subprocess.run(
        [
            "unshare",
            "--net",
            "--map-root-user",
            "bash",
            "-c",
            'ip link set lo up && exec "$0" -c "$1"',
            sys.executable,
            script,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_ray_config_is_checked() -> None:
    kernel = laden.Kernel()
    if NAMESPACE_PROBLEM and "not installed" in NAMESPACE_PROBLEM:
        pytest.skip(NAMESPACE_PROBLEM)
    with pytest.raises(ConfigError, match=r"executor\.address: must be none"):
        kernel.create("executor", {"name": "ray", "address": "bogus"})
    with pytest.raises(ConfigError, match=r"executor\.num_cpus: is the size of a local cluster"):
        kernel.create("executor", {"name": "ray", "address": "auto", "num_cpus": 2})
    ex = kernel.create("executor", {"name": "ray", "num_cpus": 2, "runtime_env": {"env_vars": {}}})
    settings = ex.init_settings()
    assert settings["include_dashboard"] is False
    assert settings["address"] == "local"  # never joins a cluster it was not asked to
    assert settings["_node_ip_address"] == "127.0.0.1"
    assert (
        kernel.create("executor", {"name": "ray", "address": "auto"}).init_settings()["address"]
        == "auto"
    )


@pytest.mark.slow
@needs_ray_namespace
def test_ray_executor_conforms_and_its_cluster_goes_away() -> None:
    out = in_namespace(
        """
        import signal, subprocess, time
        import ray
        from laden.plugins.executors.ray import RayExecutor
        from laden.testing import check_executor

        os.setsid()  # every Ray process this script starts shares its session

        def in_session(sid):
            pids = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[3]) == sid and int(pid) != os.getpid() and stat[0] != "Z":
                    pids.append(int(pid))
            return pids

        # the contract, on a cluster the caller started (left running by the map)
        ray.init(**RayExecutor(num_cpus=2).init_settings())
        check_executor(RayExecutor)
        check_executor(RayExecutor, chunksize=3)
        still_up = ray.is_initialized()
        ray.shutdown()

        # a cluster of its own: started for the map, stopped after it
        calls = []
        ex = RayExecutor(num_cpus=2)
        results = list(ex.map(abs, range(-300, 300), progress=lambda d, t: calls.append(d)))
        time.sleep(0.5)
        own = {
            "results": results == [abs(i) for i in range(-300, 300)],
            "progress": calls == list(range(1, 601)),
            "initialized_after": ray.is_initialized(),
            "left_after": in_session(os.getpid()),
        }

        # kill -9 of the driver: every process of its cluster goes too
        driver = '''
        import time
        from laden.plugins.executors.ray import RayExecutor
        def slow(x):
            time.sleep(0.05)
            return x
        for i, _ in enumerate(RayExecutor(num_cpus=2, chunksize=1).map(slow, range(10**6))):
            if i == 3:
                print("running", flush=True)
        '''
        p = subprocess.Popen(
            [sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        assert p.stdout.readline().strip() == "running"
        before = in_session(p.pid)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        deadline = time.monotonic() + 10
        while in_session(p.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        print(json.dumps({
            "still_up": still_up, "own": own, "before": len(before), "left": in_session(p.pid),
        }))
        """
    )
    assert out["still_up"] is True  # a connection the caller made is left open
    own = out["own"]
    assert own["results"]
    assert own["progress"]
    assert own["initialized_after"] is False
    assert own["left_after"] == []  # its agents too
    assert out["before"] >= 5  # gcs, raylet, agents, workers
    assert out["left"] == [], "processes of the killed driver's Ray cluster are still running"


@pytest.mark.slow
@needs_ray_namespace
def test_cli_lengths_build_and_write_on_ray_match_local(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    rng = np.random.default_rng(0)
    data.write_text(
        "".join(json.dumps({"text": "tok " * int(n)}) + "\n" for n in rng.integers(1, 60, 400))
    )
    config = tmp_path / "run.yaml"
    config.write_text("seed: 1\nepochs: 1\nsampler:\n  name: token_budget\n  token_budget: 512\n")
    laden_bin = [str(Path(sys.executable).parent / "laden")]
    local = [
        ["lengths", "build", str(data), "-o", str(tmp_path / "lens"), "--workers", "0"],
        [
            "plan",
            "build",
            str(tmp_path / "lens"),
            "--config",
            str(config),
            "-o",
            str(tmp_path / "plan"),
        ],
        ["write", str(tmp_path / "plan"), "-o", str(tmp_path / "batches"), "--workers", "2"],
    ]
    for args in local:
        subprocess.run([*laden_bin, *args], check=True, capture_output=True)
    out = in_namespace(
        f"""
        import subprocess
        laden = {laden_bin!r}
        runs = [
            ["lengths", "build", {str(data)!r}, "-o", {str(tmp_path / "lens-ray")!r},
             "--executor", "ray", "--workers", "2", "-E", "chunksize=1", "--json"],
            ["write", {str(tmp_path / "plan")!r}, "-o", {str(tmp_path / "batches-ray")!r},
             "--executor", "ray", "--workers", "2", "--json"],
        ]
        codes = []
        for args in runs:
            p = subprocess.run(laden + args, capture_output=True, text=True)
            codes.append([p.returncode, p.stderr[-2000:]])
        print(json.dumps({{"codes": codes}}))
        """
    )
    for code, err in out["codes"]:
        assert code == 0, err
    from laden.lengths import load_lengths

    ours, theirs = load_lengths(tmp_path / "lens"), load_lengths(tmp_path / "lens-ray")
    assert np.array_equal(ours.length, theirs.length)
    files = sorted(p.name for p in (tmp_path / "batches").iterdir() if p.name.endswith(".npz"))
    assert files
    assert files == sorted(
        p.name for p in (tmp_path / "batches-ray").iterdir() if p.name.endswith(".npz")
    )
    for name in files:
        with (
            np.load(tmp_path / "batches" / name) as a,
            np.load(tmp_path / "batches-ray" / name) as b,
        ):
            assert a.files == b.files
            for key in a.files:
                assert np.array_equal(a[key], b[key]), (name, key)

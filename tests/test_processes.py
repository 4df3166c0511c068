"""Processes behave: workers die with their parent, Ctrl-C stops every command within
2 s and leaves resumable state, ``lengths build`` resumes from the ranges already
measured, and a progress bar shows on a terminal within 1 s (and only there).

The subprocess tests run ``laden`` with one more tokenizer, ``slow`` (from
``fixtures/slow_laden.py``), which counts like ``bytes`` but sleeps per text.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import laden
from laden.files.write import verify_directory
from laden.lengths import build_lengths, load_lengths
from laden.plan import BatchPlan
from laden.plugins.sources.jsonl import MIN_CHUNK_BYTES, MIN_CHUNKS
from laden.progress import CLEAR_TO_EOL, Progress
from laden.serde import canonical_json, digest

FIXTURES = Path(__file__).parent / "fixtures"
LADEN = [sys.executable, "-c", "import slow_laden; slow_laden.main()"]
#: Ctrl-C must end a command within this many seconds.
STOP_SECONDS = 2.0
POSIX_ONLY = pytest.mark.skipif(os.name != "posix", reason="signals and ptys are POSIX")
#: Tests that list a process's descendants read /proc.
LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def env(**extra: str) -> dict[str, str]:
    paths = [str(FIXTURES), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **extra}


def write_rows(path: Path, n: int, *, seed: int = 0, size: tuple[int, int] = (500, 1500)) -> Path:
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for i, length in enumerate(rng.integers(*size, n)):
            row = {"id": f"s{i}", "text": "é" * int(length // 2)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - reused by another user's process
        return False
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return True


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(entry.name)] = int(
                (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            )
        except (OSError, IndexError, ValueError):
            continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def logged_pids(log: Path) -> set[int]:
    if not log.exists():
        return set()
    return {int(line.split()[0]) for line in log.read_text().splitlines() if line.strip()}


def logged_count(log: Path) -> int:
    if not log.exists():
        return 0
    return sum(int(line.split()[1]) for line in log.read_text().splitlines() if line.strip())


def interrupt(process: subprocess.Popen[str]) -> tuple[float, str, str]:
    """Ctrl-C as a terminal sends it (to the whole process group); the seconds to exit."""
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    try:
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:  # pragma: no cover - only when the test fails
            os.killpg(process.pid, signal.SIGKILL)
    return time.monotonic() - started, out, err


def start(args: Sequence[str], cwd: Path, **extra_env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*LADEN, *args],
        cwd=cwd,
        env=env(**extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a job on a terminal
    )


def chunk_files(output: Path) -> list[Path]:
    return sorted(output.parent.glob(f".{output.name}.partial/chunk-*.npz"))


# --------------------------------------------------------------- progress bar


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(text: str) -> str:
    """The last line a terminal shows after ``text`` (``\\r`` and erase-to-end-of-line)."""
    line: list[str] = []
    col = 0
    i = 0
    while i < len(text):
        if text.startswith(CLEAR_TO_EOL, i):
            del line[col:]
            i += len(CLEAR_TO_EOL)
            continue
        ch = text[i]
        if ch == "\r":
            col = 0
        elif ch == "\n":
            line, col = [], 0
        else:
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    return "".join(line)


def test_progress_leaves_no_stray_characters_when_its_line_shrinks() -> None:
    tty = FakeTTY()
    bar = Progress(None, "a long description of the work", stream=tty, tick=0)
    bar.desc = "short"
    bar.done = 5
    bar.close()  # draws the last frame, then ends the line
    shown = screen(tty.getvalue().rstrip("\n"))
    assert shown.startswith("short 5 ")
    assert "description" not in shown
    assert "work" not in shown
    # Every frame erases what an earlier, longer one left behind.
    frames = tty.getvalue().split("\r")[1:]
    assert frames
    assert all(f.rstrip("\n").endswith(CLEAR_TO_EOL) for f in frames)


def test_progress_shows_at_once_and_its_clock_runs_between_updates() -> None:
    tty = FakeTTY()
    bar = Progress(100, "work", stream=tty, unit="files", tick=0.05)
    assert screen(tty.getvalue()).startswith("work [")  # before any work is reported
    assert "0/100 files" in tty.getvalue()
    wait_for(lambda: tty.getvalue().count("\r") >= 4, 5, "the bar to be redrawn")
    bar.close()
    assert tty.getvalue().endswith("\n")
    drawn = tty.getvalue()
    time.sleep(0.2)
    assert tty.getvalue() == drawn  # nothing after close
    gone = FakeTTY()
    with Progress(3, "hashing", stream=gone, leave=False, tick=0) as transient:
        transient.update(3)
    assert screen(gone.getvalue()) == ""  # a transient bar leaves an empty line


def test_progress_is_silent_off_a_terminal() -> None:
    pipe = io.StringIO()
    with Progress(10, "work", stream=pipe, tick=0.01) as bar:
        time.sleep(0.05)
        bar.update(10)
    assert pipe.getvalue() == ""


def run_on_a_pty(
    args: Sequence[str], cwd: Path, timeout: float = 60, marker: bytes = b"measuring ["
) -> tuple[bytes, float, int]:
    """Run with stderr on a pseudo-terminal: what it drew, seconds to the first bar, status."""
    master, slave = os.openpty()
    started_file = cwd / "started"
    process = subprocess.Popen(
        [*LADEN, *args],
        cwd=cwd,
        env=env(SLOW_LADEN_STARTED=str(started_file)),
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    drawn = b""
    first_bar = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                drawn += data
                if first_bar is None and marker in drawn:
                    first_bar = time.time()
            elif process.poll() is not None:
                break
        status = process.wait(timeout=30)
    finally:
        os.close(master)
        if process.poll() is None:  # pragma: no cover - only when the test fails
            process.kill()
    assert first_bar is not None, drawn
    return drawn, first_bar - float(started_file.read_text()), status


@POSIX_ONLY
def test_a_bar_shows_on_a_terminal_within_a_second(tmp_path: Path) -> None:
    # Under 16 MiB: measured in one range, with no bar, before this was fixed.
    data = write_rows(tmp_path / "d.jsonl", 300)
    args = ["lengths", "build", "d.jsonl", "-o", "out", "--tokenizer", "slow", "-T", "delay=0.01"]
    drawn, seconds, status = run_on_a_pty(args, tmp_path)
    assert status == 0, drawn
    assert seconds < 1.0
    text = drawn.decode()
    assert f"{data.stat().st_size}/{data.stat().st_size} bytes" in text
    assert text.count("\r") > 3  # it moved along the way, not only at the end
    assert "Traceback" not in text


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    write_rows(tmp_path / "d.jsonl", 100)
    args = ["lengths", "build", "d.jsonl", "-o", "out", "--tokenizer", "slow", "-T", "delay=0.005"]
    done = subprocess.run(
        [*LADEN, *args], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "\r" not in done.stdout
    assert "measuring [" not in done.stdout


# ------------------------------------------------------------- byte ranges


def test_a_small_file_is_measured_in_many_ranges(kernel: laden.Kernel, tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.jsonl", 3000, size=(200, 1200))  # about 2 MiB
    size = path.stat().st_size
    raw = path.read_bytes()
    source = kernel.create("source", {"name": "jsonl", "path": str(path)})
    chunks = source.chunks()
    assert len(chunks) >= min(MIN_CHUNKS, size // MIN_CHUNK_BYTES) - 1
    assert len(chunks) >= 20
    assert chunks[0][0] == 0
    assert chunks[-1][1] == size
    assert all(a < b for a, b in chunks)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(chunks))
    assert all(raw[a - 1 : a] == b"\n" for a, _ in chunks[1:])  # each starts a line
    # chunk_bytes stays the most a range holds (plus the end of its last line).
    tiny = kernel.create("source", {"name": "jsonl", "path": str(path), "chunk_bytes": 4096})
    assert all(b - a <= 4096 + 1300 for a, b in tiny.chunks())
    assert len(tiny.chunks()) > len(chunks)


# ------------------------------------------------- lengths build: resume


_calls: list[int] = []


@attrs.frozen(kw_only=True)
class StoppingTokenizer:
    """``bytes`` counting that raises KeyboardInterrupt on call ``stop_at`` (in-process)."""

    name: ClassVar[str] = "stopping"
    vocab_size: ClassVar[int] = 256

    stop_at: int = 0

    def count(self, texts: Sequence[str]) -> np.ndarray:
        _calls.append(len(texts))
        if len(_calls) == self.stop_at:
            raise KeyboardInterrupt
        return np.asarray([len(t.encode("utf-8", "surrogatepass")) for t in texts], dtype=np.int64)

    def fingerprint(self) -> str:
        return digest(canonical_json({"name": self.name}))


def measure(
    kernel: laden.Kernel, path: Path, out: Path | None, *, stop_at: int = 0, **source: Any
) -> laden.LengthTable:
    """Measure ``path`` in this process; ``_calls`` gets one entry per range measured."""
    _calls.clear()
    return build_lengths(
        kernel.create("source", {"name": "jsonl", "path": str(path), **source}),
        StoppingTokenizer(stop_at=stop_at),
        output=out,
        executor=kernel.create("executor", {"name": "local", "workers": 0}),
    )


def same_table(a: laden.LengthTable, b: laden.LengthTable) -> None:
    assert a.digest() == b.digest()
    for column in ("length", "offset", "key", "ids"):
        x, y = getattr(a, column), getattr(b, column)
        assert (x is None) == (y is None), column
        if x is not None:
            assert x.dtype == y.dtype, column
            assert x.tolist() == y.tolist(), column
    for key in ("num_lines", "skipped", "skipped_lines", "blank", "dataset_digest"):
        assert a.meta[key] == b.meta[key], key


def test_an_interrupted_build_resumes_from_the_measured_ranges(
    kernel: laden.Kernel, tmp_path: Path
) -> None:
    path = write_rows(tmp_path / "d.jsonl", 400, size=(10, 300))
    out = tmp_path / "cache"
    chunk = {"chunk_bytes": 2048}
    reference = measure(kernel, path, None, **chunk)
    ranges = len(_calls)
    assert ranges > 10
    with pytest.raises(KeyboardInterrupt) as stopped:
        measure(kernel, path, out, stop_at=6, **chunk)
    kept = chunk_files(out)
    assert len(kept) == 5
    assert not out.exists()
    assert "run the same command again" in " ".join(getattr(stopped.value, "__notes__", []))
    resumed = measure(kernel, path, out, **chunk)
    assert len(_calls) == ranges - 5  # only the ranges still missing
    same_table(resumed, reference)
    same_table(load_lengths(out), reference)
    assert not (tmp_path / ".cache.partial").exists()  # removed once the cache is saved


id_values = st.one_of(
    st.text(max_size=6),
    st.integers(min_value=-(2**40), max_value=2**40),
)


@st.composite
def datasets(draw: st.DrawFn) -> tuple[list[str], str]:
    n = draw(st.integers(1, 60))
    ids = draw(st.sampled_from(["none", "str", "int", "mixed"]))
    keys = draw(st.booleans())
    lines = []
    for i in range(n):
        kind = draw(st.sampled_from(["row", "row", "row", "ids", "blank", "bad"]))
        if kind == "blank":
            lines.append("")
            continue
        if kind == "bad":
            lines.append(draw(st.sampled_from(["{not json", "[1, 2]", '{"text": 5}'])))
            continue
        row: dict[str, Any] = (
            {"input_ids": draw(st.lists(st.integers(0, 255), max_size=5))}
            if kind == "ids"
            else {"text": draw(st.text(max_size=40))}
        )
        if ids == "str" or (ids == "mixed" and i % 2):
            row["id"] = f"r{i}-" + draw(st.text(max_size=4))
        elif ids in ("int", "mixed"):
            row["id"] = draw(st.integers(-(2**40), 2**40))
        if keys:
            row["key"] = draw(st.integers(0, 9))
        lines.append(json.dumps(row))
    return lines, "skip"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=datasets(), chunk_bytes=st.integers(16, 400), stop=st.integers(1, 30))
def test_a_resumed_build_equals_an_uninterrupted_one(
    kernel: laden.Kernel,
    tmp_path_factory: pytest.TempPathFactory,
    data: tuple[list[str], str],
    chunk_bytes: int,
    stop: int,
) -> None:
    lines, on_error = data
    root = tmp_path_factory.mktemp("resume")
    path = root / "d.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    out = root / "cache"
    chunk = {"chunk_bytes": chunk_bytes, "on_error": on_error}
    reference = measure(kernel, path, None, **chunk)
    texts_calls = len(_calls)
    if stop <= texts_calls:
        with pytest.raises(KeyboardInterrupt):
            measure(kernel, path, out, stop_at=stop, **chunk)
    resumed = measure(kernel, path, out, **chunk)
    assert len(_calls) <= texts_calls - (stop - 1 if stop <= texts_calls else 0)
    same_table(resumed, reference)


def test_work_for_other_data_is_discarded_and_a_foreign_folder_is_kept(
    kernel: laden.Kernel, tmp_path: Path
) -> None:
    path = write_rows(tmp_path / "d.jsonl", 200, size=(10, 300))
    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        measure(kernel, path, out, stop_at=4, chunk_bytes=2048)
    assert len(chunk_files(out)) == 3
    write_rows(path, 200, seed=1, size=(10, 300))  # the dataset changed
    table = measure(kernel, path, out, chunk_bytes=2048)
    same_table(table, measure(kernel, path, None, chunk_bytes=2048))
    assert not (tmp_path / ".cache.partial").exists()
    # A folder of that name that laden did not make is refused, never emptied.
    foreign = tmp_path / ".other.partial"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(laden.ConfigError, match=r"\.other\.partial exists and is not laden's"):
        measure(kernel, path, tmp_path / "other")
    assert (foreign / "notes.txt").read_text() == "mine"


def test_a_data_error_leaves_no_work_directory(kernel: laden.Kernel, tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.jsonl", 100, size=(10, 300))
    with path.open("a") as f:
        f.write("{broken\n")
    with pytest.raises(laden.DataError, match=r"d\.jsonl:101: invalid JSON"):
        measure(kernel, path, tmp_path / "cache", chunk_bytes=2048)
    assert not (tmp_path / ".cache.partial").exists()


# -------------------------------------------------- workers die with the parent


SLEEPER = """
import os, sys, time
from pathlib import Path

def nap(folder):
    Path(folder, str(os.getpid())).touch()
    time.sleep(120)
    return 0

if __name__ == "__main__":
    from laden.kernel import Kernel
    executor = Kernel(autoload=False).create(
        "executor", {"name": "local", "workers": 2, "start_method": sys.argv[2]}
    )
    for _ in executor.map(nap, [sys.argv[1]] * 8):
        pass
"""


def assert_all_exit(pids: set[int], seconds: float = 5.0) -> None:
    wait_for(lambda: not any(alive(p) for p in pids), seconds, f"workers {sorted(pids)} to exit")


@LINUX_ONLY
@pytest.mark.slow
@pytest.mark.parametrize(
    ("start_method", "how"),
    [("spawn", signal.SIGKILL), ("spawn", signal.SIGTERM), ("forkserver", signal.SIGKILL)],
)
def test_workers_exit_when_their_parent_dies(
    tmp_path: Path, start_method: str, how: signal.Signals
) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    folder = tmp_path / "pids"
    folder.mkdir()
    parent = subprocess.Popen(
        [sys.executable, str(script), str(folder), start_method],
        env=env(),
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: len(list(folder.iterdir())) == 2, 60, "two busy workers")
        workers = {int(p.name) for p in folder.iterdir()}
        below = descendants(parent.pid)
        assert workers <= below or not below
        os.kill(parent.pid, how)
        parent.wait(timeout=10)
        assert_all_exit(workers | below)
    finally:
        for pid in descendants(parent.pid) | {int(p.name) for p in folder.iterdir()}:
            if alive(pid):  # pragma: no cover - only when the test fails
                os.kill(pid, signal.SIGKILL)


@LINUX_ONLY
@pytest.mark.slow
def test_lengths_build_workers_exit_when_it_is_killed(tmp_path: Path) -> None:
    write_rows(tmp_path / "d.jsonl", 300)
    log = tmp_path / "log"
    args = ["lengths", "build", "d.jsonl", "-o", "out", "--workers", "2", "--tokenizer", "slow"]
    process = start([*args, "-T", "delay=0.5", "-T", f"log={log}"], tmp_path)
    try:
        wait_for(lambda: len(logged_pids(log)) == 2, 60, "two workers measuring")
        workers = logged_pids(log) | descendants(process.pid)
        process.kill()
        process.communicate(timeout=10)
        assert_all_exit(workers)
    finally:
        if process.poll() is None:  # pragma: no cover
            os.killpg(process.pid, signal.SIGKILL)


# ------------------------------------------------------------------- Ctrl-C


def no_traceback(err: str) -> None:
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err, err


@LINUX_ONLY
@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_ctrl_c_stops_lengths_build_and_a_rerun_measures_only_the_rest(
    kernel: laden.Kernel, tmp_path: Path, workers: str
) -> None:
    data = write_rows(tmp_path / "d.jsonl", 640)
    out = tmp_path / "out"
    log = tmp_path / "log"
    args = ["lengths", "build", "d.jsonl", "-o", "out", "--tokenizer", "slow"]
    args += ["--workers", workers, "-T", "delay=0.01", "-T", f"log={log}"]
    process = start(args, tmp_path)
    wait_for(lambda: len(chunk_files(out)) >= 2, 60, "two measured ranges")
    below = descendants(process.pid)
    seconds, _, err = interrupt(process)
    assert process.returncode == 130, err
    assert seconds < STOP_SECONDS
    no_traceback(err)
    assert err.strip().splitlines()[-1].startswith("Error: interrupted; ")
    assert "run the same command again" in err
    assert_all_exit(below, 3.0)
    kept = len(chunk_files(out))
    assert kept >= 2
    assert not out.exists()
    measured_first = logged_count(log)
    done = subprocess.run(
        [*LADEN, *args], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert logged_count(log) - measured_first < 640  # the kept ranges were not measured again
    reference = build_lengths(
        kernel.create("source", {"name": "jsonl", "path": str(data)}),
        kernel.create("tokenizer", "bytes"),
        executor=kernel.create("executor", {"name": "local", "workers": 0}),
    )
    same_table(load_lengths(out), reference)
    assert not chunk_files(out)
    assert not (tmp_path / ".out.partial").exists()


@POSIX_ONLY
@pytest.mark.slow
def test_ctrl_c_stops_write_and_resume_finishes(kernel: laden.Kernel, tmp_path: Path) -> None:
    write_rows(tmp_path / "d.jsonl", 120, size=(20, 400))
    build = ["lengths", "build", "d.jsonl", "-o", "lengths", "--tokenizer", "slow"]
    made = subprocess.run(
        [*LADEN, *build], cwd=tmp_path, env=env(), capture_output=True, timeout=120
    )
    assert made.returncode == 0, made.stderr
    table = load_lengths(tmp_path / "lengths")
    sampler = kernel.create("sampler", {"name": "token_budget", "token_budget": 600})
    BatchPlan.build(table, sampler, epochs=1, seed=0).save(tmp_path / "plan")
    write = ["write", "plan", "--dataset", "d.jsonl", "--lengths", "lengths", "-o", "batches"]
    process = start([*write, "-T", "delay=0.05"], tmp_path)
    wait_for(lambda: len(list((tmp_path / "batches").glob("*.npz"))) >= 2, 60, "two batch files")
    seconds, _, err = interrupt(process)
    assert process.returncode == 130, err
    assert seconds < STOP_SECONDS
    no_traceback(err)
    assert "Error: interrupted" in err
    assert "--resume" in err
    resumed = subprocess.run(
        [*LADEN, *write, "--resume"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert verify_directory(tmp_path / "batches") == []


@LINUX_ONLY
@pytest.mark.slow
def test_ctrl_c_stops_the_demo(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "laden", "demo", "--output", str(tmp_path / "demo")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for(lambda: bool(descendants(process.pid) - {process.pid}), 60, "the demo's workers")
    time.sleep(0.5)
    assert process.poll() is None  # still working: the demo takes several seconds
    below = descendants(process.pid)
    seconds, _, err = interrupt(process)
    assert process.returncode == 130, err
    assert seconds < STOP_SECONDS
    no_traceback(err)
    assert err.strip().splitlines()[-1].startswith("Error: interrupted")
    assert_all_exit(below, 3.0)


@pytest.mark.slow
def test_ctrl_c_in_the_demos_online_section_stops_it(tmp_path: Path) -> None:
    # Ctrl-C reaches the whole process group: the arcade server the demo starts runs in
    # a session of its own (stopped by PID), and the interrupt is not lost inside the
    # stream's event loop (it was: the demo went on and exited 0). With the mock source
    # instead of the server the section takes a fraction of a second: nothing to catch.
    pytest.importorskip("chuk_puzzles_gym", reason="the arcade extra starts a server")
    process = start(["demo", "--output", str(tmp_path / "demo")], tmp_path)
    wait_for(lambda: (tmp_path / "demo" / "online").exists(), 60, "the online section")
    time.sleep(0.2)
    if process.poll() is not None:  # pragma: no cover - finished before the signal
        process.communicate()
        pytest.fail("the demo finished before its online section could be interrupted")
    below = descendants(process.pid)
    seconds, _, err = interrupt(process)
    assert process.returncode == 130, err
    assert seconds < STOP_SECONDS
    no_traceback(err)
    assert err.strip().splitlines()[-1].startswith("Error: interrupted")
    assert_all_exit(below, 3.0)


def test_plan_build_shows_a_bar_on_a_terminal(tmp_path: Path) -> None:
    # A plan of millions of samples takes seconds; its bar (elapsed time) shows at once.
    from laden.lengths import save_lengths

    lengths = np.random.default_rng(0).integers(8, 4096, 200_000)
    save_lengths(laden.LengthTable.from_lengths(lengths), tmp_path / "lens")
    (tmp_path / "run.toml").write_text('[sampler]\nname = "token_budget"\ntoken_budget = 16384\n')
    args = ["plan", "build", "lens", "--config", "run.toml", "-o", "plan"]
    drawn, seconds, status = run_on_a_pty(args, tmp_path, marker=b"planning")
    assert status == 0, drawn
    assert seconds < 1.0
    text = drawn.decode()
    assert "planning" in text
    assert "\x1b[K" in text  # the bar's line is cleared, nothing stray is left
    assert "Traceback" not in text

"""``laden stream collect|stats`` and the library under them (``laden.stream.collect``)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import pytest

import laden
from laden.errors import ConfigError, DataError
from laden.stream import ReplayBuffer
from laden.stream.collect import (
    CollectStatus,
    collect,
    load_summary,
    online_demo,
    stream_stats,
)
from laden.testing import registered, run_cli
from tests.arcade_server import ArcadeServer


def rows(directory: Path) -> list[dict[str, Any]]:
    with open(directory / "samples.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def mock(kernel: laden.Kernel, **settings: Any) -> Any:
    return kernel.create("source", {"name": "mock", "seed": 3, "num_samples": None, **settings})


# ------------------------------------------------------------------ sources for tests


@attrs.frozen(kw_only=True)
class ListSource:
    """Yields the given samples (a test stand-in for any source plugin)."""

    name: ClassVar[str] = "listed"
    samples: tuple[Any, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.samples)


@attrs.frozen(kw_only=True)
class AsyncOnlySource:
    """An async-only source: no ``__iter__``."""

    name: ClassVar[str] = "async_only"
    count: int = 50

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[dict[str, Any]]:
        for i in range(self.count):
            yield {"input_ids": [i % 7 + 1] * (i % 5 + 1), "sample_id": i}


@attrs.frozen(kw_only=True)
class BrokenSource:
    """Fails at once, every time."""

    name: ClassVar[str] = "broken"

    def __iter__(self) -> Iterator[Any]:
        raise ConnectionRefusedError("refused")


@attrs.frozen(kw_only=True)
class InterruptingSource:
    """``mock`` samples, then Ctrl-C after ``after`` of them (once per process)."""

    name: ClassVar[str] = "interrupting"
    after: int = 120
    fired: ClassVar[list[bool]] = []

    def iter_from(self, position: int) -> Iterator[dict[str, Any]]:
        source = laden.plugins.sources.mock.MockSource(seed=3, num_samples=None)
        for sample in source.iter_from(position):
            if sample["sample_id"] == self.after and not self.fired:
                self.fired.append(True)
                raise KeyboardInterrupt
            yield sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_from(0)


class Plugin:
    @laden.hookimpl
    def laden_register_sources(self, registry: laden.Registry) -> None:
        for cls in (ListSource, AsyncOnlySource, BrokenSource, InterruptingSource):
            registry.add(cls)


# ------------------------------------------------------------------ the command


def test_collect_mock_then_every_offline_command(kernel: laden.Kernel, tmp_path: Path) -> None:
    out = tmp_path / "collected"
    result = run_cli(
        kernel,
        "stream",
        "collect",
        "--source",
        "mock",
        "-S",
        "seed=3",
        "-S",
        "prompt_tokens=4",
        "--samples",
        "300",
        "-o",
        str(out),
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["status"] == "complete"
    assert summary["samples"] == 300
    assert summary["errors"] == 0
    assert summary["buffer_stats"]["size"] == 300
    assert summary["source"]["name"] == "mock"
    assert summary["source"]["seed"] == 3
    written = rows(out)
    assert [r["id"] for r in written] == list(range(300))
    assert sum(len(r["input_ids"]) for r in written) == summary["tokens"]
    assert all(r["loss_mask"][:4] == [0] * 4 for r in written)
    assert load_summary(out)["kind"] == "laden.stream"

    # The dataset goes through lengths build, plan build and write unchanged.
    lengths = tmp_path / "lengths"
    result = run_cli(
        kernel, "lengths", "build", str(out / "samples.jsonl"), "-o", str(lengths), "--json"
    )
    assert result.exit_code == 0, result.output
    measured = json.loads(result.output)
    assert measured["samples"] == 300
    assert measured["tokens"] == summary["tokens"]
    (tmp_path / "budget.toml").write_text(
        '[sampler]\nname = "token_budget"\ntoken_budget = 8192\noverflow = "truncate"\n'
    )
    plan = tmp_path / "plan"
    result = run_cli(
        kernel,
        "plan",
        "build",
        str(lengths),
        "--config",
        str(tmp_path / "budget.toml"),
        "-o",
        str(plan),
    )
    assert result.exit_code == 0, result.output
    batches = tmp_path / "batches"
    result = run_cli(
        kernel,
        "write",
        str(plan),
        "--dataset",
        str(out / "samples.jsonl"),
        "--lengths",
        str(lengths),
        "--writer",
        "npz",
        "--output",
        str(batches),
        "--workers",
        "0",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["failed"] == 0
    assert run_cli(kernel, "verify", str(batches)).exit_code == 0


def test_rows_carry_the_stream_fields(kernel: laden.Kernel, tmp_path: Path) -> None:
    source = mock(kernel, prompt_tokens=2)
    sample = next(iter(source))
    collect(source, samples=20, output=tmp_path / "c", kernel=kernel)
    first = rows(tmp_path / "c")[0]
    assert first["input_ids"] == sample["input_ids"].tolist()
    assert first["loss_mask"] == sample["loss_mask"].tolist()
    for key in ("sample_id", "episode_id", "step_index", "difficulty", "success", "reward"):
        assert first[key] == sample[key], key
    assert first["source"] == "mock"
    assert first["meta"] == {}


def test_text_samples_are_tokenized_and_kept(kernel: laden.Kernel, tmp_path: Path) -> None:
    samples = (
        {"text": "hello", "sample_id": 7, "meta": {"k": 1}},
        {"prompt": "2+2=", "completion": "4", "success": True, "difficulty": 0.25},
    )
    tokenizer = kernel.create("tokenizer", "bytes")
    summary = collect(
        ListSource(samples=samples),
        samples=2,
        output=tmp_path / "c",
        kernel=kernel,
        tokenizer=tokenizer,
    )
    assert summary["tokenizer"]["name"] == "bytes"
    first, second = rows(tmp_path / "c")
    assert first["text"] == "hello"
    assert first["id"] == 7
    assert first["meta"] == {"k": 1}
    assert first["input_ids"] == list(tokenizer.encode("hello"))
    assert "loss_mask" not in first
    assert (second["prompt"], second["completion"]) == ("2+2=", "4")
    assert second["id"] == 1  # no sample_id: its stream position
    assert second["loss_mask"] == [0, 0, 0, 0, 1]
    assert second["difficulty"] == 0.25
    with pytest.raises(ConfigError, match="text samples: give a tokenizer"):
        collect(ListSource(samples=samples), samples=2, output=tmp_path / "d", kernel=kernel)


def test_stream_errors_are_counted_not_fatal(kernel: laden.Kernel, tmp_path: Path) -> None:
    source = mock(kernel, fault_every=40, fault="timeout")
    summary = collect(source, samples=150, output=tmp_path / "c", kernel=kernel, backoff=0.0)
    assert summary["status"] == "complete"
    assert summary["samples"] == 150
    assert summary["errors"] == 3 == summary["counters"]["restarts"]
    assert summary["counters"]["error_kinds"] == {"MockTimeoutError": 3}
    assert [r["id"] for r in rows(tmp_path / "c")] == list(range(150))


def test_bad_samples_are_skipped_and_counted(kernel: laden.Kernel, tmp_path: Path) -> None:
    samples = (
        {"input_ids": [1, 2], "sample_id": 0},
        {"input_ids": [1, 2], "difficulty": 5.0, "sample_id": 1},
        {"input_ids": "nope", "sample_id": 2},
        {"input_ids": [3], "sample_id": 0},  # a repeated id: written once only
        {"input_ids": [4], "sample_id": 4},
    )
    summary = collect(ListSource(samples=samples), samples=5, output=tmp_path / "c", kernel=kernel)
    assert summary["status"] == "exhausted"
    assert [r["id"] for r in rows(tmp_path / "c")] == [0, 4]
    assert summary["errors"] == 2
    assert summary["counters"]["duplicates"] == 1
    assert "difficulty must be in 0..1" in str(load_summary(tmp_path / "c")["last_error"]) or (
        "input_ids" in str(summary["last_error"])
    )


def test_no_sample_at_all_is_an_error(kernel: laden.Kernel, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no sample arrived from source 'broken' \(3 error"):
        collect(
            BrokenSource(),
            samples=5,
            output=tmp_path / "c",
            kernel=kernel,
            max_failures=2,
            backoff=0.0,
        )
    assert load_summary(tmp_path / "c")["status"] == "source_failed"
    with registered(kernel, Plugin()):
        result = run_cli(
            kernel,
            *[
                "stream",
                "collect",
                "--source",
                "broken",
                "--samples",
                "3",
                "--max-failures",
                "1",
                "-o",
                str(tmp_path / "x"),
            ],
        )
    assert result.exit_code == 1
    assert "Error: " in result.output


def test_async_only_source(kernel: laden.Kernel, tmp_path: Path) -> None:
    summary = collect(AsyncOnlySource(count=50), samples=50, output=tmp_path / "c", kernel=kernel)
    assert summary["samples"] == 50
    # Resuming a source without iter_from skips what it already gave.
    summary = collect(
        AsyncOnlySource(count=50), samples=50, output=tmp_path / "c", kernel=kernel, resume=True
    )
    assert summary["status"] == "complete"
    assert summary["new_samples"] == 0


def test_resume_continues_and_never_duplicates(kernel: laden.Kernel, tmp_path: Path) -> None:
    out = tmp_path / "c"
    collect(mock(kernel), samples=200, output=out, kernel=kernel, buffer={"capacity": 1000})
    summary = collect(mock(kernel), samples=500, output=out, kernel=kernel, resume=True)
    assert summary["runs"] == 2
    assert summary["new_samples"] == 300
    assert summary["samples"] == 500
    assert [r["id"] for r in rows(out)] == list(range(500))
    assert ReplayBuffer.load(out / "buffer").stats()["adds"] == 500
    # The same as collecting 500 in one go.
    collect(mock(kernel), samples=500, output=tmp_path / "one", kernel=kernel)
    assert (out / "samples.jsonl").read_bytes() == (tmp_path / "one/samples.jsonl").read_bytes()


def test_resume_recovers_a_torn_dataset_and_a_stale_buffer(
    kernel: laden.Kernel, tmp_path: Path
) -> None:
    out = tmp_path / "c"
    collect(mock(kernel), samples=100, output=out, kernel=kernel, buffer={"capacity": 400})
    saved = (out / "buffer").rename(tmp_path / "old-buffer")
    collect(mock(kernel), samples=150, output=out, kernel=kernel, resume=True)
    # A hard kill: the buffer is the one from 100 samples, the last row is cut.
    import shutil

    shutil.rmtree(out / "buffer")
    saved.rename(out / "buffer")
    with open(out / "samples.jsonl", "a") as f:
        f.write('{"id": 150, "input_ids": [1, 2')
    summary = collect(mock(kernel), samples=300, output=out, kernel=kernel, resume=True)
    assert summary["counters"]["torn_bytes"] > 0
    assert [r["id"] for r in rows(out)] == list(range(300))
    buffer = ReplayBuffer.load(out / "buffer")
    assert buffer.stats()["adds"] == 300
    assert buffer.snapshot().table.ids.tolist() == list(range(300))


def test_interrupt_keeps_what_was_collected(kernel: laden.Kernel, tmp_path: Path) -> None:
    out = tmp_path / "c"
    InterruptingSource.fired.clear()
    with registered(kernel, Plugin()):
        result = run_cli(
            kernel,
            "stream",
            "collect",
            "--source",
            "interrupting",
            "--samples",
            "300",
            "-o",
            str(out),
        )
        assert result.exit_code == 130
        assert "interrupted" in result.output
        assert "--resume" in result.output
        summary = load_summary(out)
        assert summary["status"] == "interrupted"
        assert summary["samples"] == 120
        assert [r["id"] for r in rows(out)] == list(range(120))
        result = run_cli(
            kernel,
            "stream",
            "collect",
            "--source",
            "interrupting",
            "--samples",
            "300",
            "-o",
            str(out),
            "--resume",
        )
        assert result.exit_code == 0, result.output
    assert [r["id"] for r in rows(out)] == list(range(300))
    assert load_summary(out)["runs"] == 2


def test_progress_reports_rate_and_errors(kernel: laden.Kernel, tmp_path: Path) -> None:
    seen: list[CollectStatus] = []
    source = mock(kernel, rate=1000, fault_every=100)
    collect(
        source,
        samples=300,
        output=tmp_path / "c",
        kernel=kernel,
        progress=seen.append,
        backoff=0.0,
    )
    assert seen[-1].done
    assert seen[-1].samples == 300
    assert seen[-1].errors == 2
    assert len(seen) > 2
    assert all(s.samples_per_second >= 0 for s in seen)
    assert seen[-1].samples_per_second > 100


def test_output_guard_resume_and_force(kernel: laden.Kernel, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="laden did not write"):
        collect(mock(kernel), samples=5, output=other, kernel=kernel)
    with pytest.raises(ConfigError, match="laden did not write"):
        collect(mock(kernel), samples=5, output=other, kernel=kernel, resume=True)
    assert (other / "notes.txt").read_text() == "mine"
    out = tmp_path / "c"
    collect(mock(kernel), samples=5, output=out, kernel=kernel)
    with pytest.raises(
        ConfigError, match="holds a stream collection; pass --resume to continue it or --force"
    ):
        collect(mock(kernel), samples=5, output=out, kernel=kernel)
    with pytest.raises(ConfigError, match="collected with another source"):
        collect(mock(kernel, seed=4), samples=9, output=out, kernel=kernel, resume=True)
    with pytest.raises(ConfigError, match="buffer configured"):
        collect(
            mock(kernel), samples=9, output=out, kernel=kernel, resume=True, buffer={"capacity": 3}
        )
    summary = collect(mock(kernel, seed=4), samples=7, output=out, kernel=kernel, force=True)
    assert summary["samples"] == 7
    assert summary["runs"] == 1
    assert len(rows(out)) == 7
    # Other commands refuse it as theirs.
    result = run_cli(kernel, "lengths", "build", str(out / "samples.jsonl"), "-o", str(out))
    assert result.exit_code == 2
    assert "stream collection" in result.output


def test_time_limit(kernel: laden.Kernel, tmp_path: Path) -> None:
    started = time.monotonic()
    summary = collect(
        mock(kernel, rate=200),
        samples=10_000,
        output=tmp_path / "c",
        kernel=kernel,
        max_seconds=0.3,
    )
    assert time.monotonic() - started < 5
    assert summary["status"] == "time_limit"
    assert 0 < summary["samples"] < 10_000


def test_cli_config_file_options_and_stats(kernel: laden.Kernel, tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(
        '[source]\nname = "mock"\nseed = 2\nnum_samples = 50\n[sampler]\nname = "fixed"\n'
        "batch_size = 4\n"
    )
    out = tmp_path / "c"
    result = run_cli(
        kernel,
        "stream",
        "collect",
        "--config",
        str(tmp_path / "run.toml"),
        "-S",
        "prompt_tokens=1",
        "--samples",
        "80",
        "--capacity",
        "30",
        "--eviction",
        "reservoir",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "collected 50 samples (50 new)" in result.output
    assert "buffer: 30 samples" in result.output
    assert "stopped: the source ended" in result.output  # stderr is mixed in
    summary = load_summary(out)
    assert summary["source"]["seed"] == 2
    assert summary["source"]["prompt_tokens"] == 1
    assert summary["buffer"]["eviction"] == "reservoir"
    assert summary["status"] == "exhausted"

    result = run_cli(kernel, "stream", "stats", str(out))
    assert result.exit_code == 0, result.output
    assert f"{out}: 50 samples" in result.output
    assert "from mock (exhausted, 1 run" in result.output
    assert "buffer: 30/30 samples" in result.output
    assert "lengths: min=" in result.output
    stats = json.loads(run_cli(kernel, "stream", "stats", str(out), "--json").output)
    assert stats["buffer_stats"]["size"] == 30
    assert stats["lengths"]["samples"] == 30
    assert stats == {**stats, **stream_stats(out)}


def test_cli_mistakes(kernel: laden.Kernel, tmp_path: Path) -> None:
    result = run_cli(kernel, "stream", "collect", "--samples", "3", "-o", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert "give --source NAME" in result.output
    result = run_cli(
        kernel,
        "stream",
        "collect",
        "--source",
        "telnet",
        "--samples",
        "3",
        "-o",
        str(tmp_path / "x"),
    )
    assert result.exit_code == 2
    assert "pass -S port=..." in result.output
    result = run_cli(kernel, "stream", "stats", str(tmp_path))
    assert result.exit_code == 1
    assert "is not a stream collection" in result.output


# ------------------------------------------------------------------ the real server


def test_collect_from_the_real_arcade(
    kernel: laden.Kernel, tmp_path: Path, arcade_server: ArcadeServer
) -> None:
    out = tmp_path / "arcade"
    args = [
        "stream",
        "collect",
        "--source",
        "puzzle_arcade",
        "-S",
        f"port={arcade_server.port}",
        "-S",
        'games=["sudoku", "minesweeper"]',
        "-S",
        "seed_range=[0, 2]",
        "-S",
        "hints_per_episode=5",
        "-S",
        "connections=2",
        "--samples",
        "12",
        "-o",
        str(out),
        "--json",
    ]
    result = run_cli(kernel, *args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["samples"] == 12
    assert summary["errors"] == 0
    written = rows(out)
    assert [r["id"] for r in written] == list(range(12))
    first = written[0]
    assert first["prompt"].startswith("Sudoku (easy)")
    assert first["completion"].startswith("place")
    tokenizer = kernel.create("tokenizer", "bytes")
    assert first["input_ids"] == list(tokenizer.encode(first["prompt"] + first["completion"]))
    assert first["loss_mask"].count(1) == len(first["completion"])
    assert first["meta"]["game"] == "sudoku"
    assert first["success"] is True

    # Resume to 20: the same stream, skipped up to where it stood, no id twice.
    args[args.index("12")] = "20"
    result = run_cli(kernel, *[a for a in args if a != "--json"], "--resume")
    assert result.exit_code == 0, result.output
    again = rows(out)
    assert [r["id"] for r in again] == list(range(20))
    assert again[:12] == written
    result = run_cli(
        kernel, "lengths", "build", str(out / "samples.jsonl"), "-o", str(tmp_path / "l")
    )
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------ the online demo


def test_online_demo_with_mock(kernel: laden.Kernel, tmp_path: Path) -> None:
    report = online_demo(tmp_path / "online", kernel=kernel, seconds_budget=10, arcade=False)
    assert report["source"] == "mock"
    assert report["samples"] == 400
    assert report["errors"] == 0
    assert report["window"] == {"start": 0, "stop": 400, "count": 400}
    assert report["batches"] > 0
    assert 0.5 < report["efficiency"] <= 1.0
    assert report["seconds"] < 15
    again = online_demo(tmp_path / "online", kernel=kernel, seconds_budget=10, arcade=False)
    assert again["window_fingerprint"] == report["window_fingerprint"]
    assert load_summary(tmp_path / "online")["samples"] == 400


def test_online_demo_with_the_arcade(kernel: laden.Kernel, tmp_path: Path) -> None:
    from tests.arcade_server import SKIP_REASON

    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    started = time.monotonic()
    report = online_demo(tmp_path / "online", kernel=kernel, seconds_budget=12, arcade=True)
    assert time.monotonic() - started < 15
    assert report["source"] == "puzzle_arcade"
    assert report["samples"] >= 100
    assert report["batches"] > 0
    assert report["efficiency"] > 0.5
    first = rows(tmp_path / "online")[0]
    assert "prompt" in first
    assert "completion" in first
    assert np.isfinite(report["samples_per_second"])

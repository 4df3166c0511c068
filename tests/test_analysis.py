"""Analysis: exact bucket edges, reports, metrics, and the data commands."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import laden
from laden.analysis import (
    ascii_counts,
    ascii_histogram,
    batch_metrics,
    bucket_report,
    length_stats,
    packing_metrics,
    recommendations,
    suggest_report,
)
from laden.batching import padding_to_edges, suggest_bucket_edges
from laden.lengths import save_lengths
from laden.plugins.packers.best_fit import BestFitPacker
from laden.testing import run_cli


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=40), st.integers(1, 5))
def test_suggested_edges_are_optimal(lengths: list[int], k: int) -> None:
    """Exact: no other choice of at most k edges pads less (brute force)."""
    array = np.asarray(lengths)
    edges = suggest_bucket_edges(array, k)
    values = np.unique(array)
    assert edges.size <= k
    assert edges[-1] == values[-1]
    best = min(
        padding_to_edges(array, (*combo, int(values[-1])))
        for r in range(k)
        for combo in itertools.combinations(values[:-1].tolist(), r)
    )
    assert padding_to_edges(array, edges) == best


def test_suggest_on_binned_histogram_beats_quantiles() -> None:
    lengths = np.clip(np.random.default_rng(0).lognormal(5.5, 0.9, 200_000), 8, 4096)
    lengths = lengths.astype(np.int64)
    edges = suggest_bucket_edges(lengths, 4, max_bins=512)
    quantiles = np.quantile(lengths, [0.25, 0.5, 0.75, 1.0]).astype(np.int64)
    assert edges[-1] == 4096
    assert padding_to_edges(lengths, edges) < 0.8 * padding_to_edges(lengths, quantiles)


def test_length_stats_and_histogram() -> None:
    stats = length_stats(np.array([1, 2, 3, 4, 100]))
    assert stats["samples"] == 5
    assert stats["tokens"] == 110
    assert stats["max"] == 100
    assert stats["p50"] == 3.0
    lines = ascii_histogram(np.array([1, 2, 3, 4, 100]), bins=4)
    assert sum(int(line.split()[-1]) for line in lines) == 5
    assert ascii_histogram(np.zeros(0)) == ["(no samples)"]


def test_bucket_report_and_recommendations() -> None:
    lengths = np.array([10] * 90 + [1000] * 10)
    rows = bucket_report(lengths, (500,))
    assert [r["samples"] for r in rows] == [90, 10]
    assert rows[0]["efficiency_to_edge"] == pytest.approx(10 / 500)
    assert rows[0]["efficiency_to_max"] == 1.0
    assert rows[1]["range"] == [501, None]
    advice = recommendations(lengths, (500,))
    assert any("longer than the last edge 500" in a for a in advice)
    assert any("bucket 0 [0, 500] wastes 98%" in a for a in advice)
    assert recommendations(lengths, (10, 1000)) == ["the bucketing is sound"]


def test_batch_metrics() -> None:
    lengths = np.array([4, 2, 3, 1])
    plan = laden.EpochPlan(order=[0, 1, 2, 3], offsets=[0, 2, 4], max_length=[4, 3], bucket=[0, 0])
    m = batch_metrics(plan, lengths)
    assert (m["real_tokens"], m["padded_tokens"], m["padding_tokens"]) == (10, 14, 4)
    assert m["efficiency"] == pytest.approx(10 / 14)
    assert m["top_shapes"] == {"2x3": 1, "2x4": 1}


def test_suggest_report() -> None:
    report = suggest_report(np.array([5, 5, 6, 100]), 2)
    assert report["bucket_edges"] == [6, 100]
    assert report["padding_tokens"] == 2  # two 5s padded to 6
    assert report["efficiency_to_edge"] > report["single_bucket_efficiency"]


# ------------------------------------------------------------------ commands


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    lengths = np.clip(np.random.default_rng(1).lognormal(5, 1, 5000), 1, 3000).astype(np.int64)
    return save_lengths(laden.LengthTable.from_lengths(lengths), tmp_path / "cache")


def invoke(kernel: laden.Kernel, *args: str) -> object:
    return run_cli(kernel, *args, code=0)


def test_lengths_build_and_stats_commands(kernel: laden.Kernel, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "abc"}\n{"text": "de"}\nnot json\n')
    out = tmp_path / "lens"
    bad = run_cli(kernel, "lengths", "build", str(data), "-o", str(out))
    assert bad.exit_code == 1
    assert f"{data}:3: invalid JSON" in bad.output
    assert not out.exists()
    build = ["lengths", "build", str(data), "-o", str(out), "--on-error", "skip", "--workers", "0"]
    result = invoke(kernel, *build, "--json")
    summary = json.loads(result.output)
    assert (summary["samples"], summary["tokens"], summary["skipped"]) == (2, 5, 1)
    assert summary["skipped_lines"] == [3]
    again = invoke(kernel, *build)
    assert again.output.startswith("reused 2 samples, 5 tokens")
    stats = json.loads(invoke(kernel, "lengths", "stats", str(out), "--json").output)
    assert (stats["samples"], stats["max"], stats["tokenizer"]) == (2, 3, "bytes")
    assert "samples=2" in invoke(kernel, "lengths", "stats", str(out)).output


def test_lengths_build_tokenizer_options(kernel: laden.Kernel, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "A a b"}\n')
    out = tmp_path / "lens"
    build = ["lengths", "build", str(data), "-o", str(out), "--tokenizer", "whitespace"]
    result = invoke(kernel, *build, "-T", "lowercase=true", "-T", "vocab_size=64", "--json")
    assert json.loads(result.output)["tokens"] == 3
    wrong = run_cli(kernel, *build, "-T", "vocab_size=0")
    assert wrong.exit_code == 2
    assert "tokenizer.vocab_size: must be > 1, got 0" in wrong.output


def test_analyze_command(kernel: laden.Kernel, cache: Path) -> None:
    data = json.loads(
        invoke(kernel, "analyze", str(cache), "--bucket-edges", "64,256,1024", "--json").output
    )
    assert [b["range"] for b in data["buckets"]] == [[0, 64], [65, 256], [257, 1024], [1025, None]]
    assert sum(b["samples"] for b in data["buckets"]) == 5000
    plan = data["token_budget_plan"]
    assert plan["samples"] == 5000
    # 5,000 samples: every bucket is small; varying batches across epochs costs ~0.003
    # here (0.97 with vary_batches off; 0.95 when small buckets were split in two pools).
    assert plan["efficiency"] > 0.96
    assert plan["repeat_rate"] <= 0.01
    assert data["random_fixed_plan"]["efficiency"] < plan["efficiency"]
    assert data["recommendations"]
    text = invoke(kernel, "analyze", str(cache), "--bucket-edges", "64,256,1024").output
    assert "recommendations:" in text
    assert "token_budget 16384" in text
    bad = run_cli(kernel, "analyze", str(cache), "--bucket-edges", "9,3")
    assert bad.exit_code == 2
    assert "increase strictly" in bad.output


def test_analyze_reports_packing(kernel: laden.Kernel, cache: Path) -> None:
    lengths = laden.lengths.load_lengths(cache).length
    args = ["analyze", str(cache), "--bucket-edges", "64,256", "--pack-length", "512"]
    data = json.loads(invoke(kernel, *args, "--json").output)["packing"]
    assert data["packer"] == "best_fit"
    assert data["real_tokens"] == int(lengths.sum())  # longer samples are split, not cut
    assert data["rows"] >= -(-int(lengths.sum()) // 512)
    assert data["efficiency"] == pytest.approx(lengths.sum() / (data["rows"] * 512))
    assert data["packing_ratio"] == pytest.approx(data["sequences"] / data["rows"])
    assert sum(data["segments_per_row"].values()) == data["rows"]
    text = invoke(kernel, *args, "--packer", "first_fit").output
    assert "packed by first_fit into rows of 512" in text
    assert "segments per row:" in text
    bad = run_cli(kernel, *[*args[:-1], "0"])
    assert bad.exit_code == 2
    assert "pack_length: must be > 0" in bad.output


def test_packing_metrics_and_counts_chart() -> None:
    plan = BestFitPacker(max_length=10, overflow="drop").pack(
        laden.LengthTable.from_lengths([4, 3, 3, 9, 12, 1])
    )
    metrics = packing_metrics(plan)
    assert metrics["rows"] == 2
    assert metrics["segments"] == 5
    assert metrics["segments_per_row"] == {2: 1, 3: 1}
    assert metrics["dropped_samples"] == 1
    assert metrics["dropped_tokens"] == 12
    assert metrics["efficiency"] == pytest.approx(20 / 20)
    lines = ascii_counts({1: 10, 2: 5, 4: 0})
    assert lines[0].endswith("#" * 40)
    assert lines[1].endswith("#" * 20)
    grouped = ascii_counts({k: 1 for k in range(1, 101)}, bars=10)
    assert len(grouped) == 10
    assert grouped[0].startswith("  1-10")


def test_suggest_command(kernel: laden.Kernel, cache: Path) -> None:
    data = json.loads(invoke(kernel, "suggest", str(cache), "--num-buckets", "3", "--json").output)
    lengths = laden.lengths.load_lengths(cache).length
    assert data["bucket_edges"] == suggest_bucket_edges(lengths, 3).tolist()
    text = invoke(kernel, "suggest", str(cache), "--num-buckets", "3").output
    assert text.startswith("bucket edges: " + ",".join(map(str, data["bucket_edges"])))


def test_plots_are_png(kernel: laden.Kernel, cache: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "h.png"
    invoke(kernel, "analyze", str(cache), "--bucket-edges", "64,256", "--plot", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png2 = tmp_path / "s.png"
    invoke(kernel, "lengths", "stats", str(cache), "--plot", str(png2))
    assert png2.stat().st_size > 1000


def test_missing_cache_is_a_clear_error(kernel: laden.Kernel, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli(kernel, "suggest", str(tmp_path / "empty"))
    assert result.exit_code == 1
    assert "meta.json: missing file" in result.output


def test_analyze_applies_the_overflow_policy_and_counts_what_exceeds(
    kernel: laden.Kernel, tmp_path: Path
) -> None:
    lengths = np.array([100, 200, 5000, 300, 7000] * 20, dtype=np.int64)
    cache = save_lengths(laden.LengthTable.from_lengths(lengths), tmp_path / "long")
    args = ["analyze", str(cache), "--token-budget", "4096"]
    refused = run_cli(kernel, *args, catch_exceptions=False)
    assert refused.exit_code == 1  # the sampler's default, 'error': never silently 'alone'
    assert "40 sample(s) with 240,000 tokens are longer than the token budget" in refused.output
    assert "--overflow" in refused.output
    for overflow, effect in (
        ("drop", "leaves them out (240,000 tokens dropped)"),
        ("truncate", f"cuts them to the budget ({20 * (5000 + 7000 - 2 * 4096):,} tokens cut)"),
        ("alone", "puts each in a batch of its own, over budget"),
    ):
        data = json.loads(invoke(kernel, *args, "--overflow", overflow, "--json").output)
        over = data["over_budget"]
        assert (over["samples"], over["tokens"], over["limit"]) == (40, 240_000, 4096)
        assert over["excess_tokens"] == 20 * (5000 + 7000 - 2 * 4096)
        assert over["overflow"] == overflow
        plan = data["token_budget_plan"]
        assert plan["dropped"] == (40 if overflow == "drop" else 0)
        assert plan["truncated"] == (40 if overflow == "truncate" else 0)
        text = invoke(kernel, *args, "--overflow", overflow).output
        assert "40 sample(s) (40.0%, 240,000 tokens) are longer than the budget" in text
        assert effect in text
    fits = invoke(kernel, "analyze", str(cache), "--token-budget", "8192").output
    assert "no sample is longer than the budget allows (8,192 tokens)" in fits

"""The ``timeseries`` source: caches, windows, collation, plans, writers and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import laden
from laden.contrib.timeseries import (
    KIND,
    TimeseriesSource,
    WindowDataset,
    plan_windows,
    release,
    write_windows,
)
from laden.errors import ConfigError, DataError
from laden.io import ARTIFACT_KINDS, artifact_kind
from laden.lengths import load_lengths
from laden.plan import BatchPlan
from laden.plugins.samplers.fixed import FixedSampler
from laden.plugins.writers.npz import NpzWriter
from laden.testing import check_source, run_cli

FAST = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def write_csv(path: Path, series: dict[str, np.ndarray], *, times: Any = None) -> None:
    """Rows ``id,t,a,b`` per series; ``times`` overrides the time column per series."""
    lines = ["id,t,a,b"]
    for name, values in series.items():
        t = np.arange(len(values)) if times is None else times[name]
        for i, (a, b) in enumerate(values):
            lines.append(f"{name},{t[i]},{float(a)!r},{float(b)!r}")
    path.write_text("\n".join(lines) + "\n")


def naive_windows(sizes: list[int], window: int, stride: int, horizon: int) -> list[int]:
    """Every window start, by the definition, one Python loop: the reference."""
    out, base = [], 0
    for n in sizes:
        s = 0
        while s + window + horizon <= n:
            out.append(base + s)
            s += stride
        base += n
    return out


# ------------------------------------------------------------------ windows


@FAST
@given(
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=6),
    window=st.integers(1, 12),
    stride=st.integers(1, 7),
    horizon=st.integers(0, 4),
)
def test_windows_are_every_window_by_the_definition(
    sizes: list[int], window: int, stride: int, horizon: int
) -> None:
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    table = plan_windows(offsets, window=window, stride=stride, horizon=horizon)
    assert table.start.tolist() == naive_windows(sizes, window, stride, horizon)
    series = np.searchsorted(offsets, table.start, side="right") - 1
    assert np.array_equal(table.series, series)
    # never crossing a series boundary
    assert np.all(table.start + window + horizon <= offsets[table.series + 1])
    assert int(table.series_windows.sum()) == len(table)


@FAST
@given(
    steps=st.lists(st.sampled_from([1.0, 1.0, 1.0, 2.0, 5.0]), min_size=1, max_size=80),
    window=st.integers(1, 8),
    max_gap=st.sampled_from([1.0, 2.0, 4.0]),
)
def test_windows_never_cross_a_gap(steps: list[float], window: int, max_gap: float) -> None:
    time = np.concatenate(([0.0], np.cumsum(steps)))
    offsets = np.array([0, time.size], dtype=np.int64)
    table = plan_windows(offsets, window=window, stride=1, time=time, max_gap=max_gap)
    for s in table.start.tolist():
        assert np.all(np.diff(time[s : s + window]) <= max_gap)
    # and every window that crosses no gap is there
    ok = [
        s for s in range(time.size - window + 1) if np.all(np.diff(time[s : s + window]) <= max_gap)
    ]
    assert table.start.tolist() == ok


def test_ten_million_windows_cost_a_few_arrays() -> None:
    offsets = np.array([0, 10_000_000 + 47], dtype=np.int64)
    table = plan_windows(offsets, window=48, stride=1)
    assert len(table) == 10_000_000
    assert table.start.dtype == np.int64
    assert table.start[-1] == 9_999_999


# -------------------------------------------------------------------- csv


@FAST
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    chunk_rows=st.integers(1, 50),
    blank=st.booleans(),
)
def test_csv_cache_equals_a_whole_file_parse(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], chunk_rows: int, blank: bool
) -> None:
    root = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(len(sizes) * 100 + chunk_rows)
    series = {f"s{i}": rng.normal(size=(n, 2)) for i, n in enumerate(sizes)}
    path = root / "d.csv"
    write_csv(path, series)
    if blank:  # blank lines anywhere are skipped and do not shift line numbers
        text = path.read_text().replace("\n", "\n\n", 3)
        path.write_text(text)
    src = TimeseriesSource(
        path=str(path),
        window=1,
        id_column="id",
        time_column="t",
        chunk_rows=chunk_rows,
        dtype="float64",
    )
    store = src.open()
    with warnings.catch_warnings():  # numpy notes how it counts blank lines
        warnings.simplefilter("ignore")
        whole = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(2, 3), ndmin=2)
    assert np.array_equal(np.asarray(store.values), whole)
    assert store.series_names == tuple(series)
    assert np.diff(store.offsets).tolist() == sizes
    assert store.time is not None
    assert np.array_equal(store.time, np.concatenate([np.arange(n) for n in sizes]))


def test_the_cache_is_built_once_and_rebuilt_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    write_csv(path, {"x": np.ones((20, 2))})
    src = TimeseriesSource(path=str(path), window=4, id_column="id", time_column="t")
    src.open()
    cache = tmp_path / "d.csv.laden-ts"
    assert artifact_kind(cache) == KIND
    assert ARTIFACT_KINDS[KIND] == "time-series cache"
    stamp = (cache / "meta.json").stat().st_mtime_ns
    src.open()
    assert (cache / "meta.json").stat().st_mtime_ns == stamp  # reused
    write_csv(path, {"x": np.full((30, 2), 2.0)})
    assert src.open().rows == 30  # rebuilt


def test_a_cache_path_holding_user_files_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    write_csv(path, {"x": np.ones((20, 2))})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="laden did not write"):
        TimeseriesSource(path=str(path), window=4, cache=str(mine)).open()
    assert (mine / "notes.txt").read_text() == "keep me"


def test_normalization_statistics_from_one_pass(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = {"x": rng.normal(5, 3, size=(300, 2)), "y": rng.normal(-2, 1, size=(200, 2))}
    path = tmp_path / "d.csv"
    write_csv(path, data)
    src = TimeseriesSource(
        path=str(path),
        window=10,
        stride=10,
        id_column="id",
        time_column="t",
        normalize=True,
        chunk_rows=37,
        dtype="float64",
    )
    store = src.open()
    allrows = np.concatenate(list(data.values()))
    assert store.mean is not None
    assert store.std is not None
    np.testing.assert_allclose(store.mean, allrows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(store.std, allrows.std(0), rtol=1e-10)
    meta = json.loads((tmp_path / "d.csv.laden-ts" / "meta.json").read_text())
    assert meta["mean"] == pytest.approx(allrows.mean(0).tolist())
    batch = WindowDataset(src).collate([0, 31])
    expected = (allrows[310:320] - allrows.mean(0)) / allrows.std(0)
    np.testing.assert_allclose(batch["inputs"][1], expected, rtol=1e-9)


def test_datetime_time_column_and_max_gap_in_seconds(tmp_path: Path) -> None:
    stamps = np.datetime64("2024-01-01T00:00") + np.array(
        [0, 1, 2, 3, 10, 11, 12, 13], "timedelta64[m]"
    )
    path = tmp_path / "d.csv"
    lines = ["t,a"] + [f"{s},{i}" for i, s in enumerate(stamps.astype(str))]
    path.write_text("\n".join(lines) + "\n")
    src = TimeseriesSource(
        path=str(path), window=3, time_column="t", time_format="datetime", max_gap=90
    )
    starts = src.lengths().offset
    assert starts is not None
    assert starts.tolist() == [0, 1, 4, 5]


# ------------------------------------------------------------ collation


@FAST
@given(
    sizes=st.lists(st.integers(0, 50), min_size=1, max_size=4),
    window=st.integers(1, 9),
    horizon=st.integers(0, 3),
    picks=st.integers(1, 16),
)
def test_collation_equals_slicing(
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[int],
    window: int,
    horizon: int,
    picks: int,
) -> None:
    root = tmp_path_factory.mktemp("npy")
    n = sum(sizes)
    rng = np.random.default_rng(n)
    ids = np.repeat(np.arange(len(sizes)), sizes)
    data = np.column_stack([ids, np.arange(n), rng.normal(size=(n, 3))]).astype(np.float32)
    np.save(root / "a.npy", data)
    if not naive_windows(sizes, window, 1, horizon):
        error = DataError if n == 0 else ConfigError
        with pytest.raises(error, match=r"longer than every series|holds no rows"):
            TimeseriesSource(
                path=str(root / "a.npy"),
                window=window,
                horizon=horizon,
                names="id,t,x,y,z",
                id_column="id",
            ).lengths()
        return
    src = TimeseriesSource(
        path=str(root / "a.npy"),
        window=window,
        horizon=horizon,
        names="id,t,x,y,z",
        id_column="id",
        time_column="t",
        columns="x,z",
        target_columns="y",
    )
    table = src.lengths()
    data_set = WindowDataset(src, table)
    pick = rng.integers(0, len(table), picks)
    batch = data_set.collate(pick)
    assert batch["inputs"].shape == (picks, window, 2)
    for b, w in enumerate(pick.tolist()):
        s = int(table.offset[w])  # type: ignore[index]
        assert np.array_equal(batch["inputs"][b], data[s : s + window][:, [2, 4]])
        assert len(set(data[s : s + window + horizon, 0].tolist())) == 1  # one series
        if horizon:
            assert np.array_equal(batch["targets"][b], data[s + window : s + window + horizon, 3:4])
    assert ("targets" in batch) == bool(horizon)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.integers(1, 80),
    width=st.integers(1, 5),
    window=st.integers(1, 9),
    horizon=st.integers(0, 3),
    picks=st.integers(1, 16),
)
def test_whole_row_windows_equal_slicing(
    tmp_path: Path, rows: int, width: int, window: int, horizon: int, picks: int
) -> None:
    """Every column an input (the contiguous path: a window is one block of the file)."""
    rng = np.random.default_rng(rows * 31 + width)
    data = rng.normal(size=(rows, width)).astype(np.float32)
    path = tmp_path / f"w{rows}-{width}.npy"
    np.save(path, data)
    if window + horizon > rows:
        return
    src = TimeseriesSource(path=str(path), window=window, horizon=horizon)
    table = src.lengths()
    pick = rng.integers(0, len(table), picks)
    batch = WindowDataset(src, table).collate(pick)
    starts = table.offset[pick]  # type: ignore[index]
    want = np.stack([data[s : s + window] for s in starts.tolist()])
    assert batch["inputs"].shape == (picks, window, width)
    assert np.array_equal(batch["inputs"], want)
    if horizon:
        targets = np.stack([data[s + window : s + window + horizon] for s in starts.tolist()])
        assert np.array_equal(batch["targets"], targets)


def test_the_source_keeps_the_source_contract(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(200, dtype=np.float32).reshape(100, 2))
    check_source(TimeseriesSource, path=str(tmp_path / "a.npy"), window=8, overlap=2, horizon=1)
    assert laden.Kernel().registry("source").get("timeseries") is TimeseriesSource


def test_stride_and_overlap(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((100, 1), dtype=np.float32))
    path = str(tmp_path / "a.npy")
    assert TimeseriesSource(path=path, window=48, overlap=12).step == 36
    assert TimeseriesSource(path=path, window=48, stride=36, overlap=12).step == 36
    assert TimeseriesSource(path=path, window=4).step == 1
    with pytest.raises(ConfigError, match="disagree"):
        TimeseriesSource(path=path, window=48, stride=10, overlap=12)
    with pytest.raises(ConfigError, match="overlap"):
        TimeseriesSource(path=path, window=8, overlap=8)


# -------------------------------------------------------------- bad input


def test_nan_in_the_time_column_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("t,a\n0,1\n1,2\nnan,3\n3,4\n")
    with pytest.raises(DataError, match=r"d\.csv:4: .*time column 't' is NaN"):
        TimeseriesSource(path=str(path), window=2, time_column="t").open()


def test_nan_in_an_npy_time_column_names_the_row(tmp_path: Path) -> None:
    data = np.column_stack([np.arange(10.0), np.ones(10)])
    data[6, 0] = np.nan
    np.save(tmp_path / "a.npy", data)
    with pytest.raises(DataError, match=r"row 6: time column 't' is NaN"):
        TimeseriesSource(
            path=str(tmp_path / "a.npy"), window=2, names="t,a", time_column="t"
        ).open()


@pytest.mark.parametrize(
    ("times", "line", "what"),
    [([0, 1, 2, 1, 4], 5, "out of order"), ([0, 1, 1, 2, 3], 4, "duplicate timestamp")],
)
def test_unsorted_or_duplicate_timestamps_name_the_line(
    tmp_path: Path, times: list[int], line: int, what: str
) -> None:
    path = tmp_path / "d.csv"
    write_csv(path, {"x": np.ones((5, 2))}, times={"x": times})
    with pytest.raises(DataError, match=rf"d\.csv:{line}: .*{what}"):
        TimeseriesSource(path=str(path), window=2, id_column="id", time_column="t").open()


def test_order_is_checked_across_chunks_but_not_across_series(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    write_csv(path, {"x": np.ones((5, 2)), "y": np.ones((5, 2))})  # y restarts at t=0: fine
    src = TimeseriesSource(path=str(path), window=2, id_column="id", time_column="t", chunk_rows=1)
    assert src.open().series_names == ("x", "y")
    write_csv(path, {"x": np.ones((5, 2))}, times={"x": [0, 1, 2, 3, 3]})
    with pytest.raises(DataError, match=r":6: .*duplicate"):
        src.open()


def test_a_series_split_in_two_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("id,a\nx,1\nx,2\ny,3\nx,4\n")
    with pytest.raises(DataError, match=r"d\.csv:5: .*series 'x' appears again"):
        TimeseriesSource(path=str(path), window=1, id_column="id").open()


def test_a_window_longer_than_every_series(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    write_csv(path, {"x": np.ones((5, 2)), "y": np.ones((7, 2))})
    src = TimeseriesSource(path=str(path), window=6, horizon=2, id_column="id")
    with pytest.raises(ConfigError, match=r"window 6 \+ horizon 2 is longer than every series"):
        src.lengths()


@pytest.mark.parametrize(
    ("row", "message"),
    [("x,3,abc,1", "column 3 holds 'abc', not a number"), ("x,3,1", "has 3 columns")],
)
def test_a_csv_bad_row_names_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(f"id,t,a,b\nx,0,1,2\nx,1,1,2\n\nx,2,1,2\n{row}\nx,4,1,2\n")
    with pytest.raises(DataError, match=rf"d\.csv:6: bad row: {message}"):
        TimeseriesSource(path=str(path), window=1, id_column="id", chunk_rows=1).open()


def test_unknown_columns_and_file_types(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    write_csv(path, {"x": np.ones((5, 2))})
    with pytest.raises(ConfigError, match="'nope' is not a column"):
        TimeseriesSource(path=str(path), window=1, time_column="nope").open()
    with pytest.raises(ConfigError, match="'q' not in"):
        TimeseriesSource(path=str(path), window=1, id_column="id", columns=["a", "q"]).open()
    with pytest.raises(ConfigError, match="unknown file type"):
        TimeseriesSource(path=str(tmp_path / "d.txt"), window=1)


def test_parquet_equals_csv(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="the parquet extra is not installed")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    series = {"x": rng.normal(size=(30, 2)), "y": rng.normal(size=(25, 2))}
    write_csv(tmp_path / "d.csv", series)
    allrows = np.concatenate(list(series.values()))
    table = pa.table(
        {
            "id": ["x"] * 30 + ["y"] * 25,
            "t": np.concatenate([np.arange(30), np.arange(25)]),
            "a": allrows[:, 0],
            "b": allrows[:, 1],
        }
    )
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=10)
    settings = {"window": 6, "overlap": 2, "horizon": 1, "id_column": "id", "time_column": "t"}
    a = TimeseriesSource(path=str(tmp_path / "d.csv"), **settings)
    b = TimeseriesSource(path=str(tmp_path / "d.parquet"), chunk_rows=7, **settings)
    ta, tb = a.lengths(), b.lengths()
    assert ta.digest() == tb.digest()
    ba, bb = (
        WindowDataset(a, ta).collate(range(len(ta))),
        WindowDataset(b, tb).collate(range(len(tb))),
    )
    assert all(np.array_equal(ba[k], bb[k]) for k in ba)
    bad = pa.table({"t": [0, 1, 1], "a": [1.0, 2.0, 3.0]})
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: row 2: duplicate"):
        TimeseriesSource(path=str(tmp_path / "bad.parquet"), window=1, time_column="t").open()


def test_parquet_without_pyarrow_says_how_to_fix_it(tmp_path: Path) -> None:
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("blocked")
sys.meta_path.insert(0, Block())
from laden.contrib.timeseries import TimeseriesSource
from laden.errors import DataError
try:
    TimeseriesSource(path={str(tmp_path / "d.parquet")!r}, window=4).open()
except DataError as exc:
    print("ERROR", exc)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "d.parquet: reading Parquet needs pyarrow" in out
    assert "pip install pyarrow" in out


# ----------------------------------------------- plans, shards, writers, loaders


def make_npy_source(directory: Path) -> TimeseriesSource:
    rng = np.random.default_rng(11)
    ids = np.repeat([0, 1, 2], [500, 300, 200])
    data = np.column_stack([ids, rng.normal(size=(1000, 4))]).astype(np.float32)
    np.save(directory / "a.npy", data)
    return TimeseriesSource(
        path=str(directory / "a.npy"),
        window=12,
        overlap=3,
        horizon=2,
        id_column="0",
        target_columns="1",
    )


@pytest.fixture
def npy_source(tmp_path: Path) -> TimeseriesSource:
    return make_npy_source(tmp_path)


@pytest.fixture(scope="module")
def npy_source_once(tmp_path_factory: pytest.TempPathFactory) -> TimeseriesSource:
    """The same source, made once for a property test's many examples."""
    return make_npy_source(tmp_path_factory.mktemp("npy"))


def test_every_window_once_per_epoch_and_shards(npy_source: TimeseriesSource) -> None:
    table = npy_source.lengths()
    plan = BatchPlan.build(table, FixedSampler(batch_size=16), epochs=3, seed=7)
    for epoch in plan.epochs:
        assert np.array_equal(np.sort(epoch.order), np.arange(len(table)))
    orders = [e.order.tolist() for e in plan.epochs]
    assert orders[0] != orders[1]  # shuffled per epoch
    again = BatchPlan.build(table, FixedSampler(batch_size=16), epochs=3, seed=7)
    assert again.fingerprint == plan.fingerprint
    shards = [plan.shard(r, 2) for r in range(2)]
    assert shards[0].steps == shards[1].steps
    data = WindowDataset(npy_source, table)
    seen = set()
    for shard in shards:
        for epoch, _step, spec in shard.iter_from():
            if epoch == 0 and not spec.padding:
                batch = data.collate(spec.indices)
                assert batch["inputs"].shape == (spec.size, 12, 4)
                seen.update(batch["sample_ids"].tolist())
    assert seen == set(range(len(table)))


@settings(max_examples=20, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=0, max_size=30),
    threads=st.integers(0, 3),
    group=st.integers(1, 5),
)
def test_threaded_batches_are_the_collated_batches_in_order(
    npy_source_once: TimeseriesSource, sizes: list[int], threads: int, group: int
) -> None:
    data = WindowDataset(npy_source_once, npy_source_once.lengths())
    rng = np.random.default_rng(len(sizes))
    picks = [rng.integers(0, len(data), size) for size in sizes]
    got = list(data.batches(iter(picks), threads=threads, group=group))
    assert len(got) == len(picks)
    for batch, pick in zip(got, picks, strict=True):
        want = data.collate(pick)
        assert batch.keys() == want.keys()
        for key in want:
            assert np.array_equal(batch[key], want[key]), key


def test_batches_refuse_bad_thread_settings(npy_source: TimeseriesSource) -> None:
    data = WindowDataset(npy_source, npy_source.lengths())
    for threads, group in [(-1, 8), (2, 0)]:
        with pytest.raises(ConfigError, match="threads must be >= 0 and group >= 1"):
            list(data.batches([[0]], threads=threads, group=group))


def test_write_windows_keeps_a_users_file_that_looks_like_a_batch(
    npy_source: TimeseriesSource, tmp_path: Path
) -> None:
    table = npy_source.lengths()
    plan = BatchPlan.build(table, FixedSampler(batch_size=32), epochs=1, seed=1)
    data = WindowDataset(npy_source, table)
    out = tmp_path / "batches"
    write_windows(plan, data, NpzWriter(), out)
    (out / "example.npz").write_bytes(b"mine")  # an e...npz that is no batch file's name
    write_windows(plan, data, NpzWriter(), out, resume=True)
    assert (out / "example.npz").read_bytes() == b"mine"
    with pytest.raises(ConfigError, match=r"did not write \(example.npz\)"):
        write_windows(plan, data, NpzWriter(), out, force=True)
    assert (out / "example.npz").read_bytes() == b"mine"


def test_write_windows_resume_and_read_back(npy_source: TimeseriesSource, tmp_path: Path) -> None:
    table = npy_source.lengths()
    plan = BatchPlan.build(table, FixedSampler(batch_size=32), epochs=1, seed=1)
    data = WindowDataset(npy_source, table)
    out = tmp_path / "batches"
    summary = write_windows(plan, data, NpzWriter(), out)
    assert summary["written"] == plan.total_steps
    files = sorted(p for p in out.iterdir() if p.suffix == ".npz")
    assert len(files) == plan.total_steps
    first = NpzWriter().read(str(files[0]))
    spec = next(iter(plan))[2]
    expected = data.collate(spec.indices)
    assert all(np.array_equal(first[k], expected[k]) for k in expected)
    assert laden.files.verify_directory(out) == []
    files[-1].unlink()  # as after a crash
    again = write_windows(plan, data, NpzWriter(), out, resume=True)
    assert again["written"] == 1
    assert again["kept"] == plan.total_steps - 1
    with pytest.raises(ConfigError, match="already holds"):
        write_windows(plan, data, NpzWriter(), out)


def test_plan_loader_resumes_over_windows(npy_source: TimeseriesSource) -> None:
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    from laden.plugins.backends.torch import TorchBackend
    from laden.torch import PlanLoader

    table = npy_source.lengths()
    plan = BatchPlan.build(table, FixedSampler(batch_size=8), epochs=1, seed=3)
    data = WindowDataset(npy_source, table, backend=TorchBackend())
    loader = PlanLoader(plan, data)
    batches = []
    state = None
    for i, batch in enumerate(loader):
        assert isinstance(batch["inputs"], torch.Tensor)
        assert batch["targets"].shape[1:] == (2, 1)
        batches.append(batch["sample_ids"].tolist())
        if i == 4:
            state = loader.state_dict()
    resumed = PlanLoader(plan, WindowDataset(npy_source, table, backend=TorchBackend()))
    resumed.load_state_dict(state)  # type: ignore[arg-type]
    assert [b["sample_ids"].tolist() for b in resumed] == batches[5:]


def test_a_pickled_dataset_reopens_the_map(npy_source: TimeseriesSource) -> None:
    import pickle

    data = WindowDataset(npy_source)
    before = data.collate([0, 5])
    copy = pickle.loads(pickle.dumps(data))
    assert copy._store is None
    assert copy._views is None
    assert all(np.array_equal(before[k], copy.collate([0, 5])[k]) for k in before)
    release(data)  # pages dropped, values still read from the file
    assert np.array_equal(before["inputs"], data.collate([0, 5])["inputs"])


# ------------------------------------------------------------------- cli


def test_cli_builds_window_lengths_and_analyze_shows_them(
    kernel: laden.Kernel, tmp_path: Path
) -> None:
    path = tmp_path / "d.csv"
    write_csv(path, {"x": np.ones((50, 2)), "y": np.ones((8, 2))})
    result = run_cli(
        kernel,
        "lengths",
        "build",
        str(path),
        "--source",
        "timeseries",
        "-S",
        "window=10",
        "-S",
        "overlap=2",
        "-S",
        "id_column=id",
        "-S",
        "time_column=t",
        "-S",
        "columns=a,b",
        "-o",
        str(tmp_path / "lens"),
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["samples"] == summary["windows"]["count"] == 6
    table = load_lengths(tmp_path / "lens")
    assert table.meta["source"]["name"] == "timeseries"
    assert table.offset is not None
    result = run_cli(kernel, "analyze", str(tmp_path / "lens"))
    assert result.exit_code == 0, result.output
    assert "windows: 6 of 10 rows (stride 8, horizon 0) over 2 series" in result.output
    assert "1 series too short" in result.output
    result = run_cli(kernel, "analyze", str(tmp_path / "lens"), "--json")
    assert json.loads(result.output)["windows"]["per_series"] == {"x": 6, "y": 0}


def test_cli_errors_name_the_place(kernel: laden.Kernel, tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("t,a\n0,1\n2,2\n1,3\n")
    result = run_cli(
        kernel,
        "lengths",
        "build",
        str(path),
        "--source",
        "timeseries",
        "-S",
        "window=1",
        "-S",
        "time_column=t",
        "-o",
        str(tmp_path / "lens"),
    )
    assert result.exit_code == 1
    assert f"{path}:4:" in result.output
    assert "out of order" in result.output
    assert "Traceback" not in result.output
    assert not os.path.exists(tmp_path / "lens")

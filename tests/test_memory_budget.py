"""Memory-aware batches: collated bytes per batch, the plan's byte cap, the loader's monitor."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import laden
from laden.collate import BatchLayout, StagedBatch, collate_staged
from laden.config import RunConfig
from laden.errors import ConfigError, DataError, MissingDependencyError
from laden.memory import (
    BatchBytes,
    MemoryBudget,
    MemoryMonitor,
    collated_bytes,
    resolve_budget,
)
from laden.plan import BatchPlan
from laden.plugins.backends.numpy import NumpyBackend
from laden.records import EpochPlan, LengthTable, Ragged
from laden.testing import run_cli
from laden.torch import PlanLoader  # imports no torch; building a loader does

KERNEL = laden.Kernel(autoload=False)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def nbytes(arrays: dict[str, Any]) -> int:
    return sum(int(v.nbytes) for v in arrays.values() if isinstance(v, np.ndarray))


def token_budget(budget: int = 2048, **extra: Any) -> Any:
    return KERNEL.create("sampler", {"name": "token_budget", "token_budget": budget, **extra})


def everything_once(plan: BatchPlan, n: int) -> None:
    for epoch in plan.epochs:
        assert np.array_equal(np.sort(epoch.order), np.arange(n))


# ------------------------------------------------------------- byte model

BACKENDS = [
    NumpyBackend(),
    NumpyBackend(int_dtype="int64"),
    NumpyBackend(pad_to_multiple_of=8),
    NumpyBackend(dense_mask="causal"),
    NumpyBackend(profile="hf"),
    NumpyBackend(profile="hf", attn_implementation="flash_attention_2"),
    NumpyBackend(profile="hf", attn_implementation="eager"),
]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: repr(b)[:60])
@FAST
@given(data=st.data())
def test_padded_bytes_are_what_collation_makes(backend: Any, data: st.DataObject) -> None:
    lengths = np.asarray(data.draw(st.lists(st.integers(1, 40), min_size=1, max_size=12)))
    cap = data.draw(st.integers(1, 45))
    tokens = Ragged.from_sequences([np.arange(n) % 7 for n in lengths])
    model = BatchBytes.for_backend(backend)
    layout = BatchLayout.padded(np.arange(lengths.size), lengths, cap)
    counted = model.bytes_of([lengths.size], [cap])[0]
    actual = nbytes(backend.host(layout, tokens))
    # Exact for the laden profile; the hf profile's packed rows carry a 4D mask its padded
    # rows lack, and the model counts the larger.
    assert counted == actual if backend.profile == "laden" else counted >= actual


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: repr(b)[:60])
@FAST
@given(data=st.data())
def test_packed_bytes_are_bounded_by_the_model(backend: Any, data: st.DataObject) -> None:
    lengths = np.asarray(data.draw(st.lists(st.integers(1, 30), min_size=1, max_size=20)))
    packer = KERNEL.create("packer", {"name": "first_fit", "max_length": 32})
    pack = packer.pack(LengthTable.from_lengths(lengths))
    tokens = Ragged.from_sequences([np.arange(n) % 5 for n in lengths])
    model = BatchBytes.for_backend(backend)
    packs = np.arange(len(pack))
    segments = int(np.diff(pack.offsets).sum())
    actual = nbytes(backend.host(BatchLayout.packed(pack, packs), tokens))
    assert actual <= model.bytes_of([len(pack)], [pack.max_length], [segments])[0]


def test_without_a_backend_the_model_bounds_every_laden_profile_backend() -> None:
    default = BatchBytes.for_backend()
    assert default == BatchBytes.for_backend(NumpyBackend(int_dtype="int64"))
    assert default.token_bytes >= BatchBytes.for_backend(NumpyBackend()).token_bytes


def test_collated_bytes_of_a_whole_plan_in_one_pass() -> None:
    rng = np.random.default_rng(3)
    table = LengthTable.from_lengths(rng.integers(1, 200, 3000))
    epoch = KERNEL.plan_epoch(token_budget(4096), table)
    model = BatchBytes.for_backend(NumpyBackend())
    per = collated_bytes(epoch, table.length, model)
    tokens = Ragged.from_sequences([np.ones(n, dtype=np.int64) for n in table.length])
    backend = NumpyBackend()
    each = [nbytes(backend.host(BatchLayout.for_batch(b, table.length), tokens)) for b in epoch]
    assert per.tolist() == each


# ---------------------------------------------------------------- budget


@FAST
@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=400),
    budget=st.integers(300, 8000),
    cap=st.integers(13_000, 400_000),
    seed=st.integers(0, 3),
)
def test_every_batch_fits_the_cap_and_every_sample_comes_once(
    lengths: list[int], budget: int, cap: int, seed: int
) -> None:
    table = LengthTable.from_lengths(lengths)
    sampler = token_budget(budget, overflow="alone")
    free = BatchPlan.build(table, sampler, epochs=2, seed=seed)
    plan = BatchPlan.build(
        table, sampler, epochs=2, seed=seed, memory_budget=MemoryBudget(bytes=cap)
    )
    model = BatchBytes(**plan.config["memory_budget"]["model"])
    everything_once(plan, len(table))
    for mine, theirs in zip(plan.epochs, free.epochs, strict=True):
        assert (collated_bytes(mine, table.length, model) <= cap).all()
        # Splitting keeps the order of units: only batch boundaries are added.
        assert np.array_equal(mine.order, theirs.order)
        assert set(theirs.offsets.tolist()) <= set(mine.offsets.tolist())
        report = mine.report["memory"]
        assert len(mine) == len(theirs) + report["extra_batches"]
        # The parts of one batch differ in size by at most one.
        owner = np.searchsorted(theirs.offsets, mine.offsets[:-1], side="right") - 1
        for b in np.unique(owner):
            sizes = mine.batch_sizes[owner == b]
            assert sizes.max() - sizes.min() <= 1


def test_a_split_batch_becomes_the_fewest_parts_its_widest_row_allows() -> None:
    table = LengthTable.from_lengths([100] * 10)  # one batch of ten rows of 100
    sampler = KERNEL.create("sampler", {"name": "fixed", "batch_size": 10, "shuffle": False})
    model = BatchBytes.for_backend()
    row = int(model.bytes_of([1], [100])[0]) - model.batch_bytes
    plan = BatchPlan.build(table, sampler, memory_budget=MemoryBudget(bytes=3 * row + 4))
    assert plan.epochs[0].batch_sizes.tolist() == [3, 3, 2, 2]
    assert plan.epochs[0].report["memory"] == {
        "cap": 3 * row + 4,
        "split_batches": 1,
        "extra_batches": 3,
        "oversize_units": 0,
    }


def test_collated_batches_of_a_capped_plan_fit_when_really_collated() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 120, 800)
    table = LengthTable.from_lengths(lengths)
    backend = NumpyBackend(pad_to_multiple_of=8)
    plan = BatchPlan.build(
        table, token_budget(4096), memory_budget=MemoryBudget(bytes=30_000), backend=backend
    )
    tokens = Ragged.from_sequences([np.ones(n, dtype=np.int64) for n in lengths])
    sizes = [
        nbytes(backend.host(BatchLayout.for_batch(b, lengths), tokens)) for b in plan.epochs[0]
    ]
    assert max(sizes) <= 30_000
    assert plan.epochs[0].report["memory"]["split_batches"] > 0


def test_packed_plans_are_capped_too() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 60, 500)
    table = LengthTable.from_lengths(lengths)
    packer = KERNEL.create("packer", {"name": "best_fit", "max_length": 64})
    plan = BatchPlan.build(
        table, token_budget(2048), packer, memory_budget=MemoryBudget(bytes=10_000)
    )
    tokens = Ragged.from_sequences([np.ones(n, dtype=np.int64) for n in lengths])
    backend = NumpyBackend(int_dtype="int64")
    for spec in plan.epochs[0]:
        layout = BatchLayout.for_batch(spec, lengths, plan.pack)
        assert nbytes(backend.host(layout, tokens)) <= 10_000
    assert np.array_equal(np.sort(plan.epochs[0].order), np.arange(len(plan.pack)))
    assert np.array_equal(np.sort(plan.pack.order), np.arange(500))


def test_a_sample_over_the_cap_alone_is_an_error_naming_it() -> None:
    table = LengthTable.from_lengths([5, 5, 900, 5], ids=np.array(["a", "b", "long", "d"]))
    with pytest.raises(DataError, match=r"sample 2 \(id 'long'\) alone collates to"):
        BatchPlan.build(table, token_budget(4096), memory_budget=MemoryBudget(bytes=2000))


def test_oversize_alone_gives_each_its_own_batch_and_counts_it() -> None:
    lengths = [5, 5, 900, 5, 700, 6]
    table = LengthTable.from_lengths(lengths)
    sampler = KERNEL.create("sampler", {"name": "fixed", "batch_size": 6, "shuffle": False})
    budget = MemoryBudget(bytes=2000, oversize="alone")
    plan = BatchPlan.build(table, sampler, memory_budget=budget)
    epoch = plan.epochs[0]
    everything_once(plan, 6)
    model = BatchBytes(**plan.config["memory_budget"]["model"])
    per = collated_bytes(epoch, table.length, model)
    alone = [b for b in epoch if b.size == 1 and lengths[int(b.indices[0])] >= 700]
    assert sorted(int(b.indices[0]) for b in alone) == [2, 4]
    assert epoch.report["memory"]["oversize_units"] == 2
    assert (
        per[[b.index for b in epoch if b.size > 1 or lengths[int(b.indices[0])] < 700]] <= 2000
    ).all()
    assert "2 samples over it alone" in "\n".join(_report_lines(plan))


def _report_lines(plan: BatchPlan) -> list[str]:
    from laden.cli.plan import report_lines

    return report_lines(plan.summary())


def test_percent_is_read_once_recorded_and_never_read_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import laden.memory

    monkeypatch.setattr(laden.memory, "available_memory", lambda: 1_000_000)
    table = LengthTable.from_lengths(np.random.default_rng(0).integers(1, 200, 600))
    plan = BatchPlan.build(table, token_budget(), memory_budget=MemoryBudget(percent=5))
    recorded = plan.config["memory_budget"]
    assert (recorded["bytes"], recorded["available"], recorded["percent"]) == (50_000, 1_000_000, 5)
    again = BatchPlan.build(table, token_budget(), memory_budget=MemoryBudget(percent=5))
    assert again.fingerprint == plan.fingerprint
    # The machine's memory changes: the saved plan still verifies and loads unchanged.
    monkeypatch.setattr(laden.memory, "available_memory", lambda: 7_000_000)
    plan.save(tmp_path / "plan")
    loaded = BatchPlan.load(tmp_path / "plan")
    assert loaded.fingerprint == plan.fingerprint
    assert loaded.verify(table).ok
    assert loaded.memory()["bytes"] == 50_000
    other = BatchPlan.build(table, token_budget(), memory_budget=MemoryBudget(percent=5))
    assert other.fingerprint != plan.fingerprint  # another cap is another plan


def test_a_plan_without_a_budget_keeps_its_fingerprint() -> None:
    table = LengthTable.from_lengths([3, 4, 5])
    plan = BatchPlan.build(table, token_budget())
    assert "memory_budget" not in plan.config
    assert plan.memory() is None


def test_percent_without_psutil_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psutil", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "laden\[memory\]"'):
        resolve_budget(MemoryBudget(percent=10), LengthTable.from_lengths([1]))
    # Bytes need no psutil.
    assert resolve_budget(MemoryBudget(bytes=10), LengthTable.from_lengths([1]))["bytes"] == 10


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"percent": 150}, "memory_budget.percent: must be in (0, 100], got 150"),
        ({"percent": 0}, "memory_budget.percent: must be in (0, 100], got 0"),
        ({"bytes": -5}, "memory_budget.bytes: must be > 0, got -5"),
        ({"bytes": "1GB"}, "memory_budget.bytes: expected an integer, got '1GB'"),
        ({}, "memory_budget: give exactly one of 'bytes' and 'percent'"),
        ({"bytes": 1, "percent": 2}, "memory_budget: give exactly one of 'bytes' and 'percent'"),
        ({"bytes": 1, "layout": "staged"}, "memory_budget.step_bytes: layout 'staged' needs"),
        ({"bytes": 1, "layout": "rows"}, "memory_budget.layout: must be one of"),
        ({"bytes": 1, "oversize": "drop"}, "memory_budget.oversize: must be one of"),
        ({"bytse": 1}, "memory_budget: unknown key 'bytse' (did you mean 'bytes'?)"),
    ],
)
def test_config_errors_name_the_key(section: dict[str, Any], message: str) -> None:
    data = {"sampler": {"name": "token_budget", "token_budget": 64}, "memory_budget": section}
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(data, kernel=KERNEL, source="run.toml")
    assert str(info.value).startswith(f"run.toml: {message}")


def test_a_run_config_builds_a_capped_plan() -> None:
    data = {
        "seed": 2,
        "sampler": {"name": "token_budget", "token_budget": 4096},
        "backend": {"name": "numpy"},
        "memory_budget": {"bytes": 20_000},
    }
    config = RunConfig.from_mapping(data, kernel=KERNEL)
    assert RunConfig.from_mapping(config.to_dict(), kernel=KERNEL).memory_budget == MemoryBudget(
        bytes=20_000
    )
    table = LengthTable.from_lengths(np.random.default_rng(2).integers(1, 300, 500))
    plan = BatchPlan.from_config(table, config, kernel=KERNEL)
    # The [backend] section's collation is the one counted (int32 token columns here).
    assert plan.config["memory_budget"]["model"] == attrs.asdict(
        BatchBytes.for_backend(NumpyBackend())
    )
    model = BatchBytes(**plan.config["memory_budget"]["model"])
    assert (collated_bytes(plan.epochs[0], table.length, model) <= 20_000).all()


# ------------------------------------------------------- windows and stages


def test_window_bytes_are_exactly_what_window_collation_makes(tmp_path: Path) -> None:
    from laden.contrib.timeseries import TimeseriesSource, WindowDataset

    values = np.random.default_rng(0).normal(size=(500, 5)).astype(np.float32)
    np.save(tmp_path / "s.npy", values)
    src = TimeseriesSource(
        path=str(tmp_path / "s.npy"), window=12, overlap=4, horizon=3, target_columns="0,1"
    )
    table = src.lengths()
    plan = BatchPlan.build(
        table,
        KERNEL.create("sampler", {"name": "fixed", "batch_size": 16}),
        memory_budget=MemoryBudget(bytes=4000),
    )
    model = BatchBytes(**plan.config["memory_budget"]["model"])
    assert model.row_bytes == (12 * 5 + 3 * 2) * 4 + 24
    data = WindowDataset(src, table)
    for spec in plan.epochs[0]:
        actual = nbytes(data.collate(spec.indices))
        assert actual == collated_bytes(plan.epochs[0], table.length, model)[spec.index]
        assert actual <= 4000
    everything_once(plan, len(table))


@FAST
@given(data=st.data())
def test_staged_bytes_bound_staged_collation(data: st.DataObject) -> None:
    depth = data.draw(st.integers(0, 3))
    n = data.draw(st.integers(1, 6))
    steps = np.asarray(
        data.draw(
            st.lists(
                st.lists(st.integers(0, 9), min_size=depth + 1, max_size=depth + 1),
                min_size=n,
                max_size=n,
            )
        )
    )
    total = int(steps.sum())
    fields = {"states": np.zeros((total, 3), np.float32), "actions": np.zeros(total, np.int64)}
    actual = nbytes(
        collate_staged(StagedBatch(steps=steps, fields=fields, sample_ids=np.arange(n)))
    )
    model = BatchBytes.for_staged(step_bytes=3 * 4 + 8)
    epoch = EpochPlan(
        order=np.arange(n), offsets=[0, n], max_length=[steps.sum(1).max()], bucket=[0]
    )
    key = np.full(n, depth)
    assert actual <= collated_bytes(epoch, steps.sum(1), model, key=key)[0]
    if n == 1:  # one sample: exact
        assert actual == collated_bytes(epoch, steps.sum(1), model, key=key)[0]


@pytest.mark.parametrize("exact", [True, False], ids=["stage_length", "depth-only"])
def test_staged_plans_are_capped_by_their_stages(exact: bool) -> None:
    rng = np.random.default_rng(4)
    depth = rng.integers(0, 4, 300)
    matrix = rng.integers(20, 60, (300, 4)) * (np.arange(4)[None, :] <= depth[:, None])
    table = LengthTable(length=matrix.sum(1), key=depth, stage_length=matrix if exact else None)
    sampler = KERNEL.create("sampler", {"name": "fixed", "batch_size": 32})
    budget = MemoryBudget(bytes=60_000, layout="staged", step_bytes=19 * 4)
    plan = BatchPlan.build(table, sampler, memory_budget=budget)
    everything_once(plan, 300)
    assert plan.epochs[0].report["memory"]["split_batches"] > 0
    model = BatchBytes(**plan.config["memory_budget"]["model"])
    counted = collated_bytes(
        plan.epochs[0], table.length, model, key=table.key, stage_length=table.stage_length
    )
    assert counted.max() <= 60_000
    for spec in plan.epochs[0]:
        # Fixed batches mix depths: collate at the deepest, shallower samples with empty stages.
        steps = matrix[spec.indices]
        fields = {"f": np.zeros((int(steps.sum()), 19), np.float32)}
        batch = StagedBatch(steps=steps, fields=fields, sample_ids=spec.indices)
        got = nbytes(collate_staged(batch))
        assert got == counted[spec.index] if exact else got <= counted[spec.index]


def test_a_staged_table_must_say_its_layout() -> None:
    table = LengthTable(length=[3, 4], key=[0, 1], stage_length=[[3, 0], [2, 2]])
    with pytest.raises(ConfigError, match=r"memory_budget\.layout: the length table holds staged"):
        BatchPlan.build(table, token_budget(), memory_budget=MemoryBudget(bytes=10**6))


# ---------------------------------------------------------------- monitor


def test_the_monitor_splits_only_over_the_limit() -> None:
    readings = iter([10, 500, 500, 10])
    monitor = MemoryMonitor(limit=100, parts=3, probe=lambda: next(readings))
    assert [monitor.split(8), monitor.split(8), monitor.split(2), monitor.split(8)] == [1, 3, 2, 1]
    assert monitor.split(1) == 1  # nothing to split; memory is not even read


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        (0, "memory_limit: must be a positive number of bytes"),
        ("150%", "memory_limit.percent: must be in (0, 100]"),
        ("lots%", "memory_limit.percent: must be in (0, 100]"),
        ({"bytes": 1, "percent": 2}, "memory_limit: give one of 'bytes' and 'percent'"),
    ],
)
def test_bad_memory_limits_name_the_setting(limit: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        MemoryMonitor(limit=limit)


def test_percent_limits_are_of_physical_memory() -> None:
    pytest.importorskip("psutil")
    import psutil

    total = psutil.virtual_memory().total
    assert MemoryMonitor(limit="50%").limit == total // 2
    assert MemoryMonitor(limit={"percent": 50}).limit == total // 2


class Loaded:
    """A dataset whose batches are their indices, so a test sees what went where."""

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        return {"ids": list(indices), "step": indices.step, "epoch": indices.epoch}  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return 10**6


def small_plan(n: int = 60, epochs: int = 2) -> BatchPlan:
    table = LengthTable.from_lengths(np.random.default_rng(5).integers(1, 50, n))
    sampler = KERNEL.create("sampler", {"name": "fixed", "batch_size": 7})
    return BatchPlan.build(table, sampler, epochs=epochs)


class Readings:
    """Memory readings in issue order: ``high[i]`` says whether the i-th reading is high."""

    def __init__(self, high: list[bool], start: int = 0) -> None:
        self.high, self.at = high, start

    def __call__(self) -> int:
        value = 10**9 if self.at < len(self.high) and self.high[self.at] else 0
        self.at += 1
        return value


def run(loader: PlanLoader, epochs: range, stop: int | None = None) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in epochs:
        loader.set_epoch(e)
        for batch in loader:
            out.append(
                (
                    batch["epoch"],
                    batch["step"],
                    batch.get("micro_batch", 0),
                    batch.get("micro_batches", 1),
                    tuple(batch["ids"]),
                )
            )
            if stop is not None and len(out) == stop:
                return out
    return out


def make_loader(plan: BatchPlan, probe: Any, parts: int = 3) -> PlanLoader:
    pytest.importorskip("torch")  # the loader tests need it; the rest of the file does not
    return PlanLoader(plan, Loaded(), memory_limit=1000, memory_parts=parts, memory_probe=probe)


def test_micro_batches_cover_their_step_in_order() -> None:
    plan = small_plan()
    high = [i % 3 == 1 for i in range(100)]
    seen = run(make_loader(plan, Readings(high)), range(2))
    steps: dict[tuple[int, int], list[int]] = {}
    for epoch, step, _micro, _parts, ids in seen:
        steps.setdefault((epoch, step), []).extend(ids)
    for (epoch, step), ids in steps.items():
        assert ids == plan.epochs[epoch][step].indices.tolist()
    split = [s for s in seen if s[3] > 1]
    assert split
    assert all(s[3] == 3 for s in split)
    assert len(seen) == plan.total_steps + 2 * len({(s[0], s[1]) for s in split})


@settings(max_examples=25, deadline=None)
@given(
    high=st.lists(st.booleans(), min_size=30, max_size=30),
    stop=st.integers(1, 40),
    parts=st.integers(2, 4),
)
def test_resume_at_any_micro_batch_gives_the_uninterrupted_sequence(
    high: list[bool], stop: int, parts: int
) -> None:
    plan = small_plan()
    whole = run(make_loader(plan, Readings(high), parts), range(2))
    stop = min(stop, len(whole))
    first = make_loader(plan, Readings(high), parts)
    head = run(first, range(2), stop=stop)
    state = json.loads(json.dumps(first.state_dict()))  # as saved to a file
    # Readings of the steps the first run issued are spent; the next step reads on from there.
    issued = len({(e, s) for e, s, *_ in head})
    resumed = make_loader(plan, Readings(high, start=issued), parts)
    resumed.load_state_dict(state)
    epoch = state["epoch"] if state["epoch"] < plan.num_epochs else plan.num_epochs - 1
    tail = run(resumed, range(epoch, 2))
    assert head + tail == whole
    assert [list(s) for s in resumed.split_steps] == [
        [e, s, p] for e, s, m, p, _ in whole if p > 1 and m == p - 1
    ]


def test_after_a_restart_with_memory_to_spare_the_split_step_is_finished_the_same_way() -> None:
    plan = small_plan()
    first = make_loader(plan, lambda: 10**9, parts=3)
    head = run(first, range(1), stop=4)  # steps 0 (3 parts) and the first part of step 1
    state = first.state_dict()
    assert (state["step"], state["micro_batch"], state["micro_batches"]) == (1, 1, 3)
    calm = make_loader(plan, lambda: 0)
    calm.load_state_dict(state)
    tail = run(calm, range(2))
    assert [t[2:4] for t in tail[:2]] == [(1, 3), (2, 3)]  # the rest of step 1, in its parts
    assert all(t[3] == 1 for t in tail[2:])  # nothing else is split
    ids = [i for t in head + tail if t[0] == 0 for i in t[4]]
    assert sorted(ids) == sorted(plan.epochs[0].order.tolist())


def test_a_state_part_way_through_a_step_is_checked() -> None:
    plan = small_plan()
    loader = make_loader(plan, lambda: 0)
    state = {**loader.state_dict(), "micro_batch": 3, "micro_batches": 2}
    with pytest.raises(DataError, match="micro_batch 3 of micro_batches 2 does not fit"):
        loader.load_state_dict(state)


def test_workers_hand_micro_batches_out_in_order() -> None:
    plan = small_plan(40, 1)
    pytest.importorskip("torch")
    loader = PlanLoader(
        plan, Loaded(), num_workers=2, memory_limit=1000, memory_probe=lambda: 10**9
    )
    seen = run(loader, range(1))
    assert [i for t in seen for i in t[4]] == plan.epochs[0].order.tolist()
    assert all(t[3] == 2 for t in seen if len(plan.epochs[0][t[1]].indices) > 1)


# -------------------------------------------------------------------- CLI


def test_analyze_reports_bytes_per_batch_and_plan_info_the_budget(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": "x" * (i % 90 + 3)}) + "\n" for i in range(300)))
    kernel = laden.Kernel(autoload=False)
    assert (
        run_cli(
            kernel, "lengths", "build", str(data), "-o", str(tmp_path / "L"), "--workers", "0"
        ).exit_code
        == 0
    )
    result = run_cli(kernel, "analyze", str(tmp_path / "L"), "--json", "--backend", "numpy")
    sizes = json.loads(result.output)["batch_bytes"]
    assert sizes["layout"] == "padded"
    assert sizes["min"] <= sizes["median"] <= sizes["max"]
    text = run_cli(kernel, "analyze", str(tmp_path / "L")).output
    assert "collated bytes per batch (padded): min" in text
    config = tmp_path / "run.toml"
    config.write_text(
        '[sampler]\nname = "token_budget"\ntoken_budget = 4096\n[memory_budget]\nbytes = 20000\n'
    )
    built = run_cli(
        kernel,
        "plan",
        "build",
        str(tmp_path / "L"),
        "--config",
        str(config),
        "-o",
        str(tmp_path / "P"),
    )
    assert built.exit_code == 0, built.output
    info = run_cli(kernel, "plan", "info", str(tmp_path / "P"))
    assert "memory budget: 20,000 collated bytes per batch" in info.output
    as_json = json.loads(run_cli(kernel, "plan", "info", str(tmp_path / "P"), "--json").output)
    assert as_json["memory_budget"]["bytes"] == 20_000
    assert as_json["memory_budget"]["split_batches"][0] > 0
    assert run_cli(kernel, "plan", "verify", str(tmp_path / "P")).exit_code == 0


def test_analyze_counts_staged_samples_with_step_bytes(tmp_path: Path) -> None:
    from laden.lengths import save_lengths

    rng = np.random.default_rng(6)
    depth = rng.integers(0, 3, 200)
    matrix = rng.integers(5, 30, (200, 3)) * (np.arange(3)[None, :] <= depth[:, None])
    table = LengthTable(length=matrix.sum(1), key=depth, stage_length=matrix)
    save_lengths(table, tmp_path / "L")
    kernel = laden.Kernel(autoload=False)
    args = ["analyze", str(tmp_path / "L"), "--token-budget", "2048"]
    text = run_cli(kernel, *args).output
    assert "collated bytes per batch: pass --step-bytes (staged samples)" in text
    out = json.loads(run_cli(kernel, *args, "--step-bytes", "40", "--json").output)
    sizes = out["batch_bytes"]
    assert sizes["layout"] == "staged"
    assert sizes["batches"] == out["depth_buckets"]["batches"]
    # The depth_buckets plan analyze simulates, counted exactly from its stages.
    sampler = kernel.create("sampler", {"name": "depth_buckets", "token_budget": 2048})
    epoch = sampler.plan_epoch(table, seed=0)
    per = collated_bytes(
        epoch, table.length, BatchBytes.for_staged(40), stage_length=table.stage_length
    )
    assert (sizes["min"], sizes["max"], sizes["total"]) == (per.min(), per.max(), per.sum())


def test_the_state_lists_only_the_latest_split_steps_and_counts_them_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import laden.torch

    monkeypatch.setattr(laden.torch, "SPLIT_HISTORY", 3)
    plan = small_plan()
    loader = make_loader(plan, lambda: 10**9, parts=2)  # memory always high: every step splits
    seen = run(loader, range(2))
    split = [[e, s, p] for e, s, m, p, _ in seen if p > 1 and m == p - 1]
    assert len(split) == len(plan.epochs[0]) + len(plan.epochs[1]) > 3
    state = json.loads(json.dumps(loader.state_dict()))
    assert state["split_steps"] == split[-3:]
    assert state["split_count"] == len(split)
    again = make_loader(plan, lambda: 0)
    again.load_state_dict(state)
    assert again.split_steps == split[-3:]
    assert again.split_count == len(split)

"""Samplers: the conformance checks, then behaviour specific to each."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import laden
from laden.analysis import repeat_rate
from laden.batching import cut_descending
from laden.plugins.samplers import token_budget
from laden.plugins.samplers.fixed import FixedSampler
from laden.plugins.samplers.token_budget import TokenBudgetSampler
from laden.testing import check_sampler


@pytest.mark.parametrize(
    "config",
    [
        {"batch_size": 1},
        {"batch_size": 7},
        {"batch_size": 7, "drop_last": True},
        {"batch_size": 4, "shuffle": False},
    ],
    ids=str,
)
def test_fixed_conforms(config: dict) -> None:
    check_sampler(FixedSampler, **config)


@pytest.mark.parametrize(
    "config",
    [
        {"token_budget": 4096, "overflow": "drop"},
        {"token_budget": 4096, "overflow": "truncate", "bucket_edges": (64, 512)},
        {"token_budget": 4096, "overflow": "alone", "num_buckets": 3, "pool_size": 16},
        {"token_budget": 4096, "overflow": "error", "max_batch_size": 5},
        {"token_budget": 2000**2, "cost": "quadratic", "overflow": "alone"},
        {"token_budget": 3000, "shuffle": False, "overflow": "drop", "bucket_edges": (100,)},
        {"token_budget": 4096, "overflow": "drop", "num_buckets": 4, "vary_batches": False},
        # Small budgets: few samples per batch, so every pool is jittered (nearly sorted).
        {"token_budget": 6000, "overflow": "truncate", "max_batch_size": 3, "bucket_edges": (500,)},
        {"token_budget": 3000**2, "cost": "quadratic", "overflow": "drop", "num_buckets": 3},
    ],
    ids=str,
)
def test_token_budget_conforms(config: dict) -> None:
    check_sampler(TokenBudgetSampler, **config)


LENGTHS = np.clip(np.random.default_rng(0).lognormal(5.5, 0.9, 20_000), 8, 4096).astype(np.int64)


def test_token_budget_is_far_tighter_than_random_fixed_batches(kernel: laden.Kernel) -> None:
    table = laden.LengthTable.from_lengths(LENGTHS)
    budget = kernel.create(
        "sampler", {"name": "token_budget", "token_budget": 16384, "num_buckets": 4}
    )
    plan = budget.plan_epoch(table, seed=0)
    fixed = kernel.create("sampler", {"name": "fixed", "batch_size": 32}).plan_epoch(table)
    assert plan.efficiency(LENGTHS) > 0.97
    assert fixed.efficiency(LENGTHS) < 0.5
    cost = plan.batch_sizes * plan.max_length
    assert cost.max() <= 16384
    # The budget is used, not merely respected: most batches are nearly full.
    assert np.median(cost) > 0.9 * 16384


def test_overflow_error_names_the_sample_and_the_fix() -> None:
    table = laden.LengthTable.from_lengths([10, 5000, 20, 7000])
    with pytest.raises(laden.DataError) as info:
        TokenBudgetSampler(token_budget=4096).plan_epoch(table)
    message = str(info.value)
    assert "2 sample(s) are longer than the token budget allows (4096 tokens)" in message
    assert "sample 1 with 5000 tokens" in message
    assert "'drop', 'truncate' or 'alone'" in message


def test_overflow_policies_count_what_they_do() -> None:
    table = laden.LengthTable.from_lengths([10, 5000, 20, 7000, 30])
    dropped = TokenBudgetSampler(token_budget=4096, overflow="drop").plan_epoch(table)
    assert dropped.dropped.tolist() == [1, 3]
    assert dropped.report["dropped"] == {"overflow": 2}
    assert sorted(dropped.order.tolist()) == [0, 2, 4]

    truncated = TokenBudgetSampler(token_budget=4096, overflow="truncate").plan_epoch(table)
    assert truncated.truncated.tolist() == [1, 3]
    assert truncated.report["truncated"] == 2
    assert truncated.max_length.max() == 4096
    assert sorted(truncated.order.tolist()) == [0, 1, 2, 3, 4]

    alone = TokenBudgetSampler(token_budget=4096, overflow="alone").plan_epoch(table)
    solo = {int(s.indices[0]): s for s in alone if s.bucket == -1}
    assert set(solo) == {1, 3}
    assert all(s.size == 1 for s in solo.values())
    assert solo[3].max_length == 7000
    assert alone.report["alone"] == 2


def test_quadratic_cost() -> None:
    lengths = np.array([100] * 50 + [1000] * 5)
    # The greedy cut itself: vary_batches would start the first cut at a random place.
    plan = TokenBudgetSampler(
        token_budget=2_000_000, cost="quadratic", vary_batches=False
    ).plan_epoch(laden.LengthTable.from_lengths(lengths))
    cost = plan.batch_sizes * plan.max_length.astype(np.int64) ** 2
    assert cost.max() <= 2_000_000
    # Greedy over lengths sorted descending: 2e6 / 1000² = 2 per batch at 1000 tokens
    # (the fifth 1000 shares with a 100), then the remaining 49 short ones together.
    assert sorted(plan.batch_sizes.tolist()) == [2, 2, 2, 49]


def test_explicit_bucket_edges_separate_lengths() -> None:
    lengths = np.array([10, 200, 15, 300, 12, 250, 900])
    plan = TokenBudgetSampler(token_budget=100_000, bucket_edges=(50, 500)).plan_epoch(
        laden.LengthTable.from_lengths(lengths), seed=3
    )
    groups = sorted(sorted(lengths[s.indices].tolist()) for s in plan)
    assert groups == [[10, 12, 15], [200, 250, 300], [900]]
    by_bucket = {s.bucket: sorted(lengths[s.indices].tolist()) for s in plan}
    assert by_bucket == {0: [10, 12, 15], 1: [200, 250, 300], 2: [900]}
    assert plan.report["bucket_edges"] == [50, 500]


def test_bucket_by_key() -> None:
    table = laden.LengthTable.from_lengths([10, 10, 10, 10], key=[3, 1, 3, 1])
    plan = TokenBudgetSampler(token_budget=1000, bucket_by="key").plan_epoch(table)
    groups = sorted(sorted(s.indices.tolist()) for s in plan)
    assert groups == [[0, 2], [1, 3]]
    assert plan.report["bucket_keys"] == [1, 3]
    with pytest.raises(laden.ConfigError, match="needs a length table with a key column"):
        TokenBudgetSampler(token_budget=1000, bucket_by="key").plan_epoch(
            laden.LengthTable.from_lengths([1, 2])
        )


def test_seed_and_epoch_are_not_added() -> None:
    """PEERS: seed 42 epoch 1 must not equal seed 43 epoch 0."""
    table = laden.LengthTable.from_lengths(LENGTHS[:3000])
    sampler = TokenBudgetSampler(token_budget=8192)
    a = sampler.plan_epoch(table, seed=42, epoch=1)
    b = sampler.plan_epoch(table, seed=43, epoch=0)
    assert not np.array_equal(a.order, b.order)


def test_plans_are_byte_identical_for_the_same_seed() -> None:
    table = laden.LengthTable.from_lengths(LENGTHS)
    sampler = TokenBudgetSampler(token_budget=16384, num_buckets=4)
    a = sampler.plan_epoch(table, seed=7, epoch=2)
    b = sampler.plan_epoch(table, seed=7, epoch=2)
    for name in ("order", "offsets", "max_length", "bucket"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
    # Pinned: the same inputs must give this plan on every Python/numpy of the matrix.
    assert a.digest() == PINNED_DIGEST


PINNED_DIGEST = "6db3051f076cc89be639461c96abf7df"  # issue 16: jittered (was 5ac85988...)


def test_config_conflicts(kernel: laden.Kernel) -> None:
    with pytest.raises(laden.ConfigError, match=r"sampler\.num_buckets: give bucket_edges or"):
        kernel.create(
            "sampler",
            {"name": "token_budget", "token_budget": 10, "num_buckets": 2, "bucket_edges": [5]},
        )
    with pytest.raises(laden.ConfigError, match=r"sampler.token_budget: must be > 0, got -5"):
        kernel.create("sampler", {"name": "token_budget", "token_budget": -5})
    with pytest.raises(laden.ConfigError, match=r"sampler.bucket_edges\[1\]: must increase"):
        kernel.create(
            "sampler", {"name": "token_budget", "token_budget": 10, "bucket_edges": [5, 5]}
        )


def test_fixed_sampler_drop_last_reports() -> None:
    plan = FixedSampler(batch_size=4, drop_last=True).plan_epoch(
        laden.LengthTable.from_lengths(np.arange(10)), seed=1
    )
    assert len(plan) == 2
    assert plan.dropped.size == 2
    assert plan.report["dropped"] == {"drop_last": 2}


def long_tail(n: int = 73_000, seed: int = 1) -> np.ndarray:
    """Paragraph-like lengths: a lognormal body and a long tail (top bucket ~100 samples)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(4.2, 1.1, n), 4, 16384).astype(np.int64)


@pytest.mark.parametrize(
    "config",
    [{"num_buckets": 8}, {"num_buckets": 4}, {"bucket_edges": (64, 256, 1024)}, {}],
    ids=str,
)
def test_batches_do_not_repeat_across_epochs(config: dict) -> None:
    """Issue 16: 11% of epoch 1's batches were a batch of epoch 0 (the small top buckets)."""
    lengths = long_tail()
    table = laden.LengthTable.from_lengths(lengths)
    new = TokenBudgetSampler(token_budget=16384, **config)
    old = attrs.evolve(new, vary_batches=False)  # the reference: the earlier behaviour
    rates, efficiency = {}, {}
    for name, sampler in (("new", new), ("old", old)):
        epochs = [sampler.plan_epoch(table, epoch=e, seed=5) for e in range(3)]
        rates[name] = max(repeat_rate(a, b) for a in epochs for b in epochs if a is not b)
        efficiency[name] = np.mean([e.efficiency(lengths) for e in epochs])
        for e in epochs:  # still every sample once, within the budget
            assert np.array_equal(np.sort(e.order), np.arange(lengths.size))
            assert (e.batch_sizes * e.max_length).max() <= 16384
    if config:  # bucketed: the earlier sampler repeated many batches
        assert rates["old"] > 0.05
    assert rates["new"] <= 0.01
    assert efficiency["new"] >= efficiency["old"] - 0.01


SMALL_SETS = {
    # `laden analyze`'s test table and the start of LENGTHS: every bucket is small, and
    # splitting buckets into random pools cost 0.02 of efficiency there.
    "5k": np.clip(np.random.default_rng(1).lognormal(5, 1, 5000), 1, 3000).astype(np.int64),
    "3k": LENGTHS[:3000],
}


@pytest.mark.parametrize("name", sorted(SMALL_SETS))
@pytest.mark.parametrize(
    "config", [{"num_buckets": 8}, {"bucket_edges": (64, 256, 1024)}, {}], ids=str
)
def test_small_datasets_vary_batches_at_little_cost(name: str, config: dict) -> None:
    """Issue 16: <= 1% repeated batches and efficiency within 0.01 on a few thousand samples."""
    lengths = SMALL_SETS[name]
    table = laden.LengthTable.from_lengths(lengths)
    new = TokenBudgetSampler(token_budget=16384, **config)
    old = attrs.evolve(new, vary_batches=False)
    rates, efficiency = {}, {}
    for label, sampler in (("new", new), ("old", old)):
        pairs, effs = [], []
        for seed in range(4):
            epochs = [sampler.plan_epoch(table, epoch=e, seed=seed) for e in range(3)]
            pairs += [repeat_rate(a, b) for a in epochs for b in epochs if a is not b]
            effs += [e.efficiency(lengths) for e in epochs]
        rates[label], efficiency[label] = np.mean(pairs), np.mean(effs)
    assert rates["old"] > 0.2  # the sorted cut repeats a third of its batches or more
    assert rates["new"] <= 0.01
    assert efficiency["new"] >= efficiency["old"] - 0.01


@settings(max_examples=150, deadline=None)
@given(
    lengths=arrays(np.int64, st.integers(1, 200), elements=st.integers(0, 5000)),
    cuts=st.lists(st.integers(0, 200), max_size=4),
    budget=st.integers(1, 20_000),
    quadratic=st.booleans(),
    max_batch_size=st.none() | st.integers(1, 9),
    data=st.data(),
)
def test_cut_of_nearly_sorted_segments_keeps_the_budget(
    lengths: np.ndarray,
    cuts: list[int],
    budget: int,
    quadratic: bool,
    max_batch_size: int | None,
    data: st.DataObject,
) -> None:
    """``nearly``: a batch is costed by its longest member wherever it stands."""
    bounds = np.unique(np.clip([0, *cuts, lengths.size], 0, lengths.size))
    segments = bounds.size - 1
    phase = np.array(data.draw(st.lists(st.floats(0, 0.999), min_size=segments, max_size=segments)))
    nearly = np.array(data.draw(st.lists(st.booleans(), min_size=segments, max_size=segments)))
    for segment in np.flatnonzero(~nearly):  # the sorted path needs sorted segments
        a, b = bounds[segment], bounds[segment + 1]
        lengths[a:b] = np.sort(lengths[a:b])[::-1]
    starts = cut_descending(
        lengths,
        bounds,
        budget,
        quadratic=quadratic,
        max_batch_size=max_batch_size,
        phase=phase,
        nearly=nearly,
    )
    assert np.all(np.diff(starts) > 0)
    assert set(bounds[:-1].tolist()) <= set(starts.tolist())  # no batch crosses a segment
    sizes = np.diff(np.append(starts, lengths.size))
    longest = np.maximum.reduceat(lengths, starts)
    cost = np.maximum(longest, 1) ** (2 if quadratic else 1)
    assert np.all((sizes * cost <= budget) | (sizes == 1))  # one over the budget goes alone
    if max_batch_size is not None:
        assert sizes.max() <= max_batch_size


def test_jitter_moves_samples_only_a_few_places() -> None:
    """vary_batches trades neighbours between batches; it never reorders a pool widely."""
    lengths = np.arange(1000, 1400)  # distinct lengths: a pool that needs the jitter
    table = laden.LengthTable.from_lengths(lengths)
    sampler = TokenBudgetSampler(token_budget=16384, pool_size=10_000)
    orders = [sampler.plan_epoch(table, epoch=e, seed=3) for e in range(2)]
    for plan in orders:
        # Batches of 12 to 16 consecutive lengths, give or take 8 places at either end.
        for batch in plan:
            span = lengths[batch.indices]
            assert span.max() - span.min() < 16 + 2 * token_budget._JITTER_PLACES
    assert repeat_rate(orders[0], orders[1]) == 0.0
    off = attrs.evolve(sampler, vary_batches=False)
    assert repeat_rate(off.plan_epoch(table, seed=3), off.plan_epoch(table, epoch=1, seed=3)) > 0.9


def test_repeat_rate_counts_batches_as_sets() -> None:
    a = laden.EpochPlan(
        order=np.array([0, 1, 2, 3, 4]),
        offsets=np.array([0, 2, 5]),
        max_length=np.array([1, 1]),
        bucket=np.array([0, 0]),
    )
    b = laden.EpochPlan(
        order=np.array([1, 0, 2, 3, 4]),
        offsets=np.array([0, 2, 3, 5]),
        max_length=np.array([1, 1, 1]),
        bucket=np.array([0, 0, 0]),
    )
    assert repeat_rate(a, b) == pytest.approx(1 / 3)  # {0, 1} again; {2}, {3, 4} are new
    assert repeat_rate(a, a) == 1.0


def test_bucket_edges_are_searched_once_per_length_column(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 16: the edge search ran once per epoch; it depends on the lengths alone."""
    calls = []
    search = token_budget.suggest_bucket_edges

    def counted(lengths: np.ndarray, num_buckets: int) -> np.ndarray:
        calls.append(num_buckets)
        return search(lengths, num_buckets)

    monkeypatch.setattr(token_budget, "suggest_bucket_edges", counted)
    monkeypatch.setattr(token_budget, "_EDGE_CACHE", type(token_budget._EDGE_CACHE)())
    table = laden.LengthTable.from_lengths(LENGTHS)
    sampler = TokenBudgetSampler(token_budget=16384, num_buckets=4)
    plan = laden.plan.BatchPlan.build(table, sampler, epochs=3, seed=1)
    assert calls == [4]
    edges = search(LENGTHS, 4).tolist()
    assert all(e.report["bucket_edges"] == edges for e in plan.epochs)  # recorded per epoch
    # The same plan as with the edges given explicitly (what the cache must not change).
    explicit = TokenBudgetSampler(token_budget=16384, bucket_edges=tuple(edges))
    for a, e in zip(plan.epochs, range(3), strict=True):
        assert a.digest() == explicit.plan_epoch(table, epoch=e, seed=1).digest()
    other = laden.LengthTable.from_lengths(LENGTHS[:-1])
    sampler.plan_epoch(other)
    assert calls == [4, 4]  # other lengths: searched again

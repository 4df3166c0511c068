"""Conformance checks: any strategy, ours or a third party's, held to the same contract.

``check_sampler``, ``check_packer``, ``check_backend``, ... each run a
strategy class through hypothesis-generated inputs and assert every rule its
kind's protocol in :mod:`laden.kinds` states.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_backend", "check_packer", "check_sampler"]


# ---------------------------------------------------------------- conformance


def _check_plan_invariants(sampler: Any, table: Any, plan: Any) -> None:
    """Every sample once (or dropped and reported), budget and max_length respected."""
    n = len(table)
    order = np.asarray(plan.order)
    dropped = np.asarray(plan.dropped)
    seen = np.concatenate([order, dropped])
    assert seen.size == n, f"{seen.size} placed or dropped, table has {n}"
    assert np.array_equal(np.sort(seen), np.arange(n)), "a sample is missing or repeated"
    reported = plan.report.get("dropped", {}) if hasattr(plan, "report") else {}
    assert sum(reported.values()) == dropped.size, "drops are not all reported in plan.report"
    sizes = np.diff(plan.offsets)
    assert (sizes > 0).all(), "empty batch"
    truncated = set(np.asarray(plan.truncated).tolist())
    lengths = table.length
    for spec in plan:
        members = lengths[spec.indices]
        if truncated.isdisjoint(spec.indices.tolist()):
            assert members.max() == spec.max_length, f"batch {spec.index}: max_length is wrong"
        else:
            assert members.max() >= spec.max_length
    budget = getattr(sampler, "token_budget", None)
    if budget is not None:
        quadratic = getattr(sampler, "cost", "linear") == "quadratic"
        cost = sizes * (plan.max_length**2 if quadratic else plan.max_length)
        alone = np.asarray(plan.bucket) == -1
        assert (cost[~alone] <= budget).all(), "a batch exceeds the token budget"
        assert (sizes[alone] == 1).all(), "an over-budget batch holds more than one sample"
    max_batch_size = getattr(sampler, "max_batch_size", None) or getattr(
        sampler, "batch_size", None
    )
    if max_batch_size is not None:
        assert (sizes <= max_batch_size).all(), "a batch is larger than allowed"


def check_sampler(cls: type[Any], *, max_examples: int = 60, **config: Any) -> None:
    """Check that a sampler class keeps the contract every sampler must keep.

    Property-based (hypothesis) over random length tables, including empty and
    single-sample ones:

    - every sample appears exactly once per epoch, unless dropped by policy,
      and then it is in ``plan.dropped`` and counted in ``plan.report["dropped"]``;
    - ``max_length`` of a batch is its longest member (or less where truncated);
    - a ``token_budget`` (and ``max_batch_size`` / ``batch_size``) is respected;
    - the same seed and epoch give an identical plan; another epoch gives
      another order (for samplers that shuffle);
    - an empty table gives no batches, a single sample one batch (or a drop).

    :param cls: the sampler class.
    :param config: its config fields.
    """
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    import laden

    sampler = cls(**config)

    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        lengths=arrays(np.int64, st.integers(0, 300), elements=st.integers(0, 3000)),
        seed=st.integers(0, 2**32 - 1),
        epoch=st.integers(0, 1000),
    )
    def properties(lengths: np.ndarray, seed: int, epoch: int) -> None:
        table = laden.LengthTable.from_lengths(lengths)
        try:
            plan = sampler.plan_epoch(table, epoch=epoch, seed=seed)
        except laden.DataError:
            # A policy of "error" may refuse over-long samples, and only then.
            limit = getattr(sampler, "max_sample_length", None)
            assert limit is not None
            assert int(lengths.max()) > limit
            return
        _check_plan_invariants(sampler, table, plan)
        again = sampler.plan_epoch(table, epoch=epoch, seed=seed)
        assert plan.digest() == again.digest(), "same seed and epoch gave another plan"

    properties()

    empty = sampler.plan_epoch(laden.LengthTable.from_lengths(np.zeros(0, np.int64)))
    assert len(empty) == 0
    assert empty.order.size == 0
    one = sampler.plan_epoch(laden.LengthTable.from_lengths([5]))
    assert (len(one), one.order.tolist()) == (1, [0]) or one.dropped.tolist() == [0]

    if getattr(sampler, "shuffle", False):
        # Equal lengths: only the shuffle decides the order.
        table = laden.LengthTable.from_lengths(np.full(512, 7))
        first = sampler.plan_epoch(table, epoch=0, seed=1)
        second = sampler.plan_epoch(table, epoch=1, seed=1)
        assert not np.array_equal(first.order, second.order), "epochs repeat the same order"
        other_seed = sampler.plan_epoch(table, epoch=0, seed=2)
        assert not np.array_equal(first.order, other_seed.order), "seed is ignored"
        # Not seed + epoch: seed 1 epoch 1 must differ from seed 2 epoch 0.
        assert not np.array_equal(second.order, other_seed.order), "seed and epoch are added"


def _check_pack_invariants(packer: Any, table: Any, plan: Any) -> None:
    lengths = table.length
    max_length = packer.max_length
    dropped = np.asarray(plan.dropped)
    assert plan.pack_lengths.max(initial=0) <= max_length, "a pack is longer than max_length"
    assert (np.diff(plan.offsets) > 0).all(), "an empty pack"
    assert (plan.seg_length >= 0).all()
    # Every token of every kept sample is covered exactly once, unless the policy cut it.
    covered = np.bincount(plan.order, weights=plan.seg_length, minlength=lengths.size)
    kept = np.ones(lengths.size, dtype=bool)
    kept[dropped] = False
    assert not np.isin(plan.order, dropped).any(), "a dropped sample was packed"
    if packer.overflow in ("split", "drop", "error"):
        assert np.array_equal(covered[kept], lengths[kept]), "tokens lost or repeated"
    else:  # truncate
        assert np.array_equal(covered[kept], np.minimum(lengths, max_length)[kept])
    assert plan.report.get("dropped_samples", 0) == dropped.size, "drops are not reported"
    # Segments of one sample tile it without gaps: starts are 0, L, 2L, ...
    order = np.lexsort((plan.seg_start, plan.order))
    sample, start, seg = plan.order[order], plan.seg_start[order], plan.seg_length[order]
    first = np.ones(sample.size, dtype=bool)
    first[1:] = sample[1:] != sample[:-1]
    previous_end = np.zeros_like(start)
    previous_end[1:] = (start + seg)[:-1]
    expected = np.where(first, 0, previous_end)
    assert np.array_equal(start, expected), "segments of a sample overlap or leave gaps"
    cap = getattr(packer, "max_segments_per_pack", None)
    if cap is not None:
        assert np.diff(plan.offsets).max(initial=0) <= cap, "a pack has too many segments"


def check_packer(cls: type[Any], *, max_examples: int = 60, **config: Any) -> None:
    """Check that a packer class keeps the contract every packer must keep.

    Property-based (hypothesis): every sequence is placed exactly once, or
    split into segments that cover it exactly, or dropped/truncated and
    reported; no pack is longer than ``max_length``; no pack is empty; the same
    input gives the identical plan.

    :param cls: the packer class.
    :param config: its config fields (``max_length`` among them).
    """
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    import laden

    packer = cls(**config)
    top = 3 * packer.max_length

    @settings(
        max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(lengths=arrays(np.int64, st.integers(0, 200), elements=st.integers(0, top)))
    def properties(lengths: np.ndarray) -> None:
        table = laden.LengthTable.from_lengths(lengths)
        try:
            plan = packer.pack(table)
        except laden.DataError:
            assert packer.overflow == "error"
            assert int(lengths.max()) > packer.max_length
            return
        _check_pack_invariants(packer, table, plan)
        again = packer.pack(table)
        for name in ("order", "offsets", "seg_length", "seg_start"):
            assert np.array_equal(getattr(plan, name), getattr(again, name)), "not deterministic"

    properties()
    empty = packer.pack(laden.LengthTable.from_lengths(np.zeros(0, np.int64)))
    assert len(empty) == 0


def check_backend(cls: type[Any], *, max_examples: int = 40, **config: Any) -> None:
    """Check that a backend gives the same batch, value for value, as the ``numpy`` reference.

    Property-based (hypothesis): random samples (with and without loss masks)
    in padded and in packed layouts are collated by ``cls(**config)`` and by
    the numpy backend with the same collation settings; every column must
    have the same shape, the same values and the same dtype (integers in the
    configured width, ``int_dtype = "auto"`` resolving as numpy's does except
    for the backend's ``wide`` columns, which are int64; ``cu_seqlens`` int32,
    ``sample_ids`` int64, masks bool), and ``max_seqlen`` is a plain ``int``.

    :param cls: the backend class (a :class:`laden.collate.CollatingBackend`).
    :param config: its config fields.
    """
    import attrs
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    import laden
    from laden.collate import BatchLayout, Ragged
    from laden.plugins.backends.numpy import NumpyBackend
    from laden.plugins.packers.best_fit import BestFitPacker

    backend = cls(**config)
    fields = attrs.fields(NumpyBackend)
    shared = {f.name: getattr(backend, f.name) for f in fields if hasattr(backend, f.name)}
    reference = NumpyBackend(**shared)

    @settings(
        max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        lengths=st.lists(st.integers(0, 40), min_size=1, max_size=12),
        packed=st.booleans(),
        masked=st.booleans(),
        data=st.data(),
    )
    def properties(lengths: list[int], packed: bool, masked: bool, data: Any) -> None:
        rng = np.random.default_rng(sum(lengths))
        tokens = Ragged.from_sequences([rng.integers(1, 1000, n) for n in lengths])
        mask = Ragged(values=rng.random(tokens.values.size) < 0.7, offsets=tokens.offsets)
        if packed:
            width = data.draw(st.integers(max(max(lengths), 1), 64), label="max_length")
            plan = BestFitPacker(max_length=width).pack(
                laden.LengthTable.from_lengths(np.asarray(lengths))
            )
            layout = BatchLayout.packed(plan, np.arange(len(plan)))
        else:
            chosen = data.draw(st.permutations(range(len(lengths))), label="order")
            layout = BatchLayout.padded(np.asarray(chosen), tokens.lengths)
        want = reference.host(layout, tokens, loss_mask=mask if masked else None)
        got = backend.collate(layout, tokens, loss_mask=mask if masked else None)
        assert set(got) == set(want), f"columns differ: {sorted(got)} vs {sorted(want)}"
        for key, expected in want.items():
            value = backend.as_numpy(got[key])
            if isinstance(expected, int):
                assert isinstance(value, int), f"{key}: {value!r} is not an int"
                assert value == expected, f"{key}: {value!r}, not {expected!r}"
                continue
            assert value.shape == expected.shape, f"{key}: shape {value.shape}"
            dtype = np.dtype(np.int64) if key in getattr(backend, "wide", ()) else expected.dtype
            assert value.dtype == dtype, f"{key}: {value.dtype}, not {dtype}"
            assert np.array_equal(value, expected), f"{key}: values differ from numpy"

    properties()

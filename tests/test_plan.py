"""Batch plans: fingerprint, save/load, verify, shard, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import laden
import laden.plan.store
from laden.plan import BatchPlan
from laden.stateful import Stateful, check_state
from laden.testing import check_stateful, record_hooks

FIXTURE = Path(__file__).parent / "fixtures" / "plan-py310"


def peer_table(n: int = 20_000, seed: int = 0) -> laden.LengthTable:
    lengths = np.clip(np.random.default_rng(seed).lognormal(5.5, 0.9, n), 8, 4096)
    return laden.LengthTable.from_lengths(lengths.astype(np.int64))


def budget(kernel: laden.Kernel, tokens: int = 16384) -> Any:
    return kernel.create("sampler", {"name": "token_budget", "token_budget": tokens})


def units_of(plan: BatchPlan, epoch: int, *, with_padding: bool = False) -> np.ndarray:
    keep = np.repeat(~plan.padding[epoch] | with_padding, plan.epochs[epoch].batch_sizes)
    return plan.epochs[epoch].order[keep]


def test_build_covers_every_sample_each_epoch(kernel: laden.Kernel) -> None:
    table = peer_table()
    plan = BatchPlan.build(table, budget(kernel), epochs=3, seed=7)
    assert plan.num_epochs == 3
    assert plan.total_steps == sum(plan.steps) == sum(len(e) for e in plan.epochs)
    for e in range(3):
        assert np.array_equal(np.sort(units_of(plan, e)), np.arange(len(table)))
        assert plan.tokens[e] == table.num_tokens
    assert not np.array_equal(plan.epochs[0].order, plan.epochs[1].order)
    assert plan.config["seed"] == 7
    assert plan.config["sampler"]["token_budget"] == 16384


def test_fingerprint_is_stable_and_sensitive(kernel: laden.Kernel) -> None:
    table = peer_table(5_000)
    a = BatchPlan.build(table, budget(kernel), epochs=2, seed=1)
    b = BatchPlan.build(table, budget(kernel), epochs=2, seed=1)
    assert a.fingerprint == b.fingerprint
    assert BatchPlan.build(table, budget(kernel), epochs=2, seed=2).fingerprint != a.fingerprint
    assert BatchPlan.build(table, budget(kernel, 8192), epochs=2, seed=1).fingerprint != (
        a.fingerprint
    )
    other = laden.LengthTable.from_lengths(np.r_[table.length[:-1], table.length[-1] + 1])
    assert BatchPlan.build(other, budget(kernel), epochs=2, seed=1).fingerprint != a.fingerprint


def test_pinned_fingerprint(kernel: laden.Kernel) -> None:
    """The same inputs give this fingerprint on every Python and numpy of the matrix."""
    table = laden.LengthTable.from_lengths((np.arange(3_000) * 7919) % 2000 + 1)
    packer = kernel.create("packer", {"name": "best_fit", "max_length": 2048})
    plan = BatchPlan.build(table, budget(kernel, 8192), packer, epochs=2, seed=11)
    assert plan.fingerprint == "5ed45409079826c37b76e7d5210f9971"  # issue 16 (was dce064e5...)


def test_plan_made_on_python_310_loads_and_verifies(kernel: laden.Kernel) -> None:
    """tests/fixtures/plan-py310 was saved by Python 3.10 (see its meta.json)."""
    plan = BatchPlan.load(FIXTURE)
    table = laden.LengthTable.from_lengths((np.arange(3_000) * 7919) % 2000 + 1)
    assert plan.verify(table, kernel=kernel).ok
    meta = json.loads((FIXTURE / "meta.json").read_text())
    assert meta["made_on"].startswith("3.10")


def test_save_load_round_trip_and_size_budget(kernel: laden.Kernel, tmp_path: Path) -> None:
    table = peer_table(200_000)
    plan = BatchPlan.build(table, budget(kernel), epochs=2, seed=3)
    plan.save(tmp_path / "plan")
    loaded = BatchPlan.load(tmp_path / "plan")
    assert loaded.fingerprint == plan.fingerprint
    for a, b in zip(plan.epochs, loaded.epochs, strict=True):
        assert a.digest() == b.digest()
    assert loaded.tokens == plan.tokens
    size = sum(f.stat().st_size for f in (tmp_path / "plan").iterdir())
    assert size / (2 * len(table)) <= 4.5  # bytes per sample per epoch
    meta = json.loads((tmp_path / "plan" / "meta.json").read_text())
    assert meta["format_version"] == laden.plan.FORMAT_VERSION
    assert meta["fingerprint"] == plan.fingerprint
    assert all("blake2b" in info for info in meta["epochs"][0]["arrays"].values())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_damaged_plans_are_named(kernel: laden.Kernel, tmp_path: Path) -> None:
    plan = BatchPlan.build(peer_table(5_000), budget(kernel), epochs=1)
    root = plan.save(tmp_path / "plan")
    order = root / "epoch0000.order.zst"
    data = order.read_bytes()
    order.write_bytes(data[: len(data) // 2])
    with pytest.raises(laden.DataError, match=r"epoch0000\.order\.zst"):
        BatchPlan.load(root)
    plan.save(root)
    meta_path = root / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["seed"] = 99  # a hand edit: the arrays no longer match the fingerprint
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(laden.DataError, match=r"meta\.json.*altered"):
        BatchPlan.load(root)
    meta["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(laden.DataError, match="newer than this laden reads"):
        BatchPlan.load(root)
    (root / "meta.json").unlink()
    with pytest.raises(laden.DataError, match="missing file"):
        BatchPlan.load(root)


def test_verify_names_the_first_difference(kernel: laden.Kernel) -> None:
    table = peer_table(5_000)
    plan = BatchPlan.build(table, budget(kernel), epochs=2, seed=4)
    assert plan.verify(table, kernel=kernel)
    order = plan.epochs[1].order.copy()
    b = 5
    lo = plan.epochs[1].offsets[b]
    order[lo], order[lo + 1] = order[lo + 1], order[lo]
    tampered = BatchPlan(
        config=plan.config,
        table_digest=plan.table_digest,
        num_samples=plan.num_samples,
        num_units=plan.num_units,
        epochs=(
            plan.epochs[0],
            laden.EpochPlan(
                order=order,
                offsets=plan.epochs[1].offsets,
                max_length=plan.epochs[1].max_length,
                bucket=plan.epochs[1].bucket,
                epoch=1,
                seed=4,
            ),
        ),
        batch_tokens=plan.batch_tokens,
    )
    assert plan.epochs[1].batch_sizes[b] > 1  # so the swap changes the batch
    check = tampered.verify(table, kernel=kernel)
    assert not check.ok
    assert (check.epoch, check.batch) == (1, b)
    wrong_table = peer_table(5_000, seed=1)
    check = plan.verify(wrong_table, kernel=kernel)
    assert not check.ok
    assert "length table differs" in check.reason


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 400),
    world_size=st.integers(1, 6),
    remainder=st.sampled_from(["pad", "drop"]),
    seed=st.integers(0, 3),
)
def test_shards_are_disjoint_and_in_step(
    n: int, world_size: int, remainder: str, seed: int
) -> None:
    kernel = laden.Kernel(autoload=False)
    table = laden.LengthTable.from_lengths(np.random.default_rng(seed).integers(1, 300, n))
    plan = BatchPlan.build(table, budget(kernel, 1024), epochs=2, seed=seed)
    shards = [plan.shard(r, world_size, remainder=remainder) for r in range(world_size)]
    for e in range(2):
        steps = {len(s.epochs[e]) for s in shards}
        assert len(steps) == 1, "ranks disagree on the number of steps"
        real = np.concatenate([units_of(s, e) for s in shards])
        assert np.unique(real).size == real.size, "a sample on two ranks"
        batches = len(plan.epochs[e])
        dropped = shards[0].shard_report["dropped_samples"][e]
        if remainder == "pad":
            assert steps == {-(-batches // world_size)}
            assert np.array_equal(np.sort(real), np.arange(n))
            assert dropped == 0
        else:
            assert steps == {batches // world_size}
            assert real.size + dropped == n
        # Padding batches repeat real batches.
        for s in shards:
            repeated = units_of(s, e, with_padding=True)
            assert np.isin(repeated, units_of(plan, e)).all()
    again = plan.shard(0, world_size, remainder=remainder)
    assert again.fingerprint == shards[0].fingerprint


def test_shards_balance_token_cost_per_step(kernel: laden.Kernel) -> None:
    table = peer_table(50_000)
    plan = BatchPlan.build(
        table,
        kernel.create(
            "sampler",
            {"name": "token_budget", "token_budget": 16384, "bucket_edges": [256, 512, 1024]},
        ),
        seed=1,
    )
    shards = [plan.shard(r, 4) for r in range(4)]
    cost = np.stack([s.epochs[0].batch_sizes * s.epochs[0].max_length for s in shards])
    spread = (cost.max(axis=0) - cost.min(axis=0)) / cost.max(axis=0)
    assert float(np.median(spread)) < 0.05
    # A naive round-robin deal of the plan's (shuffled) batches is far less even.
    naive = plan.epochs[0].batch_sizes * plan.epochs[0].max_length
    naive = naive[: naive.size // 4 * 4].reshape(-1, 4)
    naive_spread = (naive.max(axis=1) - naive.min(axis=1)) / naive.max(axis=1)
    assert float(np.median(naive_spread)) > 2 * float(np.median(spread))
    assert shards[0].shard_report["step_imbalance"][0] < 0.1


def test_resume_anywhere(kernel: laden.Kernel) -> None:
    plan = BatchPlan.build(peer_table(3_000), budget(kernel), epochs=2, seed=2)
    everything = [(e, s, spec.indices.tolist()) for e, s, spec in plan.iter_from()]
    assert len(everything) == plan.total_steps
    assert [(e, s, spec.indices.tolist()) for e, s, spec in plan] == everything  # pure
    cut = len(plan.epochs[0]) + 3
    cursor = plan.cursor()
    it = iter(cursor)
    first = [next(it) for _ in range(cut)]
    state = cursor.state_dict()
    assert (state["epoch"], state["step"]) == (1, 3)
    assert len(cursor) == plan.total_steps - cut
    fresh = BatchPlan.build(peer_table(3_000), budget(kernel), epochs=2, seed=2).cursor()
    fresh.load_state_dict(json.loads(json.dumps(state)))
    rest = [(e, s, spec.indices.tolist()) for e, s, spec in fresh]
    assert [(e, s, spec.indices.tolist()) for e, s, spec in first] + rest == everything
    assert fresh.position == (1, len(plan.epochs[1]))
    assert len(fresh) == 0
    assert next(iter(plan.iter_from(1, 3)))[:2] == (1, 3)
    other = BatchPlan.build(peer_table(3_000), budget(kernel), epochs=2, seed=3).cursor()
    with pytest.raises(laden.DataError, match="belongs to plan"):
        other.load_state_dict(state)


def test_a_plan_is_a_frozen_record_with_many_cursors(kernel: laden.Kernel) -> None:
    plan = BatchPlan.build(peer_table(2_000), budget(kernel), epochs=2, seed=4)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        plan.rank = 3  # type: ignore[misc]
    one, two = plan.cursor(), plan.cursor(1, 2)
    next(iter(one))
    assert one.position == (0, 1)
    assert two.position == (1, 2)
    # The end of an epoch and the start of the next are the same point of the plan.
    end = plan.cursor(0, len(plan.epochs[0]))
    assert next(iter(end))[:2] == (1, 0)
    assert end.advance() == (1, 1)
    assert end.position == (1, 2)
    with pytest.raises(ValueError, match="out of range"):
        plan.cursor(0, len(plan.epochs[0]) + 1)
    last = plan.cursor(plan.num_epochs, 0)
    assert list(last) == []
    with pytest.raises(IndexError, match="finished"):
        last.advance()


def test_the_plan_cursor_is_stateful(kernel: laden.Kernel) -> None:
    plan = BatchPlan.build(peer_table(2_000), budget(kernel), epochs=2, seed=5)
    cursor = plan.cursor()
    assert isinstance(cursor, Stateful)
    check_stateful(plan.cursor, cuts=(0, 1, len(plan.epochs[0]), len(plan.epochs[0]) + 2))
    # A shard's state fits no other shard, nor the full plan; a position it does not have fits
    # nowhere; each error says what the state is and what the plan holds.
    shards = [plan.shard(rank, 2) for rank in range(2)]
    state = shards[0].cursor(0, 1).state_dict()
    with pytest.raises(
        laden.DataError, match=r"\(rank 0\) does not fit: this plan is rank 1 of 2 with 2 epochs"
    ):
        shards[1].cursor().load_state_dict({**state, "fingerprint": shards[1].fingerprint})
    with pytest.raises(laden.DataError, match="belongs to plan"):
        plan.cursor().load_state_dict(state)
    with pytest.raises(
        laden.DataError, match=r"\(step 99\) does not fit: epoch 0 .* has \d+ steps"
    ):
        shards[0].cursor().load_state_dict({**state, "step": 99})
    with pytest.raises(laden.DataError, match=r"\(epoch -1\) does not fit"):
        shards[0].cursor().load_state_dict({**state, "epoch": -1})
    with pytest.raises(laden.DataError, match=r"not a laden\.plan\.cursor state"):
        shards[0].cursor().load_state_dict({**state, "kind": "laden.batch_reader"})


def test_check_state_names_what_does_not_fit() -> None:
    state = {"kind": "laden.thing", "fingerprint": "a", "rank": 1, "step": 5}
    assert check_state(state, kind="laden.thing", fingerprint="a") is state
    with pytest.raises(laden.DataError, match="must be a mapping, got list"):
        check_state([state], kind="laden.thing")
    with pytest.raises(
        laden.DataError,
        match=r"the state \(rank 1, step 5\) does not fit: "
        r"this laden.thing needs rank 0, step in 0..4",
    ):
        check_state(state, kind="laden.thing", fits={"rank": 0}, within={"step": (0, 4)})
    with pytest.raises(laden.DataError, match=r"state.json: .*step 'x'"):
        check_state(
            {**state, "step": "x"}, kind="laden.thing", within={"step": (0, 9)}, where="state.json"
        )


def test_packed_plans_and_config_files(kernel: laden.Kernel, tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        "seed = 3\nepochs = 2\n[sampler]\nname = 'token_budget'\ntoken_budget = 16384\n"
        "[packer]\nname = 'best_fit'\nmax_length = 4096\n"
    )
    table = peer_table(10_000)
    plan = BatchPlan.from_config(table, laden.load_config(config, kernel=kernel), kernel=kernel)
    assert plan.pack is not None
    assert plan.num_units == len(plan.pack)
    assert plan.tokens == [table.num_tokens] * 2
    plan.save(tmp_path / "plan")
    assert BatchPlan.load(tmp_path / "plan").verify(table, kernel=kernel).ok
    with pytest.raises(laden.ConfigError, match=r"sampler\.token_budget: must be > 0"):
        BatchPlan.from_config(
            table, {"sampler": {"name": "token_budget", "token_budget": -1}}, kernel=kernel
        )


def test_build_announces_the_plan(kernel: laden.Kernel) -> None:
    with record_hooks(kernel) as seen:
        plan = BatchPlan.build(peer_table(1_000), budget(kernel), epochs=2, kernel=kernel)
    assert seen.plans == [plan]


def test_saving_does_not_lose_an_existing_plan_on_failure(
    kernel: laden.Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = BatchPlan.build(peer_table(1_000), budget(kernel), epochs=1)
    root = plan.save(tmp_path / "plan")
    before = sorted(os.listdir(root))

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(laden.plan.store, "write_json", full)
    with pytest.raises(OSError, match="No space left"):
        BatchPlan.build(peer_table(1_000), budget(kernel), epochs=2).save(root)
    assert sorted(os.listdir(root)) == before
    assert BatchPlan.load(root).fingerprint == plan.fingerprint

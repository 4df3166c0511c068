"""The stream record (SampleChunk) and the ReplayBuffer."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from laden.errors import ConfigError, DataError
from laden.plugins.tokenizers.bytes import BytesTokenizer
from laden.stream import ReplayBuffer, SampleChunk
from laden.stream.sumtree import SumTree


def make_samples(
    n: int, seed: int = 0, *, start: int = 0, max_len: int = 20
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        length = int(rng.integers(1, max_len + 1))
        out.append(
            {
                "input_ids": rng.integers(0, 1000, length).astype(np.int32),
                "sample_id": i,
                "episode_id": i // 4,
                "step_index": i % 4,
                "difficulty": float(rng.random()),
                "success": [None, True, False][i % 3],
                "reward": float(rng.normal()),
                "source": "a" if i % 2 else "b",
                "meta": {"i": i} if i % 5 == 0 else {},
            }
        )
    return out


def stored(buffer: ReplayBuffer) -> dict[int, dict[str, Any]]:
    """Sample id -> the sample as the buffer gives it back (tokens gathered)."""
    table, tokens, _ = buffer.snapshot()
    chunk = buffer.get(buffer.sample(0))  # an empty read works
    assert len(chunk) == 0
    assert table.ids is not None
    return {int(table.ids[i]): {"input_ids": tokens[i]} for i in range(len(table))}


# ----------------------------------------------------------------- SampleChunk


def test_sample_chunk_columns_and_defaults() -> None:
    chunk = SampleChunk.from_samples(
        [
            {"input_ids": [1, 2, 3], "sample_id": 7, "meta": {"k": [1, 2]}, "source": "x"},
            {"input_ids": np.array([4], dtype=np.int64), "success": True, "difficulty": 0.5},
        ]
    )
    assert len(chunk) == 2
    assert chunk.num_tokens == 4
    assert chunk.tokens.dtype == np.int32
    assert chunk.offsets.tolist() == [0, 3, 4]
    assert chunk.sample_id.tolist() == [7, -1]
    assert chunk.episode_id.tolist() == [-1, -1]
    assert chunk.success.tolist() == [-1, 1]
    assert chunk.difficulty.dtype == np.float32
    assert chunk.meta(0) == {"k": [1, 2]}
    assert chunk.meta(1) == {}
    assert chunk.source_name(0) == "x"
    assert chunk.source_name(1) == ""
    back = chunk.sample(0)
    assert back["input_ids"].tolist() == [1, 2, 3]
    assert back["success"] is None
    assert chunk.loss_mask is None


def test_text_and_prompt_completion_are_tokenized_with_a_mask() -> None:
    chunk = SampleChunk.from_samples(
        [{"text": "hé"}, {"prompt": "ab", "completion": "cd"}, {"input_ids": [9]}],
        tokenizer=BytesTokenizer(),
    )
    assert chunk.lengths.tolist() == [3, 4, 1]
    assert chunk.tokens[3:7].tolist() == [97, 98, 99, 100]
    assert chunk.loss_mask is not None
    assert chunk.loss_mask.tolist() == [1, 1, 1, 0, 0, 1, 1, 1]


@pytest.mark.parametrize(
    ("sample", "tokenizer", "message"),
    [
        ({"reward": 1.0}, None, "none of input_ids, text"),
        ({"text": "abc"}, None, "no tokenizer"),
        ({"input_ids": [1, 2], "loss_mask": [1]}, None, "loss_mask has 1 values"),
        ({"input_ids": [[1, 2]]}, None, "1-D integer"),
        ({"input_ids": [1.5]}, None, "1-D integer"),
        ({"input_ids": [1], "difficulty": 2.0}, None, "difficulty must be in 0..1"),
        ({"input_ids": [-1]}, None, r"token id -1 is not in"),
        ({"input_ids": [1], "meta": {"x": object()}}, None, "not JSON-able"),
        ({"input_ids": [1], "reward": "high"}, None, "wrong type"),
        ({"prompt": 1, "completion": "x"}, BytesTokenizer(), "must both be strings"),
    ],
)
def test_bad_samples_are_data_errors_naming_the_sample(
    sample: dict[str, Any], tokenizer: Any, message: str
) -> None:
    good = {"input_ids": [1]}
    with pytest.raises(DataError, match=message) as info:
        SampleChunk.from_samples([good, sample], tokenizer=tokenizer, where="feed")
    assert "feed" in str(info.value)


def test_chunk_take_concatenate_and_digest() -> None:
    chunk = SampleChunk.from_samples(make_samples(10))
    part = chunk.take([3, 1])
    assert part.sample_id.tolist() == [3, 1]
    assert part.tokens.tolist() == chunk.tokens[chunk.offsets[3] : chunk.offsets[4]].tolist() + (
        chunk.tokens[chunk.offsets[1] : chunk.offsets[2]].tolist()
    )
    both = SampleChunk.concatenate([chunk.take(range(5)), chunk.take(range(5, 10))])
    assert both.digest() == chunk.digest()
    assert chunk.take([0, 1]).digest() != chunk.take([1, 0]).digest()


# ------------------------------------------------------------------ SumTree


def test_sum_tree_sets_draws_and_grows() -> None:
    tree = SumTree(5)
    tree.set(np.arange(5), np.array([0.0, 1.0, 0.0, 3.0, 0.0]))
    assert tree.total == 4.0
    slots = tree.draw(np.random.default_rng(0), 4000)
    assert set(slots.tolist()) == {1, 3}
    assert abs((slots == 3).mean() - 0.75) < 0.03
    tree.grow(100)
    assert tree.total == 4.0
    assert tree.leaves[3] == 3.0
    tree.set(np.array([3, 3]), np.array([1.0, 2.0]))  # the later duplicate wins
    assert tree.total == 3.0


# ------------------------------------------------------------------- bounds

POLICIES = ["fifo", "priority", "random", "reservoir"]


@settings(max_examples=40, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    capacity=st.integers(1, 30),
    max_tokens=st.one_of(st.none(), st.integers(20, 200)),
    ops=st.lists(st.tuples(st.booleans(), st.integers(1, 25)), min_size=1, max_size=12),
    flush_every=st.integers(1, 9),
    seed=st.integers(0, 3),
)
def test_bounds_hold_and_contents_are_exact_under_any_add_sequence(
    policy: str,
    capacity: int,
    max_tokens: int | None,
    ops: list[tuple[bool, int]],
    flush_every: int,
    seed: int,
) -> None:
    buffer = ReplayBuffer(
        capacity,
        max_tokens=max_tokens,
        eviction=policy,
        seed=seed,
        flush_every=flush_every,
        page_tokens=64,
    )
    samples: list[dict[str, Any]] = []
    for bulk, n in ops:
        new = make_samples(n, seed, start=len(samples))
        samples += new
        if bulk:
            buffer.add_chunk(SampleChunk.from_samples(new))
        else:
            buffer.extend(new)
        stats = buffer.stats()
        assert stats["size"] <= capacity
        assert max_tokens is None or stats["tokens"] <= max_tokens
        assert stats["size"] + stats["evictions"] + stats["rejected"] == len(samples)
        assert stats["adds"] == len(samples)
    got = stored(buffer)
    for sid, sample in got.items():
        assert sample["input_ids"].tolist() == samples[sid]["input_ids"].tolist()
    assert sum(len(s["input_ids"]) for s in got.values()) == buffer.num_tokens
    if policy == "fifo":  # the newest samples that fit
        ids = sorted(got)
        assert ids == list(range(len(samples) - len(ids), len(samples)))


def test_fifo_with_a_token_bound_keeps_the_newest_that_fit() -> None:
    buffer = ReplayBuffer(100, max_tokens=10)
    buffer.extend({"input_ids": [1] * n, "sample_id": i} for i, n in enumerate([4, 3, 5, 2]))
    assert buffer.snapshot().table.ids.tolist() == [1, 2, 3]  # 3 + 5 + 2 <= 10 < 4 + 3 + 5 + 2
    buffer.add({"input_ids": [1] * 11, "sample_id": 9})  # alone over the bound: never stored
    assert len(buffer) == 3
    assert buffer.stats()["rejected"] == 2
    buffer.extend({"input_ids": [1] * 4, "sample_id": 10 + i} for i in range(3))
    assert buffer.snapshot().table.ids.tolist() == [11, 12]  # 3 x 4 > 10: the oldest go


def test_priority_eviction_removes_the_lowest_priority_first() -> None:
    buffer = ReplayBuffer(3, eviction="priority", flush_every=1)
    for i, d in enumerate([0.5, 0.1, 0.9, 0.3, 0.05]):
        buffer.add({"input_ids": [i], "sample_id": i, "difficulty": d})
    assert sorted(buffer.snapshot().table.ids.tolist()) == [0, 2, 3]
    buffer.update_priorities([2], [0.0])  # now the lowest
    buffer.add({"input_ids": [5], "sample_id": 5, "difficulty": 0.4})
    assert sorted(buffer.snapshot().table.ids.tolist()) == [0, 3, 5]


def test_reservoir_keeps_a_uniform_sample_of_everything_added() -> None:
    means = []
    for seed in range(20):
        buffer = ReplayBuffer(100, eviction="reservoir", seed=seed)
        buffer.add_chunk(SampleChunk.from_samples(make_samples(2000, seed, max_len=2)))
        ids = buffer.snapshot().table.ids
        assert len(ids) == 100
        assert len(set(ids.tolist())) == 100
        means.append(ids.mean())
    # Uniform over 0..1999: mean 999.5, sd of a 100-sample mean ~ 58; of 20 such ~ 13.
    assert abs(np.mean(means) - 999.5) < 60


def test_random_eviction_is_seeded() -> None:
    def ids(seed: int) -> list[int]:
        buffer = ReplayBuffer(50, eviction="random", seed=seed, flush_every=7)
        buffer.extend(make_samples(300))
        return sorted(buffer.snapshot().table.ids.tolist())

    assert ids(1) == ids(1)
    assert ids(1) != ids(2)


def test_compaction_bounds_memory_under_random_eviction() -> None:
    buffer = ReplayBuffer(
        200, eviction="random", page_tokens=256, slack=0.25, flush_every=16, seed=3
    )
    samples = make_samples(5000, 1, max_len=30)
    buffer.extend(samples)
    stats = buffer.stats()
    arena = buffer._tokens
    assert arena.garbage <= max(0.25 * arena.live_total, arena.page_size) + arena.page_size
    assert arena.num_pages * arena.page_size <= 1.25 * stats["tokens"] + 4 * arena.page_size
    for sid, sample in stored(buffer).items():
        assert sample["input_ids"].tolist() == samples[sid]["input_ids"].tolist()


def test_a_sample_longer_than_a_page_names_the_setting() -> None:
    buffer = ReplayBuffer(10, page_tokens=64)
    with pytest.raises(DataError, match="page_tokens"):
        buffer.add_chunk(SampleChunk.from_samples([{"input_ids": np.zeros(65, np.int32)}]))


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"capacity": 0}, "capacity"),
        ({"capacity": 5, "eviction": "lifo"}, "eviction"),
        ({"capacity": 5, "page_tokens": 100}, "page_tokens"),
        ({"capacity": 5, "max_tokens": -1}, "max_tokens"),
        ({"capacity": 5, "alpha": -1.0}, "alpha"),
    ],
)
def test_bad_settings_are_config_errors(settings: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError, match=path):
        ReplayBuffer(**settings)


# ------------------------------------------------------------------ sampling


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 120),
    k=st.integers(1, 40),
    prioritized=st.booleans(),
    min_difficulty=st.one_of(st.none(), st.floats(0, 0.9)),
    success=st.one_of(st.none(), st.booleans()),
    seed=st.integers(0, 5),
)
def test_a_pass_without_replacement_returns_every_eligible_sample_once(
    n: int,
    k: int,
    prioritized: bool,
    min_difficulty: float | None,
    success: bool | None,
    seed: int,
) -> None:
    samples = make_samples(n, seed)
    buffer = ReplayBuffer(n, seed=seed, flush_every=5)
    buffer.extend(samples)
    expected = [
        s["sample_id"]
        for s in samples
        if (min_difficulty is None or np.float32(s["difficulty"]) >= min_difficulty)
        and (success is None or s["success"] is success)
    ]
    seen: list[int] = []
    for _ in range(n + 2):
        draw = buffer.sample(
            k,
            replace=False,
            prioritized=prioritized,
            min_difficulty=min_difficulty,
            success=success,
        )
        seen += draw.sample_id.tolist()
        if draw.end_of_pass:
            break
    assert sorted(seen) == sorted(expected)
    assert len(seen) == len(set(seen))
    # The next pass starts afresh, in another seeded order.
    again = buffer.sample(
        len(expected) + 1,
        replace=False,
        prioritized=prioritized,
        min_difficulty=min_difficulty,
        success=success,
    )
    assert sorted(again.sample_id.tolist()) == sorted(expected)


def test_a_pass_skips_evicted_samples_and_leaves_new_ones_for_the_next() -> None:
    buffer = ReplayBuffer(10, flush_every=1)
    buffer.extend(make_samples(10))
    first = buffer.sample(4, replace=False).sample_id.tolist()
    buffer.extend(make_samples(3, start=10))  # evicts 0, 1, 2 (fifo)
    rest: list[int] = []
    while True:
        draw = buffer.sample(4, replace=False)
        rest += draw.sample_id.tolist()
        if draw.end_of_pass:
            break
    assert not set(rest) & {0, 1, 2, 10, 11, 12}
    assert sorted(first + rest) == sorted(set(first) | (set(range(3, 10))))
    assert set(buffer.sample(20, replace=False).sample_id.tolist()) == set(range(3, 13))


def test_same_seed_same_draws_other_seed_other_draws() -> None:
    def draws(seed: int) -> list[list[int]]:
        buffer = ReplayBuffer(500, seed=seed)
        buffer.extend(make_samples(400))
        out = [
            buffer.sample(16).sample_id.tolist(),
            buffer.sample(16, prioritized=True).sample_id.tolist(),
        ]
        out.append(buffer.sample(16, replace=False, prioritized=True).sample_id.tolist())
        return out

    assert draws(4) == draws(4)
    assert draws(4) != draws(5)


def test_prioritized_frequencies_follow_priorities() -> None:
    buffer = ReplayBuffer(8, alpha=1.0, epsilon=0.0, seed=11)
    difficulty = [0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0]
    buffer.extend(
        {"input_ids": [i], "sample_id": i, "difficulty": d} for i, d in enumerate(difficulty)
    )
    counts = np.bincount(
        np.concatenate([buffer.sample(256, prioritized=True).sample_id for _ in range(100)]),
        minlength=8,
    )
    expected = np.asarray(difficulty, dtype=np.float32) / np.float32(sum(difficulty)) * counts.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 24.3  # 7 degrees of freedom, p = 0.001
    uniform = np.bincount(
        np.concatenate([buffer.sample(256).sample_id for _ in range(50)]), minlength=8
    )
    assert float(((uniform - 1600) ** 2 / 1600).sum()) < 24.3


def test_alpha_flattens_priorities_and_updates_change_them() -> None:
    buffer = ReplayBuffer(2, alpha=0.0, seed=0)
    buffer.extend(
        [
            {"input_ids": [1], "sample_id": 0, "difficulty": 0.01},
            {"input_ids": [1], "sample_id": 1, "difficulty": 1.0},
        ]
    )
    share = buffer.sample(4000, prioritized=True).sample_id.mean()
    assert abs(share - 0.5) < 0.05  # alpha 0: every weight is 1
    buffer2 = ReplayBuffer(2, seed=0, epsilon=0.0)
    buffer2.extend(
        [
            {"input_ids": [1], "sample_id": 0, "difficulty": 0.5},
            {"input_ids": [1], "sample_id": 1, "difficulty": 0.5},
        ]
    )
    draw = buffer2.sample(8, prioritized=True)
    assert buffer2.update_priorities(draw, np.where(draw.sample_id == 0, 0.0, 1.0)) == 8
    assert set(buffer2.sample(200, prioritized=True).sample_id.tolist()) == {1}
    assert buffer2.update_priorities([0, 7], [1.0, 1.0]) == 1  # id 7 is not stored
    assert set(buffer2.sample(200, prioritized=True).sample_id.tolist()) == {0, 1}
    with pytest.raises(ConfigError, match="finite"):
        buffer2.update_priorities([0], [float("nan")])


def test_updates_through_a_stale_draw_are_skipped() -> None:
    buffer = ReplayBuffer(2, flush_every=1)
    buffer.extend(make_samples(2))
    draw = buffer.sample(2)
    buffer.extend(make_samples(2, start=2))  # both slots now hold other samples
    assert buffer.update_priorities(draw, [1.0, 1.0]) == 0


def test_filters_are_respected_with_and_without_priorities() -> None:
    buffer = ReplayBuffer(300, seed=2)
    buffer.extend(make_samples(300, 2))
    for prioritized in (False, True):
        draw = buffer.sample(500, prioritized=prioritized, min_difficulty=0.8, success=True)
        chunk = buffer.get(draw)
        assert (chunk.difficulty >= 0.8).all()
        assert (chunk.success == 1).all()
    # A rare filter still draws exactly (the fallback path).
    rare = buffer.sample(50, min_difficulty=0.995)
    assert (buffer.get(rare).difficulty >= 0.995).all()
    with pytest.raises(DataError, match="no stored sample passes"):
        buffer.sample(1, min_difficulty=1.0, success=False)


def test_sampling_an_empty_buffer_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="empty"):
        ReplayBuffer(3).sample(1)


# ------------------------------------------------------------------ snapshot


def test_snapshot_is_in_add_order_with_ids_and_masks() -> None:
    buffer = ReplayBuffer(10, eviction="random", seed=1, flush_every=3)
    buffer.extend(make_samples(6))
    with pytest.raises(DataError, match="no tokenizer"):  # checked at once, not at a flush
        buffer.add({"prompt": "ab", "completion": "c", "sample_id": 6})
    table, tokens, mask = buffer.snapshot(last=3)
    assert table.ids.tolist() == [3, 4, 5]
    assert tokens[0].tolist() == make_samples(6)[3]["input_ids"].tolist()
    assert mask is None


def test_snapshot_carries_loss_masks_once_any_sample_has_one() -> None:
    buffer = ReplayBuffer(10, tokenizer=BytesTokenizer())
    buffer.add({"input_ids": [5, 6], "sample_id": 0})
    buffer.add({"prompt": "ab", "completion": "c", "sample_id": 1})
    table, _tokens, mask = buffer.snapshot()
    assert table.length.tolist() == [2, 3]
    assert mask is not None
    assert mask[0].tolist() == [1, 1]
    assert mask[1].tolist() == [0, 0, 1]
    sub = buffer.snapshot(seq_range=(1, 2))
    assert sub.table.ids.tolist() == [1]


def test_stats_report_what_the_buffer_holds() -> None:
    buffer = ReplayBuffer(4)
    buffer.extend(
        {"input_ids": [1, 2], "difficulty": d, "success": s, "source": "m"}
        for d, s in [(0.2, True), (0.4, False), (0.6, None), (0.8, True), (1.0, True)]
    )
    stats = buffer.stats()
    assert stats["size"] == 4
    assert stats["tokens"] == 8
    # Staged together, the oldest never entered: counted as rejected, not evicted.
    assert stats["evictions"] + stats["rejected"] == 1
    assert stats["adds"] == 5
    assert stats["mean_difficulty"] == pytest.approx(0.7)
    assert stats["success_rate"] == pytest.approx(2 / 3)
    assert stats["sources"] == ["m"]
    assert stats["nbytes"] > stats["token_bytes"] == 32


# ------------------------------------------------------------------ threads


def test_concurrent_adds_from_threads_keep_counts_right() -> None:
    buffer = ReplayBuffer(100_000, flush_every=64)
    per_thread = 2000

    def collect(t: int) -> None:
        for i in range(per_thread):
            buffer.add({"input_ids": [t, i], "sample_id": t * per_thread + i})

    threads = [threading.Thread(target=collect, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    table, tokens, _ = buffer.snapshot()
    assert len(table) == 6 * per_thread
    assert buffer.stats()["adds"] == 6 * per_thread
    assert sorted(table.ids.tolist()) == list(range(6 * per_thread))
    pairs = tokens.values.reshape(-1, 2)
    assert (pairs[:, 0] * per_thread + pairs[:, 1] == table.ids).all()


def test_wait_for_adds_times_out_and_wakes() -> None:
    buffer = ReplayBuffer(10)
    assert buffer.wait_for_adds(1, timeout=0.01) is False
    timer = threading.Timer(0.05, buffer.add, args=({"input_ids": [1]},))
    timer.start()
    assert buffer.wait_for_adds(1, timeout=10) is True
    timer.join()


# ------------------------------------------------------------------ save/load


def filled(policy: str = "priority") -> ReplayBuffer:
    buffer = ReplayBuffer(60, eviction=policy, seed=5, flush_every=7, tokenizer=BytesTokenizer())
    buffer.extend(make_samples(100))
    buffer.add({"prompt": "q", "completion": "a", "sample_id": 100, "meta": {"why": "mask"}})
    buffer.sample(5, replace=False)  # a pass in progress
    buffer.update_priorities([99, 98], [0.7, 0.1])
    return buffer


@pytest.mark.parametrize("policy", POLICIES)
def test_save_load_round_trip_is_identical(tmp_path: Path, policy: str) -> None:
    buffer = filled(policy)
    buffer.save(tmp_path / "buf")
    meta = json.loads((tmp_path / "buf" / "meta.json").read_text())
    assert meta["kind"] == "laden.replay_buffer"
    assert meta["format_version"] == 1
    loaded = ReplayBuffer.load(tmp_path / "buf", tokenizer=BytesTokenizer())
    assert loaded.stats() == buffer.stats()
    a, b = buffer.snapshot(), loaded.snapshot()
    assert a.table.digest() == b.table.digest()
    assert np.array_equal(a.tokens.values, b.tokens.values)
    assert (a.loss_mask is None) == (b.loss_mask is None)
    if a.loss_mask is not None and b.loss_mask is not None:
        assert np.array_equal(a.loss_mask.values, b.loss_mask.values)
    assert buffer.get(buffer.sample(0)).digest() == loaded.get(loaded.sample(0)).digest()
    # The future is the same: draws, the pass in progress, evictions.
    assert buffer.sample(9, prioritized=True).sample_id.tolist() == (
        loaded.sample(9, prioritized=True).sample_id.tolist()
    )
    assert buffer.sample(7, replace=False).sample_id.tolist() == (
        loaded.sample(7, replace=False).sample_id.tolist()
    )
    more = make_samples(30, 9, start=200)
    buffer.extend(more)
    loaded.extend(more)
    assert buffer.snapshot().table.digest() == loaded.snapshot().table.digest()
    # state_dict / load_state_dict do the same in memory.
    other = ReplayBuffer(config=buffer.config, tokenizer=BytesTokenizer())
    other.load_state_dict(buffer.state_dict())
    assert other.snapshot().table.digest() == buffer.snapshot().table.digest()


def test_a_damaged_saved_file_is_a_data_error_naming_it(tmp_path: Path) -> None:
    filled().save(tmp_path / "buf")
    target = tmp_path / "buf" / "tokens.zst"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"tokens\.zst"):
        ReplayBuffer.load(tmp_path / "buf")
    (tmp_path / "buf" / "reward.zst").unlink()
    with pytest.raises(DataError, match=r"reward\.zst|tokens\.zst"):
        ReplayBuffer.load(tmp_path / "buf")


def test_load_refuses_other_kinds_and_newer_versions(tmp_path: Path) -> None:
    filled().save(tmp_path / "buf")
    meta_path = tmp_path / "buf" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(DataError, match="format_version 99"):
        ReplayBuffer.load(tmp_path / "buf")
    meta_path.write_text(json.dumps({**meta, "kind": "laden.plan"}))
    with pytest.raises(DataError, match="not a saved replay buffer"):
        ReplayBuffer.load(tmp_path / "buf")
    meta_path.write_text("{not json")
    with pytest.raises(DataError, match=r"meta\.json"):
        ReplayBuffer.load(tmp_path / "buf")


def test_save_never_replaces_what_laden_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="choose a new or empty directory"):
        filled().save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    filled().save(tmp_path / "buf")
    filled("fifo").save(tmp_path / "buf")  # a saved buffer is replaced
    assert ReplayBuffer.load(tmp_path / "buf", tokenizer=BytesTokenizer()).config.eviction == "fifo"


def test_a_state_of_another_config_is_refused() -> None:
    state = filled().state_dict()
    with pytest.raises(DataError, match="configured"):
        ReplayBuffer(10).load_state_dict(state)


def test_gathering_many_scattered_samples_is_exact() -> None:
    # More runs than the slice-by-slice path takes: the token-by-token gather.
    buffer = ReplayBuffer(6000, eviction="random", page_tokens=1024, seed=8, flush_every=999)
    samples = make_samples(9000, 4, max_len=6)
    buffer.extend(samples)
    table, tokens, _ = buffer.snapshot()
    draw = buffer.sample(5000)
    chunk = buffer.get(draw)
    for i in range(0, len(table), 7):
        assert tokens[i].tolist() == samples[int(table.ids[i])]["input_ids"].tolist()
    for i in range(0, len(chunk), 7):
        got = chunk.tokens[chunk.offsets[i] : chunk.offsets[i + 1]]
        assert got.tolist() == samples[int(chunk.sample_id[i])]["input_ids"].tolist()

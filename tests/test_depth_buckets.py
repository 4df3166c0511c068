"""Staged samples: the staged HDF5 source, the depth_buckets sampler, staged collation."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import laden
from laden.collate import StagedBatch, collate_staged
from laden.contrib.depth_buckets import DepthBucketSampler, cut_padded, padded_tokens
from laden.errors import ConfigError, DataError
from laden.plan import BatchPlan
from laden.testing import check_sampler

h5py = pytest.importorskip("h5py", reason="the h5 extra is not installed")

from laden.contrib.staged_h5 import StagedH5Source, StagedSamples, write_staged_h5  # noqa: E402

WORKER = Path(__file__).parent / "fixtures" / "staged_worker.py"


def make_samples(n: int, seed: int = 0, features: int = 16) -> list[dict[str, Any]]:
    """Depths 0-3 (1-4 stages), 20-60 steps per stage, ``features`` state features."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        steps = rng.integers(20, 61, int(rng.integers(0, 4)) + 1)
        samples.append(
            {
                "states": [rng.random((t, features), dtype=np.float32) for t in steps],
                "actions": [rng.integers(0, 5, t) for t in steps],
                "rewards": [rng.random(t, dtype=np.float32) for t in steps],
            }
        )
    return samples


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("staged")
    samples = make_samples(120, seed=3)
    path = write_staged_h5(root / "data.h5", samples)
    source = StagedH5Source(path=path)
    table = source.length_table()
    plan = BatchPlan.build(table, DepthBucketSampler(batch_size=8), epochs=2, seed=5)
    plan.save(root / "plan")
    return {
        "root": root,
        "samples": samples,
        "path": path,
        "source": source,
        "table": table,
        "plan": plan,
    }


# ------------------------------------------------------------------ sampler


def test_sampler_conformance() -> None:
    check_sampler(DepthBucketSampler, batch_size=7, max_examples=30)
    check_sampler(DepthBucketSampler, batch_size=5, drop_last=True, max_examples=30)
    check_sampler(DepthBucketSampler, token_budget=4000, overflow="alone", max_examples=30)
    check_sampler(
        DepthBucketSampler, token_budget=3000, overflow="drop", max_batch_size=9, max_examples=30
    )


def test_registered_through_its_entry_point() -> None:
    kernel = laden.Kernel()
    sampler = kernel.create("sampler", {"name": "depth_buckets", "batch_size": 4})
    assert isinstance(sampler, DepthBucketSampler)
    assert "staged_h5" in kernel.registry("source").names()


def _tables() -> Any:
    n = st.integers(0, 400)
    return n.flatmap(
        lambda size: st.tuples(
            arrays(np.int64, size, elements=st.integers(1, 300)),
            arrays(np.int64, size, elements=st.integers(0, 4)),
        )
    )


@settings(max_examples=60, deadline=None)
@given(
    table=_tables(),
    mode=st.sampled_from(["fixed", "fixed_drop", "budget"]),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 100),
)
def test_batches_never_mix_depths(
    table: tuple[np.ndarray, np.ndarray], mode: str, seed: int, epoch: int
) -> None:
    lengths, depths = table
    config: dict[str, Any] = {
        "fixed": {"batch_size": 6},
        "fixed_drop": {"batch_size": 6, "drop_last": True},
        "budget": {"token_budget": 1000, "max_batch_size": 16},
    }[mode]
    sampler = DepthBucketSampler(**config)
    t = laden.LengthTable.from_lengths(lengths, key=depths)
    plan = sampler.plan_epoch(t, epoch=epoch, seed=seed)
    for spec in plan:
        assert np.unique(depths[spec.indices]).size == 1  # one depth per batch
        assert spec.bucket == depths[spec.indices[0]]
    seen = np.sort(np.concatenate([plan.order, plan.dropped]))
    assert np.array_equal(seen, np.arange(lengths.size))  # every sample once, or dropped
    assert sum(plan.report["dropped"].values()) == plan.dropped.size
    assert sum(d["dropped"] for d in plan.report["depths"].values()) == plan.dropped.size
    sizes = plan.batch_sizes
    if mode == "budget":
        assert (sizes * plan.max_length <= 1000).all()
        assert (sizes <= 16).all()
    else:
        assert (sizes <= 6).all()
        if mode == "fixed_drop":
            assert (sizes == 6).all()
            # Only each depth's remainder is dropped.
            counts = np.bincount(depths, minlength=5)
            assert plan.dropped.size == int((counts % 6).sum())
        else:
            assert plan.report["small_batches"] == int((sizes < 6).sum())
            assert (sizes < 6).sum() <= np.unique(depths).size  # at most one per depth
    again = sampler.plan_epoch(t, epoch=epoch, seed=seed)
    assert plan.digest() == again.digest()  # deterministic per (seed, epoch)


@st.composite
def _staged_tables(draw: Any) -> laden.LengthTable:
    """Depths 0-3 with per-stage steps 0-90: a table with ``stage_length``."""
    n = draw(st.integers(0, 150))
    depth = np.asarray(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=np.int64)
    steps = draw(arrays(np.int64, (n, 4), elements=st.integers(0, 90)))
    steps[np.arange(4) > depth[:, None]] = 0  # nothing past a sample's last stage
    return laden.LengthTable(length=steps.sum(axis=1), key=depth, stage_length=steps)


@settings(max_examples=80, deadline=None)
@given(
    table=_staged_tables(),
    budget=st.integers(60, 1500),
    overflow=st.sampled_from(["drop", "alone"]),
    max_batch_size=st.sampled_from([None, 7]),
    seed=st.integers(0, 2**32 - 1),
)
def test_token_budget_counts_padded_steps_over_all_stages(
    table: laden.LengthTable, budget: int, overflow: str, max_batch_size: int | None, seed: int
) -> None:
    sampler = DepthBucketSampler(
        token_budget=budget, overflow=overflow, max_batch_size=max_batch_size
    )
    plan = sampler.plan_epoch(table, epoch=3, seed=seed)
    stages, depth = table.stage_length, table.key
    assert stages is not None
    assert depth is not None
    seen = np.sort(np.concatenate([plan.order, plan.dropped]))
    assert np.array_equal(seen, np.arange(len(table)))  # every sample exactly once
    over = table.length > budget
    assert plan.report["alone"] + plan.report["dropped"]["overflow"] == int(over.sum())
    padded = padded_tokens(stages[plan.order], plan.offsets)
    for b, spec in enumerate(plan):
        rows = stages[spec.indices]
        # What staged collation allocates: size x the sum of every stage's in-batch max.
        assert padded[b] == len(spec.indices) * int(rows.max(axis=0).sum())
        if spec.bucket == -1:  # a sample over the budget, alone and counted
            assert len(spec.indices) == 1
            assert over[spec.indices[0]]
            continue
        assert padded[b] <= budget
        assert np.unique(depth[spec.indices]).size == 1
        assert max_batch_size is None or len(spec.indices) <= max_batch_size
    assert np.array_equal(plan.dropped, np.flatnonzero(over) if overflow == "drop" else [])
    assert plan.digest() == sampler.plan_epoch(table, epoch=3, seed=seed).digest()


@settings(max_examples=80, deadline=None)
@given(
    stages=arrays(
        np.int64, st.tuples(st.integers(0, 60), st.integers(1, 4)), elements=st.integers(0, 50)
    ),
    budget=st.integers(50, 800),
    cuts=st.lists(st.integers(0, 60), max_size=4),
)
def test_cut_padded_is_the_greedy_cut(stages: np.ndarray, budget: int, cuts: list[int]) -> None:
    """Every batch fits, and the next sample of its segment would not (one at least)."""
    n = stages.shape[0]
    bounds = np.unique(np.clip([0, *cuts, n], 0, n))
    starts = cut_padded(stages, bounds, budget)
    ends = np.append(starts[1:], n)[: starts.size]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        cost = (b - a) * int(stages[a:b].max(axis=0).sum())
        assert b > a
        assert cost <= budget or b - a == 1
        segment_end = int(bounds[np.searchsorted(bounds, a, side="right")])
        if b < segment_end:  # one more would break the budget
            assert (b - a + 1) * int(stages[a : b + 1].max(axis=0).sum()) > budget
    assert set(bounds[:-1].tolist()) <= set(starts.tolist())  # never across a segment


def test_huge_depth_keys_plan_like_small_ones() -> None:
    """Keys too wide for the one-key sort take the lexsort path: the same batches."""
    rng = np.random.default_rng(1)
    depth, lengths = rng.integers(0, 3, 500), rng.integers(1, 100, 500)
    sampler = DepthBucketSampler(token_budget=400, pool_size=50)
    small = sampler.plan_epoch(laden.LengthTable.from_lengths(lengths, key=depth), seed=3)
    huge = laden.LengthTable.from_lengths(lengths, key=depth * 10**15)
    wide = sampler.plan_epoch(huge, seed=3)
    assert np.array_equal(small.order, wide.order)
    assert np.array_equal(small.offsets, wide.offsets)


def test_shuffled_within_buckets_and_across_batches() -> None:
    depths = np.repeat(np.arange(4), 100)
    t = laden.LengthTable.from_lengths(np.full(400, 30), key=depths)
    sampler = DepthBucketSampler(batch_size=10)
    first = sampler.plan_epoch(t, epoch=0, seed=1)
    second = sampler.plan_epoch(t, epoch=1, seed=1)
    assert not np.array_equal(first.order, second.order)
    assert np.unique(first.bucket[:8]).size > 1  # depths interleave across batches
    assert not np.array_equal(first[0].indices, np.sort(first[0].indices))
    unshuffled = DepthBucketSampler(batch_size=10, shuffle=False).plan_epoch(t)
    assert np.array_equal(unshuffled.order, np.arange(400))


def test_sampler_config_and_input_errors() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        DepthBucketSampler()
    with pytest.raises(ConfigError, match="exactly one"):
        DepthBucketSampler(batch_size=4, token_budget=100)
    with pytest.raises(ConfigError, match="drop_last"):
        DepthBucketSampler(token_budget=100, drop_last=True)
    t = laden.LengthTable.from_lengths([5, 500], key=[0, 1])
    with pytest.raises(DataError, match="sample 1 with 500"):
        DepthBucketSampler(token_budget=100).plan_epoch(t)
    with pytest.raises(DataError, match="sample 1 has depth -2"):
        DepthBucketSampler(batch_size=2).plan_epoch(
            laden.LengthTable.from_lengths([1, 2], key=[0, -2])
        )


# ------------------------------------------------------------------ source and collation


@pytest.mark.parametrize("layout", ["csr", "groups"])
def test_source_measures_depths_without_reading_arrays(
    tmp_path: Path, layout: str, staged: dict[str, Any]
) -> None:
    samples = staged["samples"][:30]
    path = write_staged_h5(tmp_path / "d.h5", samples, layout=layout)
    source = StagedH5Source(path=path)
    table = source.length_table()
    assert table.key.tolist() == [len(s["states"]) - 1 for s in samples]
    assert table.length.tolist() == [sum(len(a) for a in s["actions"]) for s in samples]
    steps = source.stage_steps()
    assert steps[4].tolist() == [len(a) for a in samples[4]["actions"]]
    back = source.read_at([7, 2])
    assert back[0]["id"] == 7
    assert back[0]["key"] == len(samples[7]["states"]) - 1
    for name in ("states", "actions", "rewards"):
        for got, want in zip(back[0][name], samples[7][name], strict=True):
            np.testing.assert_array_equal(got, want)


def test_build_lengths_caches_a_staged_file(staged: dict[str, Any], tmp_path: Path) -> None:
    from laden.lengths import build_lengths, load_lengths

    kernel = laden.Kernel(autoload=False)
    table = build_lengths(
        staged["source"],
        kernel.create("tokenizer", "bytes"),
        output=tmp_path / "lengths",
        executor=kernel.create("executor", {"name": "local", "workers": 0}),
    )
    assert table.digest() == staged["table"].digest()
    loaded = load_lengths(tmp_path / "lengths")
    assert loaded.key.tolist() == staged["table"].key.tolist()
    assert loaded.stage_length is not None
    want = [[len(a) for a in s["actions"]] for s in staged["samples"]]
    assert [
        row[: len(w)].tolist() for row, w in zip(loaded.stage_length, want, strict=True)
    ] == want
    assert loaded.stage_length.sum(axis=1).tolist() == loaded.length.tolist()


def test_cli_builds_staged_lengths_and_analyze_shows_depths(
    staged: dict[str, Any], tmp_path: Path
) -> None:
    from laden.lengths import load_lengths
    from laden.testing import run_cli

    kernel = laden.Kernel()
    out = tmp_path / "lens"
    args = ["lengths", "build", staged["path"], "--source", "staged_h5", "-o", str(out)]
    result = run_cli(kernel, *args, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["samples"] == len(staged["samples"])
    table = load_lengths(out)
    assert table.digest() == staged["table"].digest()
    result = run_cli(kernel, "analyze", str(out), "--token-budget", "900", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["depth_buckets"]
    plan = DepthBucketSampler(token_budget=900).plan_epoch(table, seed=0)
    assert report["batches"] == len(plan)
    depth, stages = table.key, table.stage_length
    for value, row in report["depths"].items():
        d = int(value)
        assert row["samples"] == int((depth == d).sum())
        assert row["batches"] == int((plan.bucket == d).sum())
        assert len(row["stage_efficiency"]) == d + 1
        # stage 0's efficiency: its real steps over its batches' padded stage-0 steps
        mine = [spec.indices for spec in plan if spec.bucket == d]
        padded = sum(len(ix) * int(stages[ix, 0].max()) for ix in mine)
        assert row["stage_efficiency"][0] == pytest.approx(stages[depth == d, 0].sum() / padded)
    result = run_cli(kernel, "analyze", str(out), "--token-budget", "900")
    assert result.exit_code == 0, result.output
    assert "depth buckets (depth_buckets, token_budget 900, padded per stage)" in result.output
    text = tmp_path / "data.jsonl"
    text.write_text('{"text": "a"}\n')
    bad = ["lengths", "build", str(text), "--source", "staged_h5", "-o", str(tmp_path / "x")]
    result = run_cli(kernel, *bad)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {text}: cannot open as HDF5 (Unable to synchronously open file "
        "(file signature not found))"
    )
    assert not list(tmp_path.glob("*x*"))  # no cache, no partial work left


def test_collation_pads_each_stage_to_its_own_max(staged: dict[str, Any]) -> None:
    samples, plan = staged["samples"], staged["plan"]
    reader = StagedSamples(staged["source"])
    for spec in list(plan.epochs[0])[:6]:
        batch = reader.collate_batch(spec.indices)
        members = [samples[i] for i in spec.indices.tolist()]
        depth = len(members[0]["states"])
        assert batch["num_stages"] == depth
        assert batch["sample_ids"].tolist() == spec.indices.tolist()
        assert not any(k.startswith(f"stage{depth}_") for k in batch)  # no dummy stage
        for s in range(depth):
            lengths = [len(m["actions"][s]) for m in members]
            assert batch[f"stage{s}_states"].shape == (len(members), max(lengths), 16)
            assert batch[f"stage{s}_mask"].sum(axis=1).tolist() == lengths
            for b, m in enumerate(members):
                t = lengths[b]
                np.testing.assert_array_equal(batch[f"stage{s}_states"][b, :t], m["states"][s])
                np.testing.assert_array_equal(batch[f"stage{s}_actions"][b, :t], m["actions"][s])
                assert not batch[f"stage{s}_states"][b, t:].any()  # zero padding
        # The list-of-samples path gives the same arrays.
        same = collate_staged(StagedBatch.from_samples(members, sample_ids=spec.indices))
        assert same.keys() == batch.keys()
        for key, value in batch.items():
            np.testing.assert_array_equal(value, same[key])


def test_a_batch_of_mixed_depths_is_refused(staged: dict[str, Any]) -> None:
    depth = staged["table"].key
    a, b = int(np.flatnonzero(depth == 0)[0]), int(np.flatnonzero(depth == 2)[0])
    with pytest.raises(DataError, match=r"mixes depths.*depth_buckets"):
        StagedSamples(staged["source"]).fetch_batch([a, b])


@pytest.mark.parametrize("name", ["numpy", "torch", "mlx"])
def test_identical_on_every_backend(staged: dict[str, Any], name: str) -> None:
    if name != "numpy":
        pytest.importorskip(name, reason=f"the {name} extra is not installed")
    kernel = laden.Kernel()
    backend = kernel.create("backend", name)
    reference = kernel.create("backend", "numpy")
    reader = StagedSamples(staged["source"])
    spec = staged["plan"].epochs[0][1]
    got = reader.collate_batch(spec.indices, backend)
    want = reader.collate_batch(spec.indices, reference)
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, int):
            assert got[key] == value
            continue
        mine = backend.as_numpy(got[key])
        assert mine.dtype == value.dtype, key
        np.testing.assert_array_equal(mine, value)


# ------------------------------------------------------------------ bad input


def test_wrong_rank_is_named(tmp_path: Path) -> None:
    samples = make_samples(4)
    last = len(samples[2]["states"]) - 1
    samples[2]["states"][last] = samples[2]["states"][last][:, 0]  # [T] where [T, 16] belongs
    path = tmp_path / "bad.h5"
    with pytest.raises(DataError, match=rf"bad\.h5.*sample 2 stage {last} key 'states'.*rank"):
        write_staged_h5(path, samples)
    assert not path.exists()
    # A file written elsewhere with the same mistake: named when measured.
    good = write_staged_h5(tmp_path / "g.h5", make_samples(4), layout="groups")
    with h5py.File(good, "a") as f:
        del f["samples/3/0/states"]
        f["samples/3/0/states"] = np.zeros((len(f["samples/3/0/actions"]), 4, 4), np.float32)
    with pytest.raises(DataError, match=r"g\.h5.*sample 3 key 'samples/3/0/states'.*rank"):
        StagedH5Source(path=good).length_table()


def test_zero_stages_are_named(tmp_path: Path) -> None:
    samples = make_samples(5)
    samples[3] = {"states": [], "actions": [], "rewards": []}
    with pytest.raises(DataError, match=r"z\.h5.*sample 3 has zero stages"):
        write_staged_h5(tmp_path / "z.h5", samples)
    path = write_staged_h5(tmp_path / "c.h5", make_samples(5))
    with h5py.File(path, "a") as f:
        offsets = f["stage_offsets"][()]
        offsets[2] = offsets[1]  # sample 1 loses its stages to sample 2
        f["stage_offsets"][...] = offsets
    with pytest.raises(DataError, match=r"c\.h5.*sample 1 has zero stages.*'stage_offsets'"):
        StagedH5Source(path=path).length_table()


def test_other_bad_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match=r"plain\.h5.*not a staged sample file"):
        StagedH5Source(path=str(plain)).length_table()
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"junk\.h5.*cannot open"):
        StagedH5Source(path=str(junk)).length_table()
    path = write_staged_h5(tmp_path / "short.h5", make_samples(3))
    with h5py.File(path, "a") as f:
        data = f["fields/rewards"][()]
        del f["fields/rewards"]
        f["fields/rewards"] = data[:-1]
    with pytest.raises(DataError, match=r"short\.h5.*key 'fields/rewards'"):
        StagedH5Source(path=path).length_table()


# ------------------------------------------------------------------ torch


def test_plan_loader_with_two_workers(staged: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    from laden.torch import PlanDataset, PlanLoader

    plan, table = staged["plan"], staged["table"]
    dataset = PlanDataset.for_plan(plan, StagedSamples(staged["source"]), table)
    loader = PlanLoader(plan, dataset, num_workers=2, epoch=1)
    batches = list(loader)
    expected = [spec.indices.tolist() for spec in plan.epochs[1]]
    assert [b["sample_ids"].tolist() for b in batches] == expected
    assert [b["step"] for b in batches] == list(range(len(expected)))
    for b in batches:
        depths = table.key[b["sample_ids"].numpy()]
        assert (depths == depths[0]).all()
        assert b["num_stages"] == depths[0] + 1
        assert isinstance(b["stage0_states"], torch.Tensor)
        assert b["stage0_states"].dtype == torch.float32
    # The same tensors as in one process, whichever way they crossed from the workers.
    here = list(PlanLoader(plan, dataset, num_workers=0, epoch=1))
    for got, want in zip(batches, here, strict=True):
        assert got.keys() == want.keys()
        assert type(got) is dict
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert got[key].dtype == value.dtype
                assert torch.equal(got[key], value), key
            else:
                assert got[key] == value


def test_a_worker_batch_crosses_as_bytes_up_to_a_size() -> None:
    """Small CPU tensors leave a worker pickled; a large one through torch's shared memory."""
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    from multiprocessing.reduction import ForkingPickler

    from laden.torch import PICKLE_BYTES, _WorkerBatch

    small = torch.arange(12, dtype=torch.int64).reshape(3, 4)
    large = torch.ones(PICKLE_BYTES // 4 + 1, dtype=torch.float32)
    half = torch.ones(4, dtype=torch.bfloat16)  # numpy has no bfloat16: stays a tensor
    batch = _WorkerBatch(small=small, large=large, half=half, step=3, mask=small > 4)
    back = pickle.loads(ForkingPickler.dumps(batch))
    assert type(back) is dict
    assert back["step"] == 3
    for key in ("small", "large", "half", "mask"):
        assert isinstance(back[key], torch.Tensor)
        assert back[key].dtype == batch[key].dtype
        assert torch.equal(back[key], batch[key])
    assert back["small"].untyped_storage().data_ptr() != small.untyped_storage().data_ptr()
    assert back["large"].is_shared()  # torch's transport: a shared-memory segment
    assert not back["small"].is_shared()


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")  # torch's own, on load
def test_tensors_numpy_cannot_hold_cross_a_worker_by_torchs_own_path() -> None:
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    from multiprocessing.reduction import ForkingPickler

    from laden.torch import _WorkerBatch

    odd = {
        "float8": torch.ones(4).to(torch.float8_e4m3fn),  # .numpy() raises TypeError
        "conj": torch.ones(3, dtype=torch.complex64).conj(),  # a conj view: RuntimeError
        "sparse": torch.eye(3).to_sparse(),  # not strided
        "plain": torch.arange(3),
    }
    back = pickle.loads(ForkingPickler.dumps(_WorkerBatch(odd)))
    for key, value in odd.items():
        assert back[key].dtype == value.dtype
        assert back[key].layout == value.layout
        got, want = back[key].to_dense(), value.to_dense()
        if want.is_complex():
            assert torch.equal(got.resolve_conj(), want.resolve_conj()), key
        else:
            assert torch.equal(got.float(), want.float()), key


@pytest.mark.slow
def test_torchrun_ranks_take_equal_steps(staged: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the torch extra is not installed")
    out = tmp_path / "ranks.json"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(WORKER),
            str(staged["root"] / "plan"),
            staged["path"],
            str(out),
        ],
        check=True,
        timeout=300,
        env=env,
    )
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["steps"] == ranks[1]["steps"] == -(-len(staged["plan"].epochs[0]) // 2)
    ids = [i for r in ranks for i in r["ids"]]
    assert sorted(ids) == list(range(len(staged["table"])))  # every sample once

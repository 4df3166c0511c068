"""laden.torch: the plan behind a DataLoader, with workers, resume across processes, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import laden
from laden.collate import Ragged
from laden.collate.samples import SourceSamples
from laden.plan import BatchPlan
from laden.stateful import Stateful
from laden.testing import check_stateful
from tests.conftest import make_corpus

torch = pytest.importorskip("torch", reason="the torch extra is not installed")

from laden.torch import PlanBatchSampler, PlanDataset, PlanLoader  # noqa: E402

WORKER = Path(__file__).parent / "fixtures" / "plan_worker.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A JSONL file of 600 texts, its length cache, and a 2-epoch plan of it."""
    return make_corpus(
        tmp_path_factory.mktemp("corpus"),
        600,
        5,
        max_size=300,
        row=lambda i, size, rng: {"id": i, "text": "x" * size + f" {i}"},
        token_budget=2048,
        pack_length=None,
        plan_seed=9,
    )


def plan_batches(plan: BatchPlan, epoch: int) -> list[list[int]]:
    e = plan.epochs[epoch]
    return [e.order[e.offsets[b] : e.offsets[b + 1]].tolist() for b in range(len(e))]


def test_sampler_yields_the_plan_and_resumes(corpus: dict[str, Any]) -> None:
    plan = corpus["plan"]
    sampler = PlanBatchSampler(plan, epoch=1)
    batches = list(sampler)
    assert [list(b) for b in batches] == plan_batches(plan, 1)
    assert len(sampler) == len(plan.epochs[1])
    assert batches[3].step == 3
    assert batches[3].epoch == 1
    sampler.set_epoch(1, start=4)
    assert [list(b) for b in sampler] == plan_batches(plan, 1)[4:]
    shard = PlanBatchSampler(plan, rank=1, world_size=3)
    assert shard.plan.rank == 1
    with pytest.raises(ValueError, match="rank 1 of 3, not 0 of 3"):
        PlanBatchSampler(shard.plan, rank=0, world_size=3)


def test_loader_with_worker_processes(corpus: dict[str, Any]) -> None:
    plan, table = corpus["plan"], corpus["table"]
    kernel = laden.Kernel(autoload=False)
    source = kernel.create("source", {"name": "jsonl", "path": str(corpus["data"])})
    samples = SourceSamples(
        source=source, tokenizer=kernel.create("tokenizer", "bytes"), table=table
    )
    loader = PlanLoader(plan, PlanDataset.for_plan(plan, samples, table), num_workers=2, epoch=1)
    batches = list(loader)
    assert [b["sample_ids"].tolist() for b in batches] == plan_batches(plan, 1)
    assert [b["step"] for b in batches] == list(range(len(plan.epochs[1])))
    first = batches[0]
    assert isinstance(first["input_ids"], torch.Tensor)
    assert first["cu_seqlens"].dtype == torch.int32
    # The rows hold the texts' bytes, read from the file at the cached offsets.
    row = first["input_ids"][0][first["attention_mask"][0].bool()]
    text = json.loads(corpus["data"].read_text().splitlines()[first["sample_ids"][0]])["text"]
    assert bytes(row.tolist()) == text.encode()
    assert loader.state_dict()["step"] == len(plan.epochs[1])


def test_a_restarted_process_continues_exactly(corpus: dict[str, Any], tmp_path: Path) -> None:
    root = corpus["root"]
    common = [str(root / "plan"), str(corpus["data"]), str(root / "lengths")]

    def run(out: str, *extra: str) -> list[list[int]]:
        subprocess.run(
            [sys.executable, str(WORKER), "run", *common, str(tmp_path / out), *extra],
            check=True,
            timeout=300,
        )
        batches: list[list[int]] = json.loads((tmp_path / out).read_text())
        return batches

    whole = run("whole.json")
    state = str(tmp_path / "state.json")
    head = run("head.json", "--steps", "7", "--state", state, "--workers", "1")
    assert json.loads(Path(state).read_text())["step"] == 7
    tail = run("tail.json", "--state", state, "--workers", "1")
    assert len(head) == 7
    assert head + tail == whole
    assert len(whole) == len(corpus["plan"].epochs[0])


def test_state_of_another_plan_is_refused(corpus: dict[str, Any]) -> None:
    plan = corpus["plan"]
    tokens = Ragged.from_sequences([np.ones(n, dtype=np.int64) for n in corpus["table"].length])
    loader = PlanLoader(plan, PlanDataset.for_plan(plan, tokens, corpus["table"]))
    state = loader.state_dict()
    with pytest.raises(laden.DataError, match="belongs to plan"):
        loader.load_state_dict({**state, "fingerprint": "0" * 32})
    shard = PlanLoader(plan, PlanDataset.for_plan(plan, tokens, corpus["table"]), world_size=2)
    with pytest.raises(
        laden.DataError, match=r"\(world_size 1\) does not fit: this plan is rank 0"
    ):
        shard.load_state_dict({**state, "fingerprint": shard.plan.fingerprint})
    with pytest.raises(laden.DataError, match="does not match the plan"):
        PlanDataset.for_plan(plan, tokens, laden.LengthTable.from_lengths([1, 2]))


def test_the_loader_is_stateful_and_its_state_is_its_plan_cursor(corpus: dict[str, Any]) -> None:
    plan, table = corpus["plan"], corpus["table"]
    tokens = Ragged.from_sequences([np.ones(n, dtype=np.int64) for n in table.length])

    def loader(rank: int = 0) -> PlanLoader:
        return PlanLoader(plan, PlanDataset.for_plan(plan, tokens, table), rank=rank, world_size=2)

    def key(batch: dict[str, Any]) -> tuple[int, int, list[int]]:
        return batch["epoch"], batch["step"], batch["sample_ids"].tolist()

    assert isinstance(loader(), Stateful)
    check_stateful(loader, cuts=(0, 1, 5), key=key)
    check_stateful(lambda: loader(1), cuts=(2,), key=key)
    # The loader's state is a plan cursor's: one position, one format, one check.
    running = loader()
    batches = iter(running)
    for _ in range(3):
        next(batches)
    cursor = running.plan.cursor()
    cursor.load_state_dict(running.state_dict())
    assert cursor.position == (0, 3)
    assert [s for _, s, _ in cursor][:2] == [3, 4]
    # A state at the end of the plan resumes at the end of its last epoch: nothing left.
    end = loader()
    end.load_state_dict({**running.state_dict(), "epoch": plan.num_epochs, "step": 0})
    assert (end.epoch, list(end)) == (plan.num_epochs - 1, [])


def test_torchrun_ranks_share_the_plan(corpus: dict[str, Any], tmp_path: Path) -> None:
    root = corpus["root"]
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
            "dist",
            str(root / "plan"),
            str(corpus["data"]),
            str(root / "lengths"),
            str(out),
        ],
        check=True,
        timeout=300,
        env=env,
    )
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["steps"] == ranks[1]["steps"] == -(-len(corpus["plan"].epochs[0]) // 2)
    ids = [i for r in ranks for i in r["ids"]]
    assert sorted(ids) == list(range(len(corpus["table"])))  # every sample once


def test_loader_announces_each_batch(corpus: dict[str, Any]) -> None:
    from laden.testing import record_hooks

    kernel = laden.Kernel(autoload=False)
    plan = corpus["plan"]
    tokens = Ragged.from_sequences([np.ones(n, dtype=np.int64) for n in corpus["table"].length])
    loader = PlanLoader(plan, PlanDataset.for_plan(plan, tokens, corpus["table"]), kernel=kernel)
    loader.set_epoch(1)
    with record_hooks(kernel) as seen:
        count = sum(1 for _ in loader)
    assert seen.steps == [(1, s) for s in range(count)]
    assert count == len(plan.epochs[1])

"""Lifecycle hooks: observers see plans and batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import laden
from laden.files.write import write_batches
from laden.lengths import build_lengths
from laden.plan import BatchPlan
from laden.testing import record_hooks


class FixedTwo:
    """Two samples per batch in index order (enough to drive the hooks)."""

    def plan_epoch(
        self, table: laden.LengthTable, *, epoch: int = 0, seed: int = 0
    ) -> laden.EpochPlan:
        n = len(table)
        offsets = np.append(np.arange(0, n, 2), n)
        return laden.EpochPlan(
            order=np.arange(n),
            offsets=offsets,
            max_length=np.maximum.reduceat(table.length, offsets[:-1]),
            bucket=np.zeros(offsets.size - 1),
            epoch=epoch,
            seed=seed,
        )


def test_laden_plan_built_announces_each_plan(kernel: laden.Kernel) -> None:
    table = laden.LengthTable.from_lengths([3, 1, 2, 5, 4])
    with record_hooks(kernel) as seen:
        plan = kernel.plan_epoch(FixedTwo(), table, epoch=3, seed=1)
    assert seen.plans == [plan]
    assert seen.batches == []
    # Unregistered observers see nothing more.
    kernel.plan_epoch(FixedTwo(), table)
    assert len(seen.plans) == 1


def written(kernel: laden.Kernel, root: Path) -> Path:
    """Batch files of 4 epochs of two samples per batch, in order, over lengths 3 1 2 5 4."""
    data = root / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in ("aaa", "b", "cc", "ddddd", "eeee"))
    )
    source = kernel.create("source", {"name": "jsonl", "path": str(data)})
    tokenizer = kernel.create("tokenizer", "bytes")
    table = build_lengths(
        source, tokenizer, executor=kernel.create("executor", {"name": "local", "workers": 0})
    )
    sampler = kernel.create("sampler", {"name": "fixed", "batch_size": 2, "shuffle": False})
    plan = BatchPlan.build(table, sampler, epochs=4, seed=1)
    out = root / "batches"
    write_batches(plan, table, source, tokenizer, kernel.create("writer", "npz"), out)
    return out


def test_laden_batch_produced_by_the_loaders(kernel: laden.Kernel, tmp_path: Path) -> None:
    # Kernel.iter_batches is gone: the loaders fire laden_batch_produced.
    out = written(kernel, tmp_path)
    first = laden.BatchReader(out, epoch=3, prefetch=0)
    next(iter(first))  # consumed before the observer: from step 1 on
    reader = laden.BatchReader(out, epoch=3, kernel=kernel)
    reader.load_state_dict(first.state_dict())
    with record_hooks(kernel) as seen:
        batches = list(reader)
    assert seen.steps == [(3, 1), (3, 2)]
    assert seen.batches[0][2] is batches[0]
    assert batches[0]["input_ids"].dtype == np.int32  # converted by the numpy backend
    assert batches[0]["attention_mask"].sum() == 2 + 5
    # Unregistered observers see nothing more.
    list(laden.BatchReader(out, epoch=3, kernel=kernel))
    assert len(seen.batches) == 2

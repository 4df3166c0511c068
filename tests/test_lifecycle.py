"""Lifecycle hooks: observers see plans and batches."""

from __future__ import annotations

from typing import Any

import numpy as np

import laden
from laden.testing import registered


class Recorder:
    def __init__(self) -> None:
        self.plans: list[Any] = []
        self.batches: list[tuple[int, int, dict[str, np.ndarray]]] = []

    @laden.hookimpl
    def laden_plan_built(self, plan: Any, kernel: laden.Kernel) -> None:
        self.plans.append(plan)

    @laden.hookimpl
    def laden_batch_produced(self, batch: Any, epoch: int, step: int, kernel: laden.Kernel) -> None:
        self.batches.append((epoch, step, batch))


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


def test_plan_built_and_batch_produced(kernel: laden.Kernel) -> None:
    recorder = Recorder()
    table = laden.LengthTable.from_lengths([3, 1, 2, 5, 4])

    def collate(spec: laden.BatchSpec) -> dict[str, np.ndarray]:
        ids = np.zeros((spec.size, spec.max_length), dtype=np.int16)
        mask = np.arange(spec.max_length) < table.length[spec.indices][:, None]
        ids[mask] = 7
        return {"input_ids": ids, "attention_mask": mask}

    with registered(kernel, recorder):
        plan = kernel.plan_epoch(FixedTwo(), table, epoch=3, seed=1)
        batches = list(kernel.iter_batches(plan, collate, start=1))
    assert recorder.plans == [plan]
    assert [(e, s) for e, s, _ in recorder.batches] == [(3, 1), (3, 2)]
    assert recorder.batches[0][2] is batches[0]
    assert batches[0]["input_ids"].dtype == np.int32  # converted by the numpy backend
    assert batches[0]["attention_mask"].sum() == 2 + 5
    # Unregistered observers see nothing more.
    kernel.plan_epoch(FixedTwo(), table)
    assert len(recorder.plans) == 1

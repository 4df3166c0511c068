"""``PlanCursor``: where iteration over a plan stands, saved and restored as a state.

A plan is a frozen record; the position in it is this small
:class:`~laden.stateful.Stateful` object, so one plan can have many readers
(ranks, loaders, a writer) each at its own point. The position is the next
``(epoch, step)`` to hand out; ``step == len(epoch)`` means that epoch is
finished (the next batch is the first of the next non-empty epoch), and
``(num_epochs, 0)`` is the end of the plan.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from laden.plan.build import BatchPlan
from laden.records import BatchSpec
from laden.stateful import check_state

__all__ = ["KIND", "PlanCursor"]

#: The ``kind`` of a cursor's state (also a ``PlanLoader``'s: it is its cursor's).
KIND = "laden.plan.cursor"


class PlanCursor:
    """The next ``(epoch, step)`` of ``plan``; iterating hands batches out and advances.

    Build with :meth:`BatchPlan.cursor`. ``state_dict()`` ties the position to
    the plan's fingerprint, rank and world size; ``load_state_dict`` refuses a
    state of another plan or shard, or a position the plan does not have.
    """

    def __init__(self, plan: BatchPlan, epoch: int = 0, step: int = 0) -> None:
        self.plan = plan
        self._epoch, self._step = 0, 0
        self.seek(epoch, step)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def step(self) -> int:
        return self._step

    @property
    def position(self) -> tuple[int, int]:
        """The next ``(epoch, step)`` to hand out."""
        return self._epoch, self._step

    def _steps_in(self, epoch: int) -> int:
        return len(self.plan.epochs[epoch]) if epoch < self.plan.num_epochs else 0

    def seek(self, epoch: int, step: int = 0) -> None:
        """Hand out batch ``step`` of ``epoch`` next (a ValueError if the plan has none)."""
        if not 0 <= epoch <= self.plan.num_epochs:
            raise ValueError(f"epoch {epoch} out of range for {self.plan.num_epochs} epochs")
        steps = self._steps_in(epoch)
        if not 0 <= step <= steps:
            raise ValueError(f"step {step} out of range for {steps} steps in epoch {epoch}")
        self._epoch, self._step = epoch, step

    def __len__(self) -> int:
        """Steps left to the end of the plan."""
        left = self._steps_in(self._epoch) - self._step
        return left + sum(self.plan.steps[self._epoch + 1 :])

    def _next(self) -> tuple[int, int] | None:
        """The ``(epoch, step)`` handed out next, past finished and empty epochs."""
        epoch, step = self._epoch, self._step
        while epoch < self.plan.num_epochs and step >= len(self.plan.epochs[epoch]):
            epoch, step = epoch + 1, 0
        return (epoch, step) if epoch < self.plan.num_epochs else None

    def advance(self) -> tuple[int, int]:
        """Count the next batch as consumed without building it; returns its ``(epoch, step)``."""
        where = self._next()
        if where is None:
            raise IndexError("the plan is finished")
        self._epoch, self._step = where[0], where[1] + 1
        return where

    def __iter__(self) -> Iterator[tuple[int, int, BatchSpec]]:
        """``(epoch, step, batch)`` from the position on, advancing it as each is handed out."""
        for epoch, step, spec in self.plan.iter_from(*self.position):
            self._epoch, self._step = epoch, step + 1
            yield epoch, step, spec

    def state_dict(self) -> dict[str, Any]:
        """The position, tied to this plan (fingerprint) and shard (rank, world_size)."""
        return {
            "kind": KIND,
            "fingerprint": self.plan.fingerprint,
            "rank": self.plan.rank,
            "world_size": self.plan.world_size,
            "epoch": self._epoch,
            "step": self._step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at a saved position; refuses a state of another plan or shard."""
        plan = self.plan
        shard = f"rank {plan.rank} of {plan.world_size}"
        check_state(
            state,
            kind=KIND,
            fingerprint=plan.fingerprint,
            fits={"rank": plan.rank, "world_size": plan.world_size},
            within={"epoch": (0, plan.num_epochs)},
            holds=f"this plan is {shard} with {plan.num_epochs} epochs",
        )
        epoch = int(state["epoch"])
        steps = self._steps_in(epoch)
        check_state(
            state,
            kind=KIND,
            within={"step": (0, steps)},
            holds=f"epoch {epoch} of this plan ({shard}) has {steps} steps",
        )
        self._epoch, self._step = epoch, int(state["step"])

    def __repr__(self) -> str:
        return f"<PlanCursor epoch {self._epoch} step {self._step} of {self.plan!r}>"

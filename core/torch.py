"""PyTorch integration: a batch plan behind a ``DataLoader`` (extra ``torch``).

- :class:`PlanBatchSampler`: a ``batch_sampler`` that yields one epoch of a
  plan (this rank's shard), resumable at any step, fine with worker processes.
- :class:`PlanDataset`: a map-style dataset that collates a whole batch in
  ``__getitems__`` (the samples read at random from the source through the
  length table's offsets) with a backend (``torch`` on CPU by default).
- :class:`PlanLoader`: the two in a ``DataLoader``, with the
  ``state_dict()``/``load_state_dict()`` protocol of torchdata's
  ``StatefulDataLoader`` (a :class:`~laden.stateful.Stateful`; its state is
  its :class:`~laden.plan.PlanCursor`'s): a run stopped after ``k`` steps and
  restarted in a new process yields exactly the batches an uninterrupted run
  would.

Importing this module does not import torch; building a loader does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from laden.collate import BatchLayout
from laden.errors import MissingDependencyError
from laden.plan import BatchPlan

__all__ = ["PlanBatch", "PlanBatchSampler", "PlanDataset", "PlanLoader"]


class PlanBatch(list[int]):
    """The unit indices of one batch, with where it stands in the plan.

    A list, so a ``DataLoader`` hands it to the dataset as is (and to worker
    processes by its queues).
    """

    epoch: int
    step: int
    max_length: int
    padding: bool


def _make_batch(
    indices: list[int], epoch: int, step: int, max_length: int, padding: bool
) -> PlanBatch:
    batch = PlanBatch(indices)
    batch.epoch, batch.step, batch.max_length, batch.padding = epoch, step, max_length, padding
    return batch


class PlanBatchSampler:
    """Yields the batches of one epoch of ``plan`` for ``rank`` of ``world_size``.

    A full plan is sharded here (``plan.shard(rank, world_size, remainder)``);
    an already sharded plan must match ``rank`` and ``world_size``. Use as
    ``DataLoader(dataset, batch_sampler=sampler)``; call :meth:`set_epoch`
    before each epoch, as with ``DistributedSampler``.
    """

    def __init__(
        self,
        plan: BatchPlan,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        *,
        remainder: str = "pad",
    ) -> None:
        if plan.world_size == 1 and world_size > 1:
            plan = plan.shard(rank, world_size, remainder=remainder)
        elif (plan.rank, plan.world_size) != (rank, world_size):
            raise ValueError(
                f"the plan is rank {plan.rank} of {plan.world_size}, not {rank} of {world_size}"
            )
        self.plan = plan
        self.epoch = 0
        self.start = 0
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` next, from step ``start``."""
        if not 0 <= epoch < self.plan.num_epochs:
            raise ValueError(f"epoch {epoch} out of range for {self.plan.num_epochs} epochs")
        steps = len(self.plan.epochs[epoch])
        if not 0 <= start <= steps:
            raise ValueError(f"step {start} out of range for {steps} steps")
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return len(self.plan.epochs[self.epoch]) - self.start

    def __iter__(self) -> Iterator[PlanBatch]:
        plan = self.plan.epochs[self.epoch]
        order, offsets = plan.order, plan.offsets.tolist()
        max_length, padding = plan.max_length.tolist(), self.plan.padding[self.epoch].tolist()
        epoch = self.epoch
        for step in range(self.start, len(plan)):
            yield _make_batch(
                order[offsets[step] : offsets[step + 1]].tolist(),
                epoch,
                step,
                max_length[step],
                padding[step],
            )


def _passthrough(batch: Any) -> Any:
    """The DataLoader's ``collate_fn``: the dataset already collated the batch."""
    return batch


class PlanDataset:
    """Map-style: unit ``i`` (a sample, or a pack when ``pack`` is given), collated.

    :param samples: token ids by sample index: a
        :class:`~laden.collate.samples.SourceSamples` (reads the JSONL rows of a batch
        at their byte offsets), a :class:`~laden.collate.Ragged`, or any
        mapping or sequence :func:`~laden.collate.collate` takes; samples with a
        ``collate_batch(indices, backend)`` method collate a batch themselves
        (staged samples, :class:`laden.contrib.staged_h5.StagedSamples`).
    :param lengths: the length of every unit (``table.length``, or the packs'
        lengths for a packed plan).
    :param backend: a backend strategy (default: ``torch`` on CPU); workers
        run it, so keep it on CPU and let the loader move batches.
    :param pack: the plan's pack plan, when units are packs.
    """

    def __init__(
        self,
        samples: Any,
        lengths: np.ndarray,
        *,
        backend: Any = None,
        pack: Any = None,
    ) -> None:
        if backend is None:
            from laden.plugins.backends.torch import TorchBackend

            backend = TorchBackend()
        self.samples, self.lengths, self.backend, self.pack = samples, lengths, backend, pack

    @classmethod
    def for_plan(cls, plan: BatchPlan, samples: Any, table: Any, **kwargs: Any) -> PlanDataset:
        """The dataset of ``plan``'s units over ``table``'s samples."""
        plan.require_table(table)
        lengths = plan.pack.pack_lengths if plan.pack is not None else table.length
        return cls(samples, lengths, pack=plan.pack, **kwargs)

    def __len__(self) -> int:
        return len(self.lengths)

    def layout(self, indices: list[int], max_length: int | None = None) -> BatchLayout:
        units = np.asarray(indices, dtype=np.int64)
        if self.pack is not None:
            return BatchLayout.packed(self.pack, units, max_length)
        return BatchLayout.padded(units, self.lengths, max_length)

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        own = getattr(self.samples, "collate_batch", None)
        if own is not None:  # samples that collate themselves (staged: the dense path)
            batch = dict(own(np.asarray(indices, dtype=np.int64), self.backend))
        else:
            batch = dict(
                self.backend.collate(
                    self.layout(indices, getattr(indices, "max_length", None)), self.samples
                )
            )
        batch["epoch"] = getattr(indices, "epoch", None)
        batch["step"] = getattr(indices, "step", None)
        batch["padding"] = bool(getattr(indices, "padding", False))
        return batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([int(index)])


class PlanLoader:
    """A ``DataLoader`` over a plan's batches, resumable across processes.

    :param plan: the batch plan (full, or this rank's shard).
    :param dataset: a :class:`PlanDataset` (anything with ``__getitems__``).
    :param rank: this process's rank; ``world_size``: how many there are.
    :param num_workers: DataLoader worker processes (0: in this process).
    :param device: move each batch's tensors here (``non_blocking``; pinned
        host memory first when it is CUDA and ``pin_memory`` is set).
    :param multiprocessing_context: ``spawn`` by default (safe with threads).
    :param kernel: announce every batch through ``laden_batch_produced``.
    """

    def __init__(
        self,
        plan: BatchPlan,
        dataset: Any,
        *,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        num_workers: int = 0,
        prefetch_factor: int | None = None,
        pin_memory: bool = False,
        device: str | None = None,
        remainder: str = "pad",
        multiprocessing_context: str | None = "spawn",
        persistent_workers: bool = False,
        kernel: Any = None,
    ) -> None:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("loader", "PlanLoader", ["torch"], "torch") from exc
        self.sampler = PlanBatchSampler(plan, rank, world_size, epoch, remainder=remainder)
        self.plan = self.sampler.plan
        self.dataset = dataset
        self.device = device
        self.kernel = kernel
        self.num_workers = num_workers
        self._loader_args: dict[str, Any] = {
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "collate_fn": _passthrough,
        }
        if num_workers > 0:
            self._loader_args["multiprocessing_context"] = multiprocessing_context
            self._loader_args["persistent_workers"] = persistent_workers
            if prefetch_factor is not None:
                self._loader_args["prefetch_factor"] = prefetch_factor
        #: What has been consumed: the next ``(epoch, step)`` (the sampler runs ahead of
        #: it, as the DataLoader prefetches); the loader's state is this cursor's.
        self.cursor = self.plan.cursor(self.sampler.epoch, self.sampler.start)
        self._loader: Any = None
        #: The position a :meth:`load_state_dict` restored, until iteration or
        #: :meth:`set_epoch` takes it up (so the two compose).
        self._resumed: tuple[int, int] | None = None

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int, start: int | None = None) -> None:
        """Iterate epoch ``epoch`` next, from step ``start`` (default: its first step).

        After :meth:`load_state_dict`, the ``DistributedSampler`` idiom
        (``for e in range(first, n): loader.set_epoch(e); for batch in
        loader: ...``) composes with the restored position: ``set_epoch`` of
        the restored epoch continues at the restored step (and of the next
        epoch, when the restored one was finished). Any other epoch would
        silently repeat or skip batches, so it is a ValueError unless
        ``start`` says where to begin.
        """
        resumed, self._resumed = self._resumed, None
        if start is None and resumed is not None:
            r_epoch, r_step = resumed
            finished = r_step == len(self.plan.epochs[r_epoch])
            if epoch == r_epoch:
                start = r_step
            elif not (finished and epoch == r_epoch + 1):
                self._resumed = resumed  # still pending: a corrected call may follow
                raise ValueError(
                    f"set_epoch({epoch}) after load_state_dict: the restored state continues "
                    f"epoch {r_epoch} at step {r_step}"
                    + (" (its end)" if finished else "")
                    + f"; call set_epoch({r_epoch if not finished else r_epoch + 1}) to continue "
                    f"there, or set_epoch({epoch}, start=0) to start epoch {epoch} deliberately"
                )
        self.sampler.set_epoch(epoch, 0 if start is None else start)
        self.cursor.seek(epoch, self.sampler.start)

    def __len__(self) -> int:
        return len(self.sampler)

    def _dataloader(self) -> Any:
        from torch.utils.data import DataLoader

        if self._loader is None or not self._loader_args.get("persistent_workers"):
            self._loader = DataLoader(self.dataset, batch_sampler=self.sampler, **self._loader_args)
        return self._loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._resumed = None
        self.cursor.seek(self.sampler.epoch, self.sampler.start)
        for batch in self._dataloader():
            if self.device is not None:
                batch = {
                    key: value.to(self.device, non_blocking=True) if hasattr(value, "to") else value
                    for key, value in batch.items()
                }
            self.cursor.advance()
            if self.kernel is not None:
                self.kernel.hook.laden_batch_produced(
                    batch=batch, epoch=self.epoch, step=batch["step"], kernel=self.kernel
                )
            yield batch
        self.sampler.start = 0  # the next iteration is a fresh pass

    def state_dict(self) -> dict[str, Any]:
        """Where this rank stands: its plan cursor's state (fingerprint, shard, epoch, step)."""
        return self.cursor.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue after the last batch a saved state had consumed (refusing another plan's)."""
        self.cursor.load_state_dict(state)
        epoch, step = self.cursor.position
        if epoch == self.plan.num_epochs:  # the end of the plan: the end of its last epoch
            epoch, step = epoch - 1, len(self.plan.epochs[epoch - 1])
            self.cursor.seek(epoch, step)
        self.sampler.set_epoch(epoch, step)
        self._resumed = (epoch, step)

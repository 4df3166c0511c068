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
  would. With ``memory_limit``, a batch is handed out as micro-batches while
  the process's resident memory is over the limit (:mod:`laden.memory`); the
  state records a step's split until its last micro-batch, so a resume
  finishes it the same way.

Importing this module does not import torch; building a loader does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from laden.collate import BatchLayout
from laden.errors import DataError, MissingDependencyError
from laden.memory import MemoryMonitor, micro_bounds
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
    #: Which micro-batch of its step this is, of how many (0 of 1: the whole batch).
    micro_batch: int
    micro_batches: int


def _make_batch(
    indices: list[int],
    epoch: int,
    step: int,
    max_length: int,
    padding: bool,
    micro: tuple[int, int] = (0, 1),
) -> PlanBatch:
    batch = PlanBatch(indices)
    batch.epoch, batch.step, batch.max_length, batch.padding = epoch, step, max_length, padding
    batch.micro_batch, batch.micro_batches = micro
    return batch


class PlanBatchSampler:
    """Yields the batches of one epoch of ``plan`` for ``rank`` of ``world_size``.

    A full plan is sharded here (``plan.shard(rank, world_size, remainder)``);
    an already sharded plan must match ``rank`` and ``world_size``. Use as
    ``DataLoader(dataset, batch_sampler=sampler)``; call :meth:`set_epoch`
    before each epoch, as with ``DistributedSampler``.

    :param monitor: a :class:`~laden.memory.MemoryMonitor`: each step is asked
        whether to go out as micro-batches (near-equal consecutive runs of the
        batch) when it is issued.
    """

    def __init__(
        self,
        plan: BatchPlan,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        *,
        remainder: str = "pad",
        monitor: MemoryMonitor | None = None,
    ) -> None:
        if plan.world_size == 1 and world_size > 1:
            plan = plan.shard(rank, world_size, remainder=remainder)
        elif (plan.rank, plan.world_size) != (rank, world_size):
            raise ValueError(
                f"the plan is rank {plan.rank} of {plan.world_size}, not {rank} of {world_size}"
            )
        self.plan = plan
        self.monitor = monitor
        self.epoch = 0
        self.start = 0
        #: ``(done, parts)``: step ``start`` goes on from micro-batch ``done`` of ``parts``.
        self.start_micro: tuple[int, int] | None = None
        #: When a loader sets it: ``(epoch, step, micro_batch, micro_batches)`` of each
        #: batch issued, in order; the loader pops them as it hands the batches out.
        self.issued: deque[tuple[int, int, int, int]] | None = None
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int, start: int = 0, micro: tuple[int, int] | None = None) -> None:
        """Iterate epoch ``epoch`` next, from step ``start`` (from micro-batch ``micro[0]`` of
        ``micro[1]`` of it, when given)."""
        if not 0 <= epoch < self.plan.num_epochs:
            raise ValueError(f"epoch {epoch} out of range for {self.plan.num_epochs} epochs")
        steps = len(self.plan.epochs[epoch])
        if not 0 <= start <= steps:
            raise ValueError(f"step {start} out of range for {steps} steps")
        self.epoch, self.start, self.start_micro = epoch, start, micro

    def __len__(self) -> int:
        return len(self.plan.epochs[self.epoch]) - self.start

    def __iter__(self) -> Iterator[PlanBatch]:
        plan = self.plan.epochs[self.epoch]
        order, offsets = plan.order, plan.offsets.tolist()
        max_length, padding = plan.max_length.tolist(), self.plan.padding[self.epoch].tolist()
        epoch, monitor, issued = self.epoch, self.monitor, self.issued
        for step in range(self.start, len(plan)):
            indices = order[offsets[step] : offsets[step + 1]].tolist()
            first, parts = 0, 1
            if step == self.start and self.start_micro is not None:
                first, parts = self.start_micro
            elif monitor is not None:
                parts = monitor.split(len(indices))
            if parts == 1:
                if issued is not None:
                    issued.append((epoch, step, 0, 1))
                yield _make_batch(indices, epoch, step, max_length[step], padding[step])
                continue
            bounds = micro_bounds(len(indices), parts)
            for i in range(first, parts):
                if issued is not None:
                    issued.append((epoch, step, i, parts))
                yield _make_batch(
                    indices[bounds[i] : bounds[i + 1]],
                    epoch,
                    step,
                    max_length[step],
                    padding[step],
                    (i, parts),
                )


def _passthrough(batch: Any) -> Any:
    """The DataLoader's ``collate_fn``: the dataset already collated the batch."""
    return batch


#: A CPU tensor up to this size crosses from a worker as pickled bytes; a larger one
#: through torch's shared memory. torch gives every tensor its own shared-memory
#: segment and file descriptor, which costs more than copying a small tensor: a
#: staged batch of ~17 small tensors went 7x slower with 2 workers than with none.
PICKLE_BYTES = 1 << 20
#: Split steps a loader's state lists at most (the latest; ``split_count`` counts them all),
#: so a checkpoint does not grow with the run.
SPLIT_HISTORY = 1024


def _rebuild(batch: dict[str, Any], as_tensor: tuple[str, ...]) -> dict[str, Any]:
    import torch

    for key in as_tensor:
        batch[key] = torch.from_numpy(batch[key])
    return batch


class _WorkerBatch(dict[str, Any]):
    """A collated batch leaving a worker: small CPU tensors travel as numpy bytes.

    Unpickled in the main process as a plain ``dict`` of the same tensors.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        import torch

        batch: dict[str, Any] = dict(self)
        moved = []
        for key, value in self.items():
            if (
                isinstance(value, torch.Tensor)
                and value.device.type == "cpu"
                and value.dtype != torch.bfloat16  # numpy has none
                and not value.requires_grad
                and value.layout == torch.strided
                and value.nbytes <= PICKLE_BYTES
            ):
                try:  # float8, complex32, conj/neg views: torch's own path, as before
                    batch[key] = value.numpy()
                except (TypeError, RuntimeError):
                    continue
                moved.append(key)
        return _rebuild, (batch, tuple(moved))


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
        from torch.utils.data import get_worker_info

        return _WorkerBatch(batch) if get_worker_info() is not None else batch

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
    :param memory_limit: resident memory (bytes, or ``"25%"`` of physical
        memory) over which a step goes out as micro-batches (``memory_parts``
        of them, near-equal); such a batch carries ``micro_batch`` (0, 1, ...)
        and ``micro_batches``. Memory is read as a step is issued, which with
        workers is up to their prefetch ahead of the step handed out.
    :param memory_probe: what reads the resident memory (default: this
        process's, :func:`laden.memory.process_rss`).
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
        memory_limit: int | str | Mapping[str, Any] | None = None,
        memory_parts: int = 2,
        memory_probe: Callable[[], int] | None = None,
    ) -> None:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("loader", "PlanLoader", ["torch"], "torch") from exc
        monitor = None
        if memory_limit is not None:
            probe = {"probe": memory_probe} if memory_probe is not None else {}
            monitor = MemoryMonitor(limit=memory_limit, parts=memory_parts, **probe)
        self.sampler = PlanBatchSampler(
            plan, rank, world_size, epoch, remainder=remainder, monitor=monitor
        )
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
        #: ``(done, parts)`` while the step at the cursor is handed out in parts.
        self._micro: tuple[int, int] | None = None
        #: ``[epoch, step, parts]`` of the last :data:`SPLIT_HISTORY` steps handed out in
        #: micro-batches (a record; resume needs only the step in progress), and their count.
        self.split_steps: list[list[int]] = []
        self.split_count = 0

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
        micro = None
        if start is None and resumed is not None:
            r_epoch, r_step = resumed
            finished = r_step == len(self.plan.epochs[r_epoch])
            if epoch == r_epoch:
                start, micro = r_step, self._micro
            elif not (finished and epoch == r_epoch + 1):
                self._resumed = resumed  # still pending: a corrected call may follow
                raise ValueError(
                    f"set_epoch({epoch}) after load_state_dict: the restored state continues "
                    f"epoch {r_epoch} at step {r_step}"
                    + (" (its end)" if finished else "")
                    + f"; call set_epoch({r_epoch if not finished else r_epoch + 1}) to continue "
                    f"there, or set_epoch({epoch}, start=0) to start epoch {epoch} deliberately"
                )
        self.sampler.set_epoch(epoch, 0 if start is None else start, micro)
        self._micro = micro
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
        self._micro = self.sampler.start_micro
        issued: deque[tuple[int, int, int, int]] = deque()
        self.sampler.issued = issued
        for batch in self._dataloader():
            if self.device is not None:
                batch = {
                    key: value.to(self.device, non_blocking=True) if hasattr(value, "to") else value
                    for key, value in batch.items()
                }
            # The DataLoader hands batches out in the order the sampler issued them.
            epoch, step, micro, parts = issued.popleft()
            if parts > 1:
                batch = {**batch, "micro_batch": micro, "micro_batches": parts}
            if micro + 1 < parts:
                self._micro = (micro + 1, parts)
            else:
                self._micro = None
                if parts > 1:
                    self.split_steps.append([epoch, step, parts])
                    self.split_count += 1
                    del self.split_steps[:-SPLIT_HISTORY]
                self.cursor.advance()
            if self.kernel is not None:
                self.kernel.hook.laden_batch_produced(
                    batch=batch, epoch=self.epoch, step=batch["step"], kernel=self.kernel
                )
            yield batch
        self.sampler.start, self.sampler.start_micro = 0, None  # the next iteration: a fresh pass

    def state_dict(self) -> dict[str, Any]:
        """Where this rank stands: its plan cursor's state (fingerprint, shard, epoch, step),
        the micro-batches of that step already handed out (``micro_batch`` of
        ``micro_batches``; 0 of 1 when it is not split), the latest steps split
        (``split_steps``, at most :data:`SPLIT_HISTORY`) and how many were (``split_count``)."""
        done, parts = self._micro or (0, 1)
        return {
            **self.cursor.state_dict(),
            "micro_batch": done,
            "micro_batches": parts,
            "split_steps": [list(s) for s in self.split_steps],
            "split_count": self.split_count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue after the last batch a saved state had consumed (refusing another plan's).

        A step the state left part-way through goes on with its remaining
        micro-batches, split as before, whatever the memory is now.
        """
        self.cursor.load_state_dict(state)
        micro = _micro_of(state)
        epoch, step = self.cursor.position
        steps = len(self.plan.epochs[epoch]) if epoch < self.plan.num_epochs else 0
        if micro is not None and step >= steps:
            raise DataError(
                f"the state is part-way through step {step} of epoch {epoch}, which has "
                f"{steps} steps"
            )
        if epoch == self.plan.num_epochs:  # the end of the plan: the end of its last epoch
            epoch, step = epoch - 1, len(self.plan.epochs[epoch - 1])
            self.cursor.seek(epoch, step)
        self.sampler.set_epoch(epoch, step, micro)
        self._micro = micro
        self.split_steps = [list(s) for s in state.get("split_steps") or ()][-SPLIT_HISTORY:]
        self.split_count = int(state.get("split_count", len(self.split_steps)))
        self._resumed = (epoch, step)


def _micro_of(state: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(done, parts)`` of a state part-way through a split step, else None (checked)."""
    done, parts = state.get("micro_batch", 0), state.get("micro_batches", 1)
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (done, parts))
    if not ok or parts < 1 or not 0 <= done < parts:
        raise DataError(
            f"the state's micro_batch {done!r} of micro_batches {parts!r} does not fit: "
            "expected 0 <= micro_batch < micro_batches"
        )
    return (done, parts) if done > 0 else None

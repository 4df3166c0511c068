"""Batch plans: every batch of every epoch fixed ahead of training.

A :class:`BatchPlan` is a frozen record: the run config, the length table's
digest, the optional pack plan and one columnar :class:`~laden.records.EpochPlan`
per epoch. Its fingerprint covers all of them, so two plans with the same
fingerprint give the same batches. This module builds plans and fingerprints
them; the family does the rest: :mod:`~laden.plan.shard` (per rank, the same
number of steps on every rank), :mod:`~laden.plan.verify` (against a rebuild),
:mod:`~laden.plan.store` (save and load) and :mod:`~laden.plan.cursor` (where
iteration stands, resumable at any ``(epoch, step)``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from laden.digest import array_digest, canonical_json, digest
from laden.errors import ConfigError, DataError
from laden.records import (
    BatchSpec,
    EpochPlan,
    LengthTable,
    PackPlan,
)
from laden.serde import config_of

if TYPE_CHECKING:
    from laden.config import RunConfig
    from laden.kernel import Kernel
    from laden.memory import MemoryBudget
    from laden.plan.cursor import PlanCursor
    from laden.plan.verify import PlanCheck

__all__ = ["BatchPlan"]


def _batch_tokens(plan: EpochPlan, lengths: np.ndarray) -> np.ndarray:
    """Real tokens of each batch (lengths capped at the batch's max_length)."""
    if not len(plan):
        return np.zeros(0, dtype=np.int64)
    capped = np.minimum(lengths[plan.order], np.repeat(plan.max_length, plan.batch_sizes))
    sums = np.add.reduceat(capped, plan.offsets[:-1]) if capped.size else np.zeros(len(plan))
    out: np.ndarray = np.where(plan.batch_sizes > 0, sums, 0).astype(np.int64)
    return out


@attrs.frozen(kw_only=True, eq=False)
class BatchPlan:
    """Every batch of every epoch, with the config and inputs that made them.

    Build with :meth:`build` (or :meth:`from_config`), never by hand. Units
    are samples, or packs of ``pack`` when a packer was used. A plan never
    changes once built; where an iteration over it stands is a
    :meth:`cursor`'s business.
    """

    config: Mapping[str, Any]
    table_digest: str
    num_samples: int
    num_units: int
    epochs: tuple[EpochPlan, ...]
    batch_tokens: tuple[np.ndarray, ...]
    pack: PackPlan | None = None
    rank: int = 0
    world_size: int = 1
    #: Per epoch, which batches are repeats that only pad a shard (default: none).
    padding: tuple[np.ndarray, ...] = ()
    shard_report: Mapping[str, Any] = attrs.field(factory=dict)
    #: Where the inputs were (absolute paths and digests of the length cache and
    #: dataset), so ``laden write`` finds them; not part of the fingerprint.
    inputs: Mapping[str, Any] = attrs.field(factory=dict)
    fingerprint: str = attrs.field(init=False, default="")

    def __attrs_post_init__(self) -> None:
        # The two derived fields of a frozen record, set once here.
        if not self.padding:
            padding = tuple(np.zeros(len(e), dtype=bool) for e in self.epochs)
            object.__setattr__(self, "padding", padding)
        object.__setattr__(self, "fingerprint", self._digest())

    # ----------------------------------------------------------------- build

    @classmethod
    def build(
        cls,
        table: LengthTable,
        sampler: Any,
        packer: Any = None,
        *,
        epochs: int = 1,
        seed: int = 0,
        kernel: Kernel | None = None,
        memory_budget: MemoryBudget | Mapping[str, Any] | None = None,
        backend: Any = None,
    ) -> BatchPlan:
        """Plan ``epochs`` epochs of ``table`` with ``sampler`` (over packs when ``packer``).

        Announced through ``laden_plan_built`` on ``kernel`` when one is given.

        :param memory_budget: cap every batch's collated bytes: a
            :class:`~laden.memory.MemoryBudget` (resolved here, once, and
            recorded in the config) or a recorded one (``plan.config["memory_budget"]``).
            Batches over it are split (:func:`~laden.memory.cap_epoch`).
        :param backend: the backend whose collation the budget counts (default:
            int64 token columns, an upper bound of every ``laden``-profile backend).
        """
        if epochs < 1:
            raise ConfigError(f"must be >= 1, got {epochs}", path=("epochs",))
        pack = packer.pack(table) if packer is not None else None
        units = pack.to_length_table() if pack is not None else table
        plans = tuple(_plan_epochs(sampler, units, epochs, seed))
        budget = None
        if memory_budget is not None:
            budget = _cap_plans(memory_budget, backend, table, units, pack)
            plans = tuple(budget[1](p) for p in plans)
        batch_tokens = tuple(_batch_tokens(p, units.length) for p in plans)
        # What each epoch leaves out or cuts, counted in samples and tokens, goes into the
        # epoch's report (saved with the plan, outside the fingerprint).
        plans = tuple(
            attrs.evolve(p, report={**p.report, "losses": _losses(p, t, table, units, pack)})
            for p, t in zip(plans, batch_tokens, strict=True)
        )
        plan = cls(
            config={
                "sampler": config_of(sampler),
                "packer": config_of(packer) if packer is not None else None,
                "seed": seed,
                "epochs": epochs,
                **({"memory_budget": budget[0]} if budget is not None else {}),
            },
            table_digest=table.digest(),
            num_samples=len(table),
            num_units=len(units),
            epochs=plans,
            batch_tokens=batch_tokens,
            pack=pack,
            inputs=_inputs_of(table),
        )
        if kernel is not None:
            kernel.hook.laden_plan_built(plan=plan, kernel=kernel)
        return plan

    @classmethod
    def from_config(
        cls, table: LengthTable, config: RunConfig | Mapping[str, Any], *, kernel: Kernel
    ) -> BatchPlan:
        """Build from a run config (a :class:`~laden.config.RunConfig` or its plain data)."""
        from laden.config import RunConfig

        if not isinstance(config, RunConfig):
            config = RunConfig.from_mapping(config, kernel=kernel)
        if config.sampler is None:
            raise ConfigError("a plan needs a [sampler] section", source=config.source_file)
        return cls.build(
            table,
            config.sampler,
            config.packer,
            epochs=config.epochs,
            seed=config.seed,
            kernel=kernel,
            memory_budget=config.memory_budget,
            backend=config.backend,
        )

    # ------------------------------------------------------------ properties

    @property
    def num_epochs(self) -> int:
        return len(self.epochs)

    @property
    def steps(self) -> list[int]:
        """Steps (batches) per epoch."""
        return [len(e) for e in self.epochs]

    @property
    def total_steps(self) -> int:
        return sum(self.steps)

    @property
    def tokens(self) -> list[int]:
        """Real tokens per epoch (padding batches not counted)."""
        return [int(t[~p].sum()) for t, p in zip(self.batch_tokens, self.padding, strict=True)]

    @property
    def padded_tokens(self) -> list[int]:
        """Tokens with padding per epoch: sum of batch size x max_length."""
        return [e.padded_tokens() for e in self.epochs]

    def losses(self) -> dict[str, Any]:
        """What the overflow policies left out or cut, per epoch (of the whole plan).

        ``dropped_*`` counts samples (segments, when packed) that are in no
        batch, ``truncated_*`` samples that lost tokens and the tokens lost;
        ``split_samples`` were cut into pieces with every token kept;
        ``over_budget_batches`` hold one sample longer than the budget alone.
        Counts a plan saved before laden recorded them cannot tell are ``None``.
        """
        out: dict[str, Any] = {key: [] for key in (*_LOSS_KEYS, "over_budget_batches")}
        for e in self.epochs:
            recorded = e.report.get("losses")
            if isinstance(recorded, Mapping):
                counts = {k: recorded.get(k) for k in _LOSS_KEYS}
            else:  # an older plan: what its arrays still tell
                counts = _losses_without_table(e, self.pack)
            for key in _LOSS_KEYS:
                value = counts[key]
                out[key].append(None if value is None else int(value))
            out["over_budget_batches"].append(int(e.report.get("alone", 0) or 0))
        pack_report = self.pack.report if self.pack is not None else {}
        out["split_samples"] = int(pack_report.get("split_samples", 0) or 0)
        sampler = self.config.get("sampler") or {}
        packer = self.config.get("packer") or {}
        out["overflow"] = {"sampler": sampler.get("overflow"), "packer": packer.get("overflow")}
        return out

    def warnings(self) -> list[str]:
        """Problems of this plan or shard a user should hear about, in plain words."""
        out = []
        if self.world_size > 1:
            where = f"rank {self.rank} of {self.world_size}"
            only = sum(1 for p in self.padding if p.size and bool(p.all()))
            if only:
                out.append(
                    f"{where} holds only padding batches in {only} of {self.num_epochs} "
                    "epoch(s) (more ranks than batches): it trains on nothing there"
                )
            empty = sum(1 for e in self.epochs if not len(e))
            if empty and any(self.shard_report.get("dropped_batches") or ()):
                out.append(
                    f"{where} holds no batches in {empty} of {self.num_epochs} epoch(s): "
                    "remainder 'drop' dropped them all (more ranks than batches)"
                )
        return out

    def memory(self) -> dict[str, Any] | None:
        """The memory budget as recorded (cap, how it was reached) and, per epoch, the
        batches it split and the parts they became; None without a budget."""
        recorded = self.config.get("memory_budget")
        if not recorded:
            return None
        per_epoch = [e.report.get("memory") or {} for e in self.epochs]
        return {
            "bytes": recorded["bytes"],
            "percent": recorded.get("percent"),
            "available": recorded.get("available"),
            "oversize": recorded.get("oversize"),
            "layout": (recorded.get("model") or {}).get("layout"),
            **{
                key: [m.get(key) for m in per_epoch]
                for key in ("split_batches", "extra_batches", "oversize_units")
            },
        }

    def summary(self) -> dict[str, Any]:
        """Plain data for ``laden plan info``: counts, what was dropped or cut, warnings."""
        return {
            **self.losses(),
            "memory_budget": self.memory(),
            "warnings": self.warnings(),
            "fingerprint": self.fingerprint,
            "epochs": self.num_epochs,
            "steps": self.steps,
            "total_steps": self.total_steps,
            "samples": self.num_samples,
            "units": self.num_units,
            "packed": self.pack is not None,
            "tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "rank": self.rank,
            "world_size": self.world_size,
            "padding_batches": [int(p.sum()) for p in self.padding],
            "shard_report": dict(self.shard_report),
            "config": dict(self.config),
            "table_digest": self.table_digest,
            "inputs": dict(self.inputs),
        }

    def _identity(self) -> dict[str, Any]:
        """What the plan was made from and for: the head of the fingerprint and of meta.json."""
        return {
            "config": self.config,
            "table_digest": self.table_digest,
            "num_samples": self.num_samples,
            "num_units": self.num_units,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def _digest(self) -> str:
        head = canonical_json(self._identity())
        parts: list[bytes | str] = [head]
        if self.pack is not None:
            p = self.pack
            parts.append(array_digest(p.order, p.offsets, p.seg_length, p.seg_start, p.dropped))
        for e, pad in zip(self.epochs, self.padding, strict=True):
            parts.append(e.digest())
            parts.append(array_digest(pad.astype(np.uint8)))
        return digest(*parts)

    # ------------------------------------------------------------- iteration

    def iter_from(self, epoch: int = 0, step: int = 0) -> Iterator[tuple[int, int, BatchSpec]]:
        """``(epoch, step, batch)`` from ``(epoch, step)`` to the end of the last epoch."""
        if not 0 <= epoch <= self.num_epochs:
            raise IndexError(f"epoch {epoch} out of range for {self.num_epochs} epochs")
        for e in range(epoch, self.num_epochs):
            plan, pad = self.epochs[e], self.padding[e]
            for s in range(step if e == epoch else 0, len(plan)):
                yield e, s, attrs.evolve(plan[s], padding=bool(pad[s]))

    def __iter__(self) -> Iterator[tuple[int, int, BatchSpec]]:
        """Every ``(epoch, step, batch)`` from the start; :meth:`cursor` to resume."""
        return self.iter_from()

    def cursor(self, epoch: int = 0, step: int = 0) -> PlanCursor:
        """A resumable position in this plan (``state_dict``/``load_state_dict``)."""
        from laden.plan.cursor import PlanCursor

        return PlanCursor(self, epoch, step)

    # -------------------------------------------------- the family's methods

    def shard(self, rank: int, world_size: int, *, remainder: str = "pad") -> BatchPlan:
        """Rank ``rank``'s batches: disjoint, the same number of steps on every rank.

        At each step the ranks get batches of similar token cost (batches are
        sorted by padded tokens and dealt out ``world_size`` at a time; the
        steps are then shuffled, seeded by the plan's seed and epoch), so no
        rank waits long for the slowest. When the batches do not divide
        evenly, ``remainder="pad"`` repeats batches marked as padding
        (``BatchSpec.padding``; skip them in the loss) and ``"drop"`` drops the
        cheapest, counted in ``shard_report``. See :mod:`laden.plan.shard`.
        """
        from laden.plan.shard import shard_plan

        return shard_plan(self, rank, world_size, remainder=remainder)

    def require_table(self, table: LengthTable) -> None:
        """Raise a DataError unless ``table`` is the length table the plan was built from."""
        digest = table.digest()
        if digest != self.table_digest:
            raise DataError(
                f"the length table does not match the plan (digest {digest}, "
                f"the plan was built from {self.table_digest})"
            )

    def verify(self, table: LengthTable, *, kernel: Kernel | None = None) -> PlanCheck:
        """Rebuild from the config and ``table`` and compare, batch by batch.

        :param kernel: creates the recorded sampler and packer (default: laden's
            builtins only, :func:`~laden.kernel.builtin_kernel`).
        """
        from laden.plan.verify import verify_plan

        return verify_plan(self, table, kernel=kernel)

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
        """Write the plan as a directory (replaced atomically); returns its path.

        ``directory`` must be new, empty, or (with ``overwrite``) a saved plan:
        anything else is a ConfigError and is left untouched.
        """
        from laden.plan.store import save_plan

        return save_plan(self, directory, overwrite=overwrite)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BatchPlan:
        """Read a saved plan; a missing, truncated or altered file is named in the error."""
        from laden.plan.store import load_plan

        return load_plan(directory)

    def recorded_lengths(self) -> str:
        """The absolute path of the length cache the plan was built from, as recorded.

        A DataError when the plan records none (saved by an older laden, or
        built from a table that was never saved) or the cache is gone.
        """
        from laden.plan.store import recorded_lengths

        return recorded_lengths(self)

    def load_inputs(
        self,
        *,
        lengths: str | os.PathLike[str] | None = None,
        dataset: str | os.PathLike[str] | None = None,
    ) -> tuple[LengthTable, str]:
        """The length table and dataset path this plan was built from.

        Given paths win; otherwise the ones recorded when the plan was built
        (absolute, so this works from any directory). A recorded input that
        moved or changed is a DataError naming it.
        """
        from laden.plan.store import load_inputs

        return load_inputs(self, lengths=lengths, dataset=dataset)

    def __repr__(self) -> str:
        shard = f" rank {self.rank}/{self.world_size}" if self.world_size > 1 else ""
        return (
            f"<BatchPlan {self.fingerprint[:12]} {self.num_epochs} epochs, "
            f"{self.total_steps:,} steps, {self.num_units:,} units{shard}>"
        )


def _inputs_of(table: LengthTable) -> dict[str, Any]:
    """What a plan records of its inputs: the length cache and dataset, where known."""
    meta = table.meta
    inputs: dict[str, Any] = {}
    if meta.get("cache_path"):
        inputs["lengths"] = {"path": meta["cache_path"], "table_digest": table.digest()}
    if meta.get("dataset"):
        inputs["dataset"] = {"path": meta["dataset"], "digest": meta.get("dataset_digest")}
    if meta.get("tokenizer_file"):
        inputs["tokenizer_file"] = dict(meta["tokenizer_file"])
    return inputs


_LOSS_KEYS = ("dropped_samples", "dropped_tokens", "truncated_samples", "truncated_tokens")


def _losses(
    plan: EpochPlan,
    tokens: np.ndarray,
    table: LengthTable,
    units: LengthTable,
    pack: PackPlan | None,
) -> dict[str, int]:
    """Samples and tokens an epoch leaves out or cuts, the packer's and the sampler's.

    ``tokens`` are the real tokens of each batch (lengths capped at its max_length).
    """
    in_batches = units.length[plan.order]
    cut = in_batches > np.repeat(plan.max_length, plan.batch_sizes)
    truncated_tokens = int(in_batches.sum()) - int(tokens.sum())
    if pack is None:
        return {
            "dropped_samples": int(plan.dropped.size),
            "dropped_tokens": int(units.length[plan.dropped].sum()),
            "truncated_samples": int(cut.sum()),
            "truncated_tokens": truncated_tokens,
        }
    # Units are packs: the packer's losses hold in every epoch; the sampler's are
    # counted in the segments of the packs it dropped or cut.
    covered = np.bincount(pack.order, weights=pack.seg_length, minlength=len(table))
    packer_cut = int(((covered > 0) & (covered < table.length)).sum())
    sizes, pack_lengths = np.diff(pack.offsets), pack.pack_lengths
    cap = np.full(len(pack), np.iinfo(np.int64).max, dtype=np.int64)
    cap[plan.order] = np.repeat(plan.max_length, plan.batch_sizes)
    seg_end = np.cumsum(pack.seg_length) - np.repeat(np.cumsum(pack_lengths) - pack_lengths, sizes)
    sampler_cut = int((seg_end > np.repeat(cap, sizes)).sum())
    report = pack.report
    return {
        "dropped_samples": int(report.get("dropped_samples", 0)) + int(sizes[plan.dropped].sum()),
        "dropped_tokens": int(report.get("dropped_tokens", 0))
        + int(pack_lengths[plan.dropped].sum()),
        "truncated_samples": packer_cut + sampler_cut,
        "truncated_tokens": int(report.get("truncated_tokens", 0)) + truncated_tokens,
    }


def _losses_without_table(plan: EpochPlan, pack: PackPlan | None) -> dict[str, int | None]:
    """What a plan saved without recorded losses still tells: counts of units, few tokens."""
    if pack is None:
        return {
            "dropped_samples": int(plan.dropped.size),
            "dropped_tokens": None,
            "truncated_samples": int(plan.truncated.size),
            "truncated_tokens": None,
        }
    sizes, report = np.diff(pack.offsets), pack.report
    return {
        "dropped_samples": int(report.get("dropped_samples", 0)) + int(sizes[plan.dropped].sum()),
        "dropped_tokens": int(report.get("dropped_tokens", 0))
        + int(pack.pack_lengths[plan.dropped].sum()),
        "truncated_samples": None,
        "truncated_tokens": None,
    }


def _cap_plans(
    memory_budget: MemoryBudget | Mapping[str, Any],
    backend: Any,
    table: LengthTable,
    units: LengthTable,
    pack: PackPlan | None,
) -> tuple[dict[str, Any], Callable[[EpochPlan], EpochPlan]]:
    """The recorded budget and what splits an epoch's batches under it."""
    from laden.memory import MemoryBudget, cap_epoch, resolve_budget

    if isinstance(memory_budget, MemoryBudget):
        recorded = resolve_budget(memory_budget, table, backend)
    else:
        recorded = dict(memory_budget)
    segments = np.diff(pack.offsets) if pack is not None else None

    def member(unit: int) -> str:
        if pack is not None:
            inside = pack.order[pack.offsets[unit] : pack.offsets[unit + 1]].tolist()
            return f"pack {unit} (samples {inside[:8]}{'...' if len(inside) > 8 else ''})"
        named = f" (id {table.ids[unit].item()!r})" if table.ids is not None else ""
        return f"sample {unit}{named}"

    def cap(plan: EpochPlan) -> EpochPlan:
        return cap_epoch(
            plan,
            recorded,
            units.length,
            key=units.key,
            stage_length=getattr(units, "stage_length", None),
            segments=segments,
            members=member,
        )

    return recorded, cap


def _plan_epochs(sampler: Any, units: LengthTable, epochs: int, seed: int) -> Iterator[EpochPlan]:
    for epoch in range(epochs):
        yield sampler.plan_epoch(units, epoch=epoch, seed=seed)

"""Batch plans: every batch of every epoch fixed ahead of training.

A :class:`BatchPlan` holds the run config, the length table's digest, the
optional pack plan and one columnar :class:`~laden.records.EpochPlan` per
epoch. Its fingerprint covers all of them, so two plans with the same
fingerprint give the same batches. A plan can be saved and loaded (zstd
arrays + JSON metadata with checksums, written atomically), verified against
a rebuild, sharded per rank with the same number of steps on every rank, and
resumed at any ``(epoch, step)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from laden.batching import smallest_uint
from laden.errors import ConfigError, DataError
from laden.io import (
    atomic_directory,
    plain_json,
    read_array,
    read_json,
    write_array,
    write_json,
)
from laden.records import (
    BatchSpec,
    EpochPlan,
    LengthTable,
    PackPlan,
    array_digest,
    csr_take,
    offsets_from_sizes,
)
from laden.seeding import rng_for
from laden.serde import canonical_json, config_of, digest

if TYPE_CHECKING:
    from laden.config import RunConfig
    from laden.kernel import Kernel

__all__ = ["FORMAT_VERSION", "KIND", "BatchPlan", "PlanCheck"]

#: Version of the on-disk layout; a newer one is refused, older ones are read.
FORMAT_VERSION = 1
#: The ``kind`` in a saved plan's meta.json.
KIND = "laden.plan"

_EMPTY = np.zeros(0, dtype=np.int64)


def _take_batches(plan: EpochPlan, batches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, offsets)`` of the given batches of ``plan``, in that order (vectorized)."""
    where, offsets = csr_take(plan.offsets, batches)
    return plan.order[where], offsets


def _batch_tokens(plan: EpochPlan, lengths: np.ndarray) -> np.ndarray:
    """Real tokens of each batch (lengths capped at the batch's max_length)."""
    if not len(plan):
        return np.zeros(0, dtype=np.int64)
    capped = np.minimum(lengths[plan.order], np.repeat(plan.max_length, plan.batch_sizes))
    sums = np.add.reduceat(capped, plan.offsets[:-1]) if capped.size else np.zeros(len(plan))
    out: np.ndarray = np.where(plan.batch_sizes > 0, sums, 0).astype(np.int64)
    return out


@attrs.frozen(kw_only=True)
class PlanCheck:
    """The result of :meth:`BatchPlan.verify`: ``ok``, or where the first difference is."""

    ok: bool
    reason: str = ""
    epoch: int | None = None
    batch: int | None = None

    def __bool__(self) -> bool:
        return self.ok


@attrs.define(kw_only=True, eq=False)
class BatchPlan:
    """Every batch of every epoch, with the config and inputs that made them.

    Build with :meth:`build` (or :meth:`from_config`), never by hand. Units
    are samples, or packs of ``pack`` when a packer was used.
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
    padding: tuple[np.ndarray, ...] = ()
    shard_report: Mapping[str, Any] = attrs.field(factory=dict)
    #: Where the inputs were (absolute paths and digests of the length cache and
    #: dataset), so ``laden write`` finds them; not part of the fingerprint.
    inputs: Mapping[str, Any] = attrs.field(factory=dict)
    fingerprint: str = ""
    _cursor: tuple[int, int] = (0, 0)

    def __attrs_post_init__(self) -> None:
        if not self.padding:
            self.padding = tuple(np.zeros(len(e), dtype=bool) for e in self.epochs)
        self.fingerprint = self._digest()

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
    ) -> BatchPlan:
        """Plan ``epochs`` epochs of ``table`` with ``sampler`` (over packs when ``packer``).

        Announced through ``laden_plan_built`` on ``kernel`` when one is given.
        """
        if epochs < 1:
            raise ConfigError(f"must be >= 1, got {epochs}", path=("epochs",))
        pack = packer.pack(table) if packer is not None else None
        units = pack.to_length_table() if pack is not None else table
        plans = tuple(_plan_epochs(sampler, units, epochs, seed))
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

    def summary(self) -> dict[str, Any]:
        """Plain data for ``laden plan info``: counts, what was dropped or cut, warnings."""
        return {
            **self.losses(),
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
        """From the resume point (see :meth:`load_state_dict`), advancing it as it goes."""
        for e, s, spec in self.iter_from(*self._cursor):
            self._cursor = (e, s + 1) if s + 1 < len(self.epochs[e]) else (e + 1, 0)
            yield e, s, spec

    def state_dict(self) -> dict[str, Any]:
        """Where iteration stands: the next ``(epoch, step)``, tied to this plan."""
        return {"fingerprint": self.fingerprint, "epoch": self._cursor[0], "step": self._cursor[1]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at a saved position; refuses a state of another plan."""
        if state.get("fingerprint") != self.fingerprint:
            raise DataError(
                f"the state belongs to plan {state.get('fingerprint')}, not {self.fingerprint}"
            )
        epoch, step = int(state["epoch"]), int(state["step"])
        if not (0 <= epoch <= self.num_epochs) or (
            epoch < self.num_epochs and not 0 <= step <= len(self.epochs[epoch])
        ):
            raise DataError(f"no step {step} in epoch {epoch} of this plan")
        self._cursor = (epoch, step)

    # -------------------------------------------------------------- sharding

    def shard(self, rank: int, world_size: int, *, remainder: str = "pad") -> BatchPlan:
        """Rank ``rank``'s batches: disjoint, the same number of steps on every rank.

        At each step the ranks get batches of similar token cost (batches are
        sorted by padded tokens and dealt out ``world_size`` at a time; the
        steps are then shuffled, seeded by the plan's seed and epoch), so no
        rank waits long for the slowest. When the batches do not divide
        evenly, ``remainder="pad"`` repeats batches marked as padding
        (``BatchSpec.padding``; skip them in the loss) and ``"drop"`` drops the
        cheapest, counted in ``shard_report``.
        """
        if self.world_size != 1:
            raise ConfigError(
                f"this plan is already a shard (rank {self.rank} of {self.world_size}); "
                "shard the full plan"
            )
        if world_size < 1:
            raise ConfigError(f"must be >= 1, got {world_size}", path=("world_size",))
        if not 0 <= rank < world_size:
            raise ConfigError(f"{rank} is not in 0..{world_size - 1}", path=("rank",))
        if remainder not in ("pad", "drop"):
            raise ConfigError(f"must be 'pad' or 'drop', got {remainder!r}", path=("remainder",))
        epochs, tokens, padding = [], [], []
        report: dict[str, Any] = {
            "remainder": remainder,
            "padding_batches": [],
            "dropped_batches": [],
            "dropped_samples": [],
            "dropped_tokens": [],
            "step_imbalance": [],
        }
        seed = int(self.config.get("seed", 0))
        for e, plan in enumerate(self.epochs):
            groups, pad = _deal(plan, world_size, remainder, rng_for(seed, e, "shard"))
            at = np.arange(groups.shape[0])
            mine, mine_pad = groups[at, (rank + at) % world_size], pad[at, (rank + at) % world_size]
            order, offsets = _take_batches(plan, mine)
            epochs.append(
                EpochPlan(
                    order=order,
                    offsets=offsets,
                    max_length=plan.max_length[mine],
                    bucket=plan.bucket[mine],
                    epoch=plan.epoch,
                    seed=plan.seed,
                    dropped=plan.dropped,
                    truncated=plan.truncated,
                    report=plan.report,
                )
            )
            tokens.append(self.batch_tokens[e][mine])
            padding.append(mine_pad)
            used = np.zeros(len(plan), dtype=bool)
            used[groups[~pad]] = True
            report["padding_batches"].append(int(pad.sum()))
            report["dropped_batches"].append(int((~used).sum()))
            report["dropped_samples"].append(int(plan.batch_sizes[~used].sum()))
            report["dropped_tokens"].append(int(self.batch_tokens[e][~used].sum()))
            cost = (plan.batch_sizes * plan.max_length)[groups]
            if cost.size:  # how much of the slowest rank's step the fastest rank waits
                top = cost.max(axis=1)
                spread = (top - cost.min(axis=1)) / np.maximum(top, 1)
                report["step_imbalance"].append(round(float(spread.mean()), 6))
            else:
                report["step_imbalance"].append(0.0)
        return BatchPlan(
            config=self.config,
            table_digest=self.table_digest,
            num_samples=self.num_samples,
            num_units=self.num_units,
            epochs=tuple(epochs),
            batch_tokens=tuple(tokens),
            pack=self.pack,
            rank=rank,
            world_size=world_size,
            padding=tuple(padding),
            shard_report=report,
            inputs=self.inputs,
        )

    # ---------------------------------------------------------------- verify

    def require_table(self, table: LengthTable) -> None:
        """Raise a DataError unless ``table`` is the length table the plan was built from."""
        digest = table.digest()
        if digest != self.table_digest:
            raise DataError(
                f"the length table does not match the plan (digest {digest}, "
                f"the plan was built from {self.table_digest})"
            )

    def verify(self, table: LengthTable, *, kernel: Kernel | None = None) -> PlanCheck:
        """Rebuild from the config and ``table`` and compare, batch by batch."""
        from laden.kernel import Kernel

        digest = table.digest()
        if digest != self.table_digest:
            return PlanCheck(
                ok=False,
                reason=f"the length table differs (digest {digest}, "
                f"the plan was built from {self.table_digest})",
            )
        kernel = kernel or Kernel()
        sampler = kernel.create("sampler", self.config["sampler"], path=("sampler",))
        packer_config = self.config.get("packer")
        packer = kernel.create("packer", packer_config, path=("packer",)) if packer_config else None
        rebuilt = BatchPlan.build(
            table,
            sampler,
            packer,
            epochs=int(self.config["epochs"]),
            seed=int(self.config["seed"]),
        )
        if self.world_size > 1:
            rebuilt = rebuilt.shard(
                self.rank, self.world_size, remainder=self.shard_report.get("remainder", "pad")
            )
        if self.pack is not None and rebuilt.pack is not None:
            names = ("order", "offsets", "seg_length", "seg_start")
            for name in names:
                if not np.array_equal(getattr(self.pack, name), getattr(rebuilt.pack, name)):
                    return PlanCheck(ok=False, reason=f"the pack plan differs ({name})")
        if rebuilt.num_epochs != self.num_epochs:
            return PlanCheck(
                ok=False, reason=f"{self.num_epochs} epochs, a rebuild has {rebuilt.num_epochs}"
            )
        for e, (mine, theirs) in enumerate(zip(self.epochs, rebuilt.epochs, strict=True)):
            batch = _first_difference(mine, theirs, self.padding[e], rebuilt.padding[e])
            if batch is not None:
                return PlanCheck(
                    ok=False,
                    reason=f"epoch {e}, batch {batch} differs from a rebuild",
                    epoch=e,
                    batch=batch,
                )
        if rebuilt.fingerprint != self.fingerprint:
            return PlanCheck(ok=False, reason="the fingerprint differs from a rebuild")
        return PlanCheck(ok=True)

    # ------------------------------------------------------------ save, load

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
        """Write the plan as a directory (replaced atomically); returns its path.

        ``directory`` must be new, empty, or (with ``overwrite``) a saved plan:
        anything else is a ConfigError and is left untouched.
        """
        target = Path(directory)
        with atomic_directory(target, kind=KIND, force=overwrite) as tmp:
            meta: dict[str, Any] = {
                "kind": KIND,
                "format_version": FORMAT_VERSION,
                "laden_version": _version(),
                "fingerprint": self.fingerprint,
                **self._identity(),
                "shard_report": self.shard_report,
                "inputs": self.inputs,
                "pack": None,
                "epochs": [],
            }
            unit_dtype = smallest_uint(max(self.num_units - 1, 0))
            sample_dtype = smallest_uint(max(self.num_samples - 1, 0))
            if self.pack is not None:
                p = self.pack
                meta["pack"] = {
                    "max_length": p.max_length,
                    "report": dict(p.report),
                    "arrays": {
                        "order": write_array(tmp, "pack.order", p.order.astype(sample_dtype)),
                        "sizes": write_array(tmp, "pack.sizes", _narrow(np.diff(p.offsets))),
                        "seg_length": write_array(tmp, "pack.seg_length", _narrow(p.seg_length)),
                        "seg_start": write_array(tmp, "pack.seg_start", _narrow(p.seg_start)),
                        "dropped": write_array(tmp, "pack.dropped", p.dropped),
                    },
                }
            for e, plan in enumerate(self.epochs):
                prefix = f"epoch{e:04d}"
                arrays = {
                    "order": write_array(tmp, f"{prefix}.order", plan.order.astype(unit_dtype)),
                    "sizes": write_array(tmp, f"{prefix}.sizes", _narrow(plan.batch_sizes)),
                    "max_length": write_array(
                        tmp, f"{prefix}.max_length", _narrow(plan.max_length)
                    ),
                    "bucket": write_array(tmp, f"{prefix}.bucket", plan.bucket),
                    "tokens": write_array(tmp, f"{prefix}.tokens", _narrow(self.batch_tokens[e])),
                    "padding": write_array(tmp, f"{prefix}.padding", self.padding[e]),
                    "dropped": write_array(tmp, f"{prefix}.dropped", plan.dropped),
                    "truncated": write_array(tmp, f"{prefix}.truncated", plan.truncated),
                }
                meta["epochs"].append(
                    {
                        "epoch": plan.epoch,
                        "seed": plan.seed,
                        "batches": len(plan),
                        "report": plain_json(plan.report),
                        "arrays": arrays,
                    }
                )
            write_json(tmp / "meta.json", plain_json(meta))
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BatchPlan:
        """Read a saved plan; a missing, truncated or altered file is named in the error."""
        from laden.lengths import _require_kind

        root = Path(directory)
        _require_kind(root, KIND)
        meta_path = root / "meta.json"
        meta = read_json(meta_path)
        if not isinstance(meta, dict) or "format_version" not in meta:
            raise DataError("not a laden plan (no format_version)", file=str(meta_path))
        if meta["format_version"] > FORMAT_VERSION:
            raise DataError(
                f"format_version {meta['format_version']} is newer than this laden reads "
                f"({FORMAT_VERSION}); upgrade laden",
                file=str(meta_path),
            )
        try:
            pack = None
            if meta["pack"] is not None:
                a = meta["pack"]["arrays"]
                pack = PackPlan(
                    order=read_array(root, a["order"]).astype(np.int64),
                    offsets=offsets_from_sizes(read_array(root, a["sizes"]).astype(np.int64)),
                    seg_length=read_array(root, a["seg_length"]).astype(np.int64),
                    seg_start=read_array(root, a["seg_start"]).astype(np.int64),
                    max_length=int(meta["pack"]["max_length"]),
                    dropped=read_array(root, a["dropped"]).astype(np.int64),
                    report=meta["pack"]["report"],
                )
            epochs, tokens, padding = [], [], []
            for item in meta["epochs"]:
                a = item["arrays"]
                epochs.append(
                    EpochPlan(
                        order=read_array(root, a["order"]),
                        offsets=offsets_from_sizes(read_array(root, a["sizes"]).astype(np.int64)),
                        max_length=read_array(root, a["max_length"]),
                        bucket=read_array(root, a["bucket"]),
                        epoch=int(item["epoch"]),
                        seed=int(item["seed"]),
                        dropped=read_array(root, a["dropped"]),
                        truncated=read_array(root, a["truncated"]),
                        report=item["report"],
                    )
                )
                tokens.append(read_array(root, a["tokens"]).astype(np.int64))
                padding.append(read_array(root, a["padding"]).astype(bool))
            plan = cls(
                config=meta["config"],
                table_digest=meta["table_digest"],
                num_samples=int(meta["num_samples"]),
                num_units=int(meta["num_units"]),
                epochs=tuple(epochs),
                batch_tokens=tuple(tokens),
                pack=pack,
                rank=int(meta["rank"]),
                world_size=int(meta["world_size"]),
                padding=tuple(padding),
                shard_report=meta["shard_report"],
                inputs=meta.get("inputs") or {},  # plans before it recorded none
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed plan metadata ({exc!r})", file=str(meta_path)) from None
        if plan.fingerprint != meta["fingerprint"]:
            raise DataError(
                f"fingerprint {plan.fingerprint} of the arrays does not match the recorded "
                f"{meta['fingerprint']}: the plan was altered",
                file=str(meta_path),
            )
        return plan

    def recorded_lengths(self) -> str:
        """The absolute path of the length cache the plan was built from, as recorded.

        A DataError when the plan records none (saved by an older laden, or
        built from a table that was never saved) or the cache is gone.
        """
        recorded = (self.inputs.get("lengths") or {}).get("path")
        if not recorded:
            raise DataError(
                "the plan does not record its length cache (saved by an older laden, or "
                "built from a table never saved); pass --lengths"
            )
        if not Path(recorded).is_dir():
            raise DataError(
                "the length cache this plan was built from is no longer there; "
                "pass --lengths with its new place",
                file=str(recorded),
            )
        return str(recorded)

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
        from laden.lengths import load_lengths

        if lengths is None:
            lengths = self.recorded_lengths()
        table = load_lengths(lengths)
        if table.digest() != self.table_digest:
            raise DataError(
                f"this length cache is not the one the plan was built from (digest "
                f"{table.digest()}, the plan was built from {self.table_digest}); it changed "
                "since, or another was given",
                file=str(lengths),
            )
        if dataset is None:
            recorded = table.meta.get("dataset") or (self.inputs.get("dataset") or {}).get("path")
            if not recorded:
                raise DataError(
                    "the length cache does not record its dataset; pass --dataset",
                    file=str(lengths),
                )
            if not Path(recorded).is_file():
                raise DataError(
                    "the dataset the lengths were measured on is no longer there; "
                    "pass --dataset with its new place",
                    file=str(recorded),
                )
            dataset = recorded
        return table, str(dataset)

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


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("laden")
    except metadata.PackageNotFoundError:  # pragma: no cover - a bare checkout
        return "0+unknown"


def _plan_epochs(sampler: Any, units: LengthTable, epochs: int, seed: int) -> Iterator[EpochPlan]:
    for epoch in range(epochs):
        yield sampler.plan_epoch(units, epoch=epoch, seed=seed)


def _narrow(values: np.ndarray) -> np.ndarray:
    """Non-negative integers in the narrowest unsigned dtype (smaller files)."""
    values = np.asarray(values)
    top = int(values.max(initial=0))
    if values.size and int(values.min()) < 0:
        return values.astype(np.int64)
    return values.astype(smallest_uint(top))


def _deal(
    plan: EpochPlan, world_size: int, remainder: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Batches per (step, rank) and which are padding: similar costs share a step."""
    n = len(plan)
    cost = plan.batch_sizes * plan.max_length
    by_cost = np.argsort(-cost, kind="stable")
    steps, rem = divmod(n, world_size)
    if remainder == "drop" or rem == 0:
        groups = by_cost[: steps * world_size].reshape(steps, world_size)
        pad = np.zeros(groups.shape, dtype=bool)
    else:
        # The last step holds the cheapest batches, topped up with repeats marked as padding.
        tail = by_cost[steps * world_size :]
        last = np.resize(tail, world_size)
        groups = np.concatenate([by_cost[: steps * world_size], last]).reshape(
            steps + 1, world_size
        )
        pad = np.zeros(groups.shape, dtype=bool)
        pad[-1, rem:] = True
    order = rng.permutation(groups.shape[0])
    return groups[order], pad[order]


def _first_difference(
    a: EpochPlan, b: EpochPlan, pad_a: np.ndarray, pad_b: np.ndarray
) -> int | None:
    """The first batch where two epoch plans differ, or None."""
    n = min(len(a), len(b))
    sizes_a, sizes_b = a.batch_sizes[:n], b.batch_sizes[:n]
    differs = (
        (sizes_a != sizes_b)
        | (a.max_length[:n] != b.max_length[:n])
        | (a.bucket[:n] != b.bucket[:n])
        | (pad_a[:n] != pad_b[:n])
    )
    first = int(np.argmax(differs)) if differs.any() else n
    # Up to the first shape difference the offsets agree, so compare the units.
    end = int(a.offsets[first])
    unit = np.flatnonzero(a.order[:end] != b.order[:end])
    if unit.size:
        return int(np.searchsorted(a.offsets, unit[0], side="right") - 1)
    if first < n or len(a) != len(b):
        return first
    return None

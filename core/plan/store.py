"""Saving and loading plans: versioned, atomic, zstd-compressed, checksummed directories.

A saved plan is a directory of zstd arrays (in the narrowest dtype that holds
them) and a ``meta.json`` with the plan's identity, reports and fingerprint;
loading recomputes the fingerprint from the arrays, so an altered file is
found. Also here: where the plan's inputs (length cache, dataset) were.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from laden.batching import narrowest, smallest_uint
from laden.errors import DataError
from laden.io import (
    atomic_directory,
    check_format,
    plain_json,
    read_array,
    read_json,
    write_array,
    write_json,
)
from laden.plan.build import BatchPlan
from laden.records import EpochPlan, LengthTable, PackPlan, offsets_from_sizes

__all__ = ["FORMAT_VERSION", "KIND", "load_inputs", "load_plan", "recorded_lengths", "save_plan"]

#: Version of the on-disk layout; a newer one is refused, older ones are read.
FORMAT_VERSION = 1
#: The ``kind`` in a saved plan's meta.json.
KIND = "laden.plan"


def save_plan(
    plan: BatchPlan, directory: str | os.PathLike[str], *, overwrite: bool = True
) -> Path:
    """Write ``plan`` as a directory (replaced atomically); returns its path.

    ``directory`` must be new, empty, or (with ``overwrite``) a saved plan:
    anything else is a ConfigError and is left untouched.
    """
    import laden

    target = Path(directory)
    with atomic_directory(target, kind=KIND, force=overwrite) as tmp:
        meta: dict[str, Any] = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "laden_version": laden.__version__,
            "fingerprint": plan.fingerprint,
            **plan._identity(),
            "shard_report": plan.shard_report,
            "inputs": plan.inputs,
            "pack": None,
            "epochs": [],
        }
        unit_dtype = smallest_uint(max(plan.num_units - 1, 0))
        sample_dtype = smallest_uint(max(plan.num_samples - 1, 0))
        if plan.pack is not None:
            p = plan.pack
            meta["pack"] = {
                "max_length": p.max_length,
                "report": dict(p.report),
                "arrays": {
                    "order": write_array(tmp, "pack.order", p.order.astype(sample_dtype)),
                    "sizes": write_array(tmp, "pack.sizes", narrowest(np.diff(p.offsets))),
                    "seg_length": write_array(tmp, "pack.seg_length", narrowest(p.seg_length)),
                    "seg_start": write_array(tmp, "pack.seg_start", narrowest(p.seg_start)),
                    "dropped": write_array(tmp, "pack.dropped", p.dropped),
                },
            }
        for e, epoch in enumerate(plan.epochs):
            prefix = f"epoch{e:04d}"
            arrays = {
                "order": write_array(tmp, f"{prefix}.order", epoch.order.astype(unit_dtype)),
                "sizes": write_array(tmp, f"{prefix}.sizes", narrowest(epoch.batch_sizes)),
                "max_length": write_array(tmp, f"{prefix}.max_length", narrowest(epoch.max_length)),
                "bucket": write_array(tmp, f"{prefix}.bucket", epoch.bucket),
                "tokens": write_array(tmp, f"{prefix}.tokens", narrowest(plan.batch_tokens[e])),
                "padding": write_array(tmp, f"{prefix}.padding", plan.padding[e]),
                "dropped": write_array(tmp, f"{prefix}.dropped", epoch.dropped),
                "truncated": write_array(tmp, f"{prefix}.truncated", epoch.truncated),
            }
            meta["epochs"].append(
                {
                    "epoch": epoch.epoch,
                    "seed": epoch.seed,
                    "batches": len(epoch),
                    "report": plain_json(epoch.report),
                    "arrays": arrays,
                }
            )
        write_json(tmp / "meta.json", plain_json(meta))
    return target


def load_plan(directory: str | os.PathLike[str]) -> BatchPlan:
    """Read a saved plan; a missing, truncated or altered file is named in the error."""
    from laden.lengths import _require_kind

    root = Path(directory)
    _require_kind(root, KIND)
    meta_path = root / "meta.json"
    meta = read_json(meta_path)
    check_format(meta, kind=KIND, version=FORMAT_VERSION, file=meta_path)
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
        plan = BatchPlan(
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


def recorded_lengths(plan: BatchPlan) -> str:
    """The absolute path of the length cache ``plan`` was built from, as recorded."""
    recorded = (plan.inputs.get("lengths") or {}).get("path")
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
    plan: BatchPlan,
    *,
    lengths: str | os.PathLike[str] | None = None,
    dataset: str | os.PathLike[str] | None = None,
) -> tuple[LengthTable, str]:
    """The length table and dataset path ``plan`` was built from (given paths win)."""
    from laden.lengths import load_lengths

    if lengths is None:
        lengths = plan.recorded_lengths()
    table = load_lengths(lengths)
    if table.digest() != plan.table_digest:
        raise DataError(
            f"this length cache is not the one the plan was built from (digest "
            f"{table.digest()}, the plan was built from {plan.table_digest}); it changed "
            "since, or another was given",
            file=str(lengths),
        )
    if dataset is None:
        recorded = table.meta.get("dataset") or (plan.inputs.get("dataset") or {}).get("path")
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

"""The dense collation path: staged samples of fixed-feature arrays -> padded host arrays.

A staged sample (CompressedAD's compressed trajectories) is a list of stages;
each stage holds arrays with one row per step, such as ``states [T, D]``,
``actions [T]``, ``rewards [T]``. Every sample of a batch has the same number
of stages (a ``depth_buckets`` plan guarantees it), and each stage is padded
only to its own in-batch maximum: no dummy stages, no padding to the longest
stage of another.

:class:`StagedBatch` holds a batch columnar (one buffer per field, steps of
sample 0 stage 0, sample 0 stage 1, ..., sample 1 stage 0, ...), so
:func:`collate_staged` scatters whole fields at once (a loop per stage and
field, never per sample). Backends only ``convert`` the host arrays, so the
result is identical on numpy, torch and MLX.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from laden.errors import DataError
from laden.records import csr_take, offsets_from_sizes

__all__ = ["StagedBatch", "collate_staged"]


@attrs.frozen(kw_only=True, eq=False)
class StagedBatch:
    """The samples of one batch, columnar.

    :param steps: ``[B, S]`` steps of each stage of each sample.
    :param fields: per field, the rows of every (sample, stage) block, sample-major.
    :param sample_ids: the samples' indices (``[B]``), or None.
    :param rows: where each step of the batch is in the field arrays, when they
        hold more than the batch (a whole memory-mapped file): collation then
        gathers straight into the padded arrays, one copy in all.
    """

    steps: np.ndarray
    fields: Mapping[str, np.ndarray]
    sample_ids: np.ndarray | None = None
    rows: np.ndarray | None = None

    def __attrs_post_init__(self) -> None:
        steps = np.asarray(self.steps, dtype=np.int64)
        if steps.ndim != 2:
            raise ValueError(f"steps must be [batch, stages], got shape {steps.shape}")
        object.__setattr__(self, "steps", steps)
        total = int(steps.sum())
        if self.rows is not None:
            if self.rows.shape != (total,):
                raise ValueError(f"rows has shape {self.rows.shape}, the stages hold {total} steps")
            return
        for name, values in self.fields.items():
            if values.ndim < 1 or values.shape[0] != total:
                raise ValueError(
                    f"field {name!r} has {values.shape[0] if values.ndim else 0} rows, "
                    f"the stages hold {total} steps"
                )

    @property
    def num_samples(self) -> int:
        return int(self.steps.shape[0])

    @property
    def num_stages(self) -> int:
        return int(self.steps.shape[1])

    @classmethod
    def from_samples(
        cls, samples: Sequence[Mapping[str, Any]], sample_ids: Any = None
    ) -> StagedBatch:
        """A batch from samples given as ``{field: [stage arrays]}`` (a loop per sample).

        Every sample must have the same number of stages, every field of a
        stage the same number of steps, and every field the same rank and
        trailing shape in every sample; a breach is a DataError naming the
        sample and the field.
        """
        names = [k for k in (samples[0] if samples else {}) if k not in ("key", "id")]
        depth = len(samples[0][names[0]]) if names else 0
        steps = np.zeros((len(samples), depth), dtype=np.int64)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for b, sample in enumerate(samples):
            stages = {name: sample.get(name) for name in names}
            for name, arrays in stages.items():
                if arrays is None or len(arrays) != depth:
                    got = "none" if arrays is None else len(arrays)
                    raise DataError(
                        f"sample {b}: field {name!r} has {got} stages, expected {depth} "
                        "(a batch holds one depth)"
                    )
            for s in range(depth):
                for name in names:
                    array = np.asarray(stages[name][s])  # type: ignore[index]
                    first = parts[name][0] if parts[name] else None
                    if array.ndim < 1 or (first is not None and array.shape[1:] != first.shape[1:]):
                        want = "at least 1" if first is None else f"[T, {first.shape[1:]}]"
                        raise DataError(
                            f"sample {b} stage {s}: field {name!r} has shape {array.shape}, "
                            f"expected {want}"
                        )
                    if name == names[0]:
                        steps[b, s] = array.shape[0]
                    elif array.shape[0] != steps[b, s]:
                        raise DataError(
                            f"sample {b} stage {s}: field {name!r} has {array.shape[0]} steps, "
                            f"{names[0]!r} has {steps[b, s]}"
                        )
                    parts[name].append(array)
        fields = {name: np.concatenate(arrays) for name, arrays in parts.items() if arrays}
        ids = None if sample_ids is None else np.asarray(sample_ids, dtype=np.int64)
        return cls(steps=steps, fields=fields, sample_ids=ids)


def collate_staged(batch: StagedBatch, *, pad_value: float = 0) -> dict[str, Any]:
    """Per stage ``i``: ``stage{i}_<field> [B, T_i, ...]`` padded to the stage's in-batch max.

    Also ``stage{i}_mask [B, T_i]`` (True on real steps), ``num_stages`` (an
    ``int``) and ``sample_ids [B]`` when the batch knows them. Host numpy
    arrays; a backend's ``convert`` turns them into its own.
    """
    steps = batch.steps
    num, depth = steps.shape
    block_start = offsets_from_sizes(steps.reshape(-1))  # blocks in sample-major order
    widths = steps.max(axis=0, initial=0) if num else np.zeros(depth, dtype=np.int64)
    out: dict[str, Any] = {}
    for s in range(depth):
        width, sizes = int(widths[s]), steps[:, s]
        # The rows of stage s (block s of every sample) and where they go in [B * T_s]:
        # step t of sample b at b * T_s + t.
        blocks = np.arange(num, dtype=np.int64) * depth + s
        rows, _ = csr_take(block_start, blocks)
        source = rows if batch.rows is None else batch.rows[rows]
        flat = rows + np.repeat(np.arange(num, dtype=np.int64) * width - block_start[blocks], sizes)
        mask = np.zeros(num * width, dtype=bool)
        mask[flat] = True
        for name, values in batch.fields.items():
            shape = (num * width, *values.shape[1:])
            dense = (
                np.zeros(shape, dtype=values.dtype)
                if pad_value == 0
                else np.full(shape, pad_value, dtype=values.dtype)
            )
            dense[flat] = values[source]
            out[f"stage{s}_{name}"] = dense.reshape(num, width, *values.shape[1:])
        out[f"stage{s}_mask"] = mask.reshape(num, width)
    out["num_stages"] = int(depth)
    if batch.sample_ids is not None:
        out["sample_ids"] = np.asarray(batch.sample_ids, dtype=np.int64)
    return out

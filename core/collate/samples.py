"""Tokenized samples by index: what collation reads when it is not given a Ragged.

:class:`SourceSamples` reads rows of a source at the byte offsets of a length
table (random access, no full scan) and tokenizes them, so a batch of a plan
fetches only its own samples. It is the ``tokens`` argument of
:func:`laden.collate.collate` and of a backend's ``collate``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import numpy as np

from laden.records import LengthTable

__all__ = ["SourceSamples"]


@attrs.frozen(kw_only=True, eq=False)
class SourceSamples:
    """Samples ``i`` of ``source``, at ``table.offset[i]``, as ``{"input_ids", "loss_mask"?}``.

    ``read_at`` gives samples in laden's field names
    (:class:`~laden.kinds.IndexedSource`): one with ``input_ids`` is used as
    it is; otherwise its ``text`` is encoded with ``tokenizer``. A sample's
    ``loss_mask`` comes along.

    :param source: an indexed source (its ``read_at(offsets)``; ``jsonl``).
    :param tokenizer: the tokenizer the length table was measured with.
    :param table: the length table (its ``offset`` column locates each sample).
    """

    source: Any
    tokenizer: Any
    table: LengthTable = attrs.field()

    @table.validator
    def _has_offsets(self, _attribute: Any, table: LengthTable) -> None:
        if table.offset is None:
            raise ValueError(
                "the length table has no offset column; build it from the source with "
                "laden.lengths.build_lengths so samples can be located"
            )

    def fetch(self, ids: Iterable[int] | np.ndarray) -> dict[int, dict[str, Any]]:
        """The given samples, read in file order (fewer seeks), keyed by index."""
        ids = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids))
        if ids.size and (ids[0] < 0 or ids[-1] >= len(self.table)):
            raise IndexError(f"sample {int(ids[-1])} out of range for {len(self.table)} samples")
        assert self.table.offset is not None
        offsets = self.table.offset[ids]
        order = np.argsort(offsets, kind="stable")
        rows = self.source.read_at(offsets[order])
        out: dict[int, dict[str, Any]] = {}
        for i, row in zip(ids[order].tolist(), rows, strict=True):
            given = row.get("input_ids")
            tokens = (
                np.asarray(given, dtype=np.int64)
                if given is not None
                else np.asarray(self.tokenizer.encode(row["text"]), dtype=np.int64)
            )
            sample: dict[str, Any] = {"input_ids": tokens}
            if row.get("loss_mask") is not None:
                sample["loss_mask"] = np.asarray(row["loss_mask"], dtype=bool)
            out[i] = sample
        return out

    def __getitem__(self, i: int) -> Mapping[str, Any]:
        return self.fetch([i])[int(i)]

    def __len__(self) -> int:
        return len(self.table)

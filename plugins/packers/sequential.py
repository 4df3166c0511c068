"""``sequential``: concatenate in dataset order and cut every ``max_length`` tokens."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np

from laden.hookspecs import hookimpl
from laden.packing import SegmentPacker, segments_for, sequential_bins
from laden.records import LengthTable
from laden.registry import Registry
from laden.validators import one_of


@attrs.frozen(kw_only=True)
class SequentialPacker(SegmentPacker):
    """Pretraining-style packing: the dataset as one token stream, cut into rows.

    A sequence that crosses a cut continues in the next row as a continuation
    segment (``seg_start > 0``), so every row but the last is full. Segments
    keep dataset order inside each row. ``overflow`` defaults to ``split``;
    ``drop`` or ``truncate`` first remove or cut sequences longer than
    ``max_length``. Other settings are those of :class:`laden.packing.SegmentPacker`.
    """

    name: ClassVar[str] = "sequential"
    keeps_order: ClassVar[bool] = True

    overflow: str = attrs.field(
        default="split", validator=one_of("error", "drop", "truncate", "split")
    )

    def place(
        self, table: LengthTable
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
        sample, start, seg, dropped, report = segments_for(
            table.length, self.max_length, self.overflow
        )
        # Rejoin split pieces: the stream cuts them wherever a row ends.
        whole = start == 0
        sample = sample[whole]
        seg = np.add.reduceat(seg, np.flatnonzero(whole)) if seg.size else seg
        source, offset, piece, row = sequential_bins(
            seg, self.max_length, self.max_segments_per_pack
        )
        return row, sample[source], offset, piece, dropped, report


@hookimpl
def laden_register_packers(registry: Registry) -> None:
    registry.add(SequentialPacker)

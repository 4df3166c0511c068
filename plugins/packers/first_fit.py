"""``first_fit``: first-fit decreasing packing of sequences into rows of ``max_length``."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np

from laden.hookspecs import hookimpl
from laden.packing import SegmentPacker, first_fit_decreasing
from laden.registry import Registry


@attrs.frozen(kw_only=True)
class FirstFitPacker(SegmentPacker):
    """Longest first, each sequence into the first open row that fits it.

    Exact first-fit decreasing, grouped by length (one vector pass over the
    open rows per distinct length). Settings are those of
    :class:`laden.packing.SegmentPacker`.
    """

    name: ClassVar[str] = "first_fit"

    def assign(self, seg_lengths: np.ndarray) -> np.ndarray:
        return first_fit_decreasing(seg_lengths, self.max_length, self.max_segments_per_pack)


@hookimpl
def laden_register_packers(registry: Registry) -> None:
    registry.add(FirstFitPacker)

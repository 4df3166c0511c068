"""``sequential``: concatenate in dataset order and cut every ``max_length`` tokens."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np

from laden.hookspecs import hookimpl
from laden.packing import SegmentPacker, segments_for
from laden.records import LengthTable
from laden.registry import Registry
from laden.validators import one_of

__all__ = ["SequentialPacker", "sequential_bins"]

Pieces = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def sequential_bins(
    seg_lengths: np.ndarray, capacity: int, max_segments: int | None = None
) -> Pieces:
    """Concatenate segments in order and cut the stream every ``capacity`` tokens.

    A segment that crosses a cut is split there into continuation pieces.
    Returns ``(source, offset, length, bin)`` per piece: the index of the input
    segment, the offset inside it, the piece's tokens and its row. Zero-length
    segments stay as zero-length pieces in the row where the stream is. With
    ``max_segments`` a row also ends after that many pieces (a loop per row).
    """
    seg_lengths = np.asarray(seg_lengths, dtype=np.int64)
    if seg_lengths.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    if max_segments is None:
        return _cut_stream(seg_lengths, capacity)
    return _cut_stream_capped(seg_lengths, capacity, max_segments)


def _cut_stream(seg_lengths: np.ndarray, capacity: int) -> Pieces:
    """The pieces of the stream cut every ``capacity`` tokens, all in numpy."""
    n = seg_lengths.size
    starts = np.cumsum(seg_lengths) - seg_lengths
    ends = starts + seg_lengths
    first_row = starts // capacity
    last_row = np.where(seg_lengths > 0, (ends - 1) // capacity, first_row)
    pieces = last_row - first_row + 1
    source = np.repeat(np.arange(n, dtype=np.int64), pieces)
    k = np.arange(source.size, dtype=np.int64) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    row = first_row[source] + k
    lo = np.maximum(starts[source], row * capacity)
    hi = np.minimum(ends[source], (row + 1) * capacity)
    return source, lo - starts[source], hi - lo, row


def _cut_stream_capped(seg_lengths: np.ndarray, capacity: int, max_segments: int) -> Pieces:
    """The same cut, a row also ending after ``max_segments`` pieces: a loop per piece."""
    n = seg_lengths.size
    source: list[int] = []
    offset: list[int] = []
    piece: list[int] = []
    row: list[int] = []
    i, done, r = 0, 0, 0  # segment, tokens of it already placed, row
    while i < n:
        room, used = capacity, 0
        while i < n and used < max_segments and (room > 0 or seg_lengths[i] == done == 0):
            take = min(int(seg_lengths[i]) - done, room)
            source.append(i)
            offset.append(done)
            piece.append(take)
            row.append(r)
            room -= take
            used += 1
            done += take
            if done == seg_lengths[i]:
                i, done = i + 1, 0
        r += 1
    as_array = [np.asarray(v, dtype=np.int64) for v in (source, offset, piece, row)]
    return as_array[0], as_array[1], as_array[2], as_array[3]


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

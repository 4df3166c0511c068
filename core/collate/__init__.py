"""Collation: samples + a batch layout -> host arrays; the backend base class. Re-exports only."""

from laden.collate.samples import SourceSamples
from laden.collate.tokens import (
    IGNORE_INDEX,
    BatchLayout,
    CollatingBackend,
    Ragged,
    collate,
    dense_segment_mask,
    host_dtypes,
)

__all__ = [
    "IGNORE_INDEX",
    "BatchLayout",
    "CollatingBackend",
    "Ragged",
    "SourceSamples",
    "collate",
    "dense_segment_mask",
    "host_dtypes",
]

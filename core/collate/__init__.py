"""Collation: samples + a batch layout -> host arrays; the backend base class. Re-exports only."""

from laden.collate.backend import CollatingBackend, host_dtypes
from laden.collate.layout import BatchLayout
from laden.collate.samples import SourceSamples
from laden.collate.staged import StagedBatch, collate_staged
from laden.collate.tokens import IGNORE_INDEX, collate, dense_segment_mask
from laden.records import Ragged

__all__ = [
    "IGNORE_INDEX",
    "BatchLayout",
    "CollatingBackend",
    "Ragged",
    "SourceSamples",
    "StagedBatch",
    "collate",
    "collate_staged",
    "dense_segment_mask",
    "host_dtypes",
]

"""Batch files: the write driver, its manifest, verification and the reader. Re-exports only."""

from laden.files.read import BatchReader
from laden.files.write import (
    FORMAT_VERSION,
    LOCK,
    MANIFEST,
    DiskFullError,
    OutputBusyError,
    content_digest,
    file_checksums,
    file_name,
    load_manifest,
    verify_directory,
    write_batches,
)

__all__ = [
    "FORMAT_VERSION",
    "LOCK",
    "MANIFEST",
    "BatchReader",
    "DiskFullError",
    "OutputBusyError",
    "content_digest",
    "file_checksums",
    "file_name",
    "load_manifest",
    "verify_directory",
    "write_batches",
]

"""Batch files: the run manifest, the write driver, verification and the reader. Re-exports only."""

from laden.files.manifest import RunManifest
from laden.files.read import BatchReader
from laden.files.write import (
    FORMAT_VERSION,
    LOCK,
    MANIFEST,
    DiskFullError,
    OutputBusyError,
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
    "RunManifest",
    "file_name",
    "load_manifest",
    "verify_directory",
    "write_batches",
]

"""laden: turn training data into batches, fast and reproducibly.

The kernel is small; every strategy is a plugin found through the entry-point
group ``laden``. Importing laden never imports torch, mlx, h5py or ray.
"""

from __future__ import annotations

from importlib import metadata

from laden.config import RunConfig, load_config
from laden.errors import (
    ConfigError,
    DataError,
    DuplicateStrategyError,
    LadenError,
    MissingDependencyError,
    PluginLoadError,
    RegistryError,
    UnknownStrategyError,
)
from laden.files.read import BatchReader
from laden.hookspecs import hookimpl, hookspec
from laden.kernel import Kernel, PluginInfo, default_kernel
from laden.kinds import KINDS
from laden.plan import BatchPlan, PlanCheck
from laden.records import BatchSpec, EpochPlan, LengthTable, PackPlan
from laden.registry import Entry, Registry
from laden.sweep.dataset import SweepDataset

try:
    __version__ = metadata.version("laden")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0+unknown"

__all__ = [
    "KINDS",
    "BatchPlan",
    "BatchReader",
    "BatchSpec",
    "ConfigError",
    "DataError",
    "DuplicateStrategyError",
    "Entry",
    "EpochPlan",
    "Kernel",
    "LadenError",
    "LengthTable",
    "MissingDependencyError",
    "PackPlan",
    "PlanCheck",
    "PluginInfo",
    "PluginLoadError",
    "Registry",
    "RegistryError",
    "RunConfig",
    "SweepDataset",
    "UnknownStrategyError",
    "__version__",
    "default_kernel",
    "hookimpl",
    "hookspec",
    "load_config",
]

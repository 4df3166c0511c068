"""Generators for the sweep tests: importable by worker processes (``tests.sweep_helpers``)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.hookspecs import hookimpl
from laden.registry import Registry
from laden.seeding import rng_for


@attrs.frozen(kw_only=True)
class FlakyGenerator:
    """Fails for ``x == 2`` while ``LADEN_TEST_FAIL`` is set; sleeps ``delay`` seconds."""

    name: ClassVar[str] = "flaky"
    parameters: ClassVar[Mapping[str, Any]] = {"x": 0, "y": 0.0, "delay": 0.0}

    def generate(self, params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
        if params.get("delay"):
            time.sleep(float(params["delay"]))
        if params.get("x") == 2 and os.environ.get("LADEN_TEST_FAIL"):
            raise RuntimeError(f"x=2 fails on purpose (seed {seed})")
        noise = rng_for(seed, 0, "flaky").normal(size=4)
        return {"value": np.asarray([params.get("x", 0), params.get("y", 0.0)]), "noise": noise}


@attrs.frozen(kw_only=True)
class InstantGenerator:
    """Returns at once: measures the sweep's own per-point cost."""

    name: ClassVar[str] = "instant"
    parameters: ClassVar[Mapping[str, Any]] = {"i": 0, "j": 0}

    def generate(self, params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
        return {"seed": np.asarray(seed % 1000, dtype=np.int64)}


@hookimpl
def laden_register_generators(registry: Registry) -> None:
    registry.add(FlakyGenerator)
    registry.add(InstantGenerator)

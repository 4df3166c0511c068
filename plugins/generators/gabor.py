"""``gabor``: a Gabor patch (a sinusoidal grating under a Gaussian envelope), plus noise."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.hookspecs import hookimpl
from laden.registry import Registry
from laden.sweep.fields import grid, noisy
from laden.validators import one_of


@attrs.frozen(kw_only=True)
class GaborGenerator:
    """``stimulus``: ``amplitude * exp(-r² / 2 sigma²) * cos(2π frequency u + phase)``,
    ``u`` the coordinate along ``orientation`` (degrees), on a square grid, plus noise.

    :param dtype: the stimulus dtype (``float32`` or ``float64``).
    """

    name: ClassVar[str] = "gabor"
    #: The parameters a point may set, with their defaults.
    parameters: ClassVar[Mapping[str, Any]] = {
        "amplitude": 1.0,
        "frequency": 1.0,
        "orientation": 0.0,
        "phase": 0.0,
        "sigma": 1.0,
        "grid_size": 32,
        "spacing": 0.15,
        "noise": 0.01,
    }

    dtype: str = attrs.field(default="float32", validator=one_of("float32", "float64"))

    def generate(self, params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
        p = {**self.parameters, **params}
        x, y = grid(int(p["grid_size"]), float(p["spacing"]))
        theta = np.deg2rad(float(p["orientation"]))
        u = x * np.cos(theta) + y * np.sin(theta)
        envelope = np.exp(-(x**2 + y**2) / (2.0 * float(p["sigma"]) ** 2))
        carrier = np.cos(2.0 * np.pi * float(p["frequency"]) * u + float(p["phase"]))
        image = float(p["amplitude"]) * envelope * carrier
        return {"stimulus": noisy(image, float(p["noise"]), seed, "gabor.noise", self.dtype)}


@hookimpl
def laden_register_generators(registry: Registry) -> None:
    registry.add(GaborGenerator)

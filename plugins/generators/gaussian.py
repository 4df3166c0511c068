"""``gaussian``: a 2D Gaussian blob on a square grid, plus Gaussian noise."""

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
class GaussianGenerator:
    """``stimulus``: ``amplitude * exp(-r² / 2 sigma²)`` around ``(center_x, center_y)`` on a
    ``grid_size`` x ``grid_size`` grid of ``spacing`` mm, plus noise of std ``noise``.

    :param dtype: the stimulus dtype (``float32`` or ``float64``).
    """

    name: ClassVar[str] = "gaussian"
    #: The parameters a point may set, with their defaults.
    parameters: ClassVar[Mapping[str, Any]] = {
        "amplitude": 1.0,
        "sigma": 1.0,
        "center_x": 0.0,
        "center_y": 0.0,
        "grid_size": 32,
        "spacing": 0.15,
        "noise": 0.01,
    }

    dtype: str = attrs.field(default="float32", validator=one_of("float32", "float64"))

    def generate(self, params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
        p = {**self.parameters, **params}
        x, y = grid(int(p["grid_size"]), float(p["spacing"]))
        r2 = (x - float(p["center_x"])) ** 2 + (y - float(p["center_y"])) ** 2
        image = float(p["amplitude"]) * np.exp(-r2 / (2.0 * float(p["sigma"]) ** 2))
        return {"stimulus": noisy(image, float(p["noise"]), seed, "gaussian.noise", self.dtype)}


@hookimpl
def laden_register_generators(registry: Registry) -> None:
    registry.add(GaussianGenerator)

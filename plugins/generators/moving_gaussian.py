"""``moving_gaussian``: a Gaussian blob moving in a straight line, frame by frame."""

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
class MovingGaussianGenerator:
    """``stimulus`` ``[frames, grid, grid]``: a Gaussian blob starting at
    ``(start_x, start_y)`` and moving ``velocity`` mm/s along ``direction``
    (degrees), sampled every ``dt`` seconds, plus noise; ``trajectory``
    ``[frames, 2]``: its centre in each frame (float64).

    :param dtype: the stimulus dtype (``float32`` or ``float64``).
    """

    name: ClassVar[str] = "moving_gaussian"
    #: The parameters a point may set, with their defaults.
    parameters: ClassVar[Mapping[str, Any]] = {
        "amplitude": 1.0,
        "sigma": 0.5,
        "velocity": 1.0,
        "direction": 0.0,
        "start_x": 0.0,
        "start_y": 0.0,
        "frames": 10,
        "dt": 0.1,
        "grid_size": 32,
        "spacing": 0.15,
        "noise": 0.01,
    }

    dtype: str = attrs.field(default="float32", validator=one_of("float32", "float64"))

    def generate(self, params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
        p = {**self.parameters, **params}
        x, y = grid(int(p["grid_size"]), float(p["spacing"]))
        t = np.arange(int(p["frames"])) * float(p["dt"])
        theta = np.deg2rad(float(p["direction"]))
        cx = float(p["start_x"]) + float(p["velocity"]) * np.cos(theta) * t
        cy = float(p["start_y"]) + float(p["velocity"]) * np.sin(theta) * t
        r2 = (x[None] - cx[:, None, None]) ** 2 + (y[None] - cy[:, None, None]) ** 2
        frames = float(p["amplitude"]) * np.exp(-r2 / (2.0 * float(p["sigma"]) ** 2))
        return {
            "stimulus": noisy(frames, float(p["noise"]), seed, "moving_gaussian.noise", self.dtype),
            "trajectory": np.stack([cx, cy], axis=1),
        }


@hookimpl
def laden_register_generators(registry: Registry) -> None:
    registry.add(MovingGaussianGenerator)

"""What generators share to build their arrays: coordinate grids, seeded noise, text.

Generator plugins import these instead of importing one another (a plugin
never depends on another plugin's module).

**Text** travels as a 1-D ``uint8`` array of its UTF-8 bytes
(:func:`text_field`), which every sweep writer stores as it is (an npz
member, a ``pt`` tensor, an h5 dataset) and :func:`read_text` turns back into
the same ``str``; no pickle, no object arrays, no string dtype a writer lacks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from laden.seeding import rng_for

__all__ = ["grid", "noisy", "read_text", "text_field"]


def grid(size: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``x`` and ``y`` coordinates of a ``size`` x ``size`` grid centred on 0."""
    axis = (np.arange(size) - (size - 1) / 2) * spacing
    x, y = np.meshgrid(axis, axis, indexing="xy")
    return x, y


def noisy(image: np.ndarray, noise: float, seed: int, purpose: str, dtype: str) -> np.ndarray:
    """``image`` plus Gaussian noise of std ``noise`` drawn from ``(seed, purpose)``."""
    if noise > 0:
        image = image + rng_for(seed, 0, purpose).normal(0.0, noise, image.shape)
    return image.astype(dtype)


def text_field(text: str) -> np.ndarray:
    """``text`` as a 1-D ``uint8`` array of its UTF-8 bytes (a field every writer stores)."""
    return np.array(bytearray(text.encode("utf-8")), dtype=np.uint8)


def read_text(field: Any) -> str:
    """The ``str`` a :func:`text_field` array holds (read back from any writer's file).

    Takes a numpy array, a ``torch`` tensor (``.numpy()``) or anything
    ``np.asarray`` accepts; the bytes must be UTF-8.
    """
    if hasattr(field, "numpy") and not isinstance(field, np.ndarray):
        field = field.numpy()
    array = np.asarray(field)
    if array.dtype != np.uint8 or array.ndim != 1:
        raise ValueError(
            f"a text field is a 1-D uint8 array, got {array.dtype} of shape {array.shape}"
        )
    return array.tobytes().decode("utf-8")

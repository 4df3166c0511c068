"""Every random choice derives from ``(seed, epoch, purpose)`` through SeedSequence.

Never ``seed + epoch``: that makes seed 42 epoch 1 equal seed 43 epoch 0.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["rng_for"]


def rng_for(seed: int, epoch: int, purpose: str) -> np.random.Generator:
    """A PCG64 generator for one purpose (``"token_budget.shuffle"``) of one epoch."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    tag = zlib.crc32(purpose.encode())
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, tag])))

"""A sum tree over slots in one numpy array: vectorized batch updates and draws.

Leaf ``i`` holds slot ``i``'s weight; every inner node the sum of its two
children, so the root is the total. Drawing ``k`` slots in proportion to
their weights descends the tree for all ``k`` at once (``log2(size)`` numpy
steps); setting ``k`` leaves recomputes their ancestors level by level, from
the children (no accumulated float drift).
"""

from __future__ import annotations

import numpy as np

__all__ = ["SumTree"]


class SumTree:
    """Weights of ``capacity`` slots (float64), with O(log N) draws and updates."""

    def __init__(self, capacity: int) -> None:
        size = 1
        while size < max(capacity, 1):
            size <<= 1
        self.size = size
        self.depth = size.bit_length() - 1
        self.tree = np.zeros(2 * size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    @property
    def leaves(self) -> np.ndarray:
        """A view of the slot weights (do not write to it: use :meth:`set`)."""
        return self.tree[self.size :]

    @property
    def nbytes(self) -> int:
        return int(self.tree.nbytes)

    def set(self, slots: np.ndarray, weights: np.ndarray | float) -> None:
        """Set the weights of ``slots`` (a later duplicate wins) and fix their ancestors."""
        slots = np.asarray(slots, dtype=np.int64)
        if not slots.size:
            return
        tree = self.tree
        nodes = slots + self.size
        tree[nodes] = weights
        if slots.size * 8 > self.size:  # many leaves: one pass over the whole tree is cheaper
            self.rebuild()
            return
        # Every leaf is at the same depth, so all nodes reach the root together;
        # a duplicate node is recomputed twice to the same value (cheaper than unique).
        for _ in range(self.depth):
            nodes >>= 1
            tree[nodes] = tree[2 * nodes] + tree[2 * nodes + 1]

    def rebuild(self) -> None:
        """Recompute every inner node from the leaves (after a bulk write to them)."""
        tree = self.tree
        lo = self.size
        while lo > 1:
            hi = lo
            lo >>= 1
            tree[lo:hi] = tree[2 * lo : 2 * hi : 2] + tree[2 * lo + 1 : 2 * hi : 2]

    def find(self, values: np.ndarray) -> np.ndarray:
        """The slot where each cumulative weight in ``values`` (0 <= v < total) falls."""
        tree = self.tree
        u = np.array(values, dtype=np.float64)
        node = np.ones(u.size, dtype=np.int64)
        for _ in range(self.depth):
            left = 2 * node
            lw = tree[left]
            right = u >= lw
            u -= lw * right
            node = left + right
        return node - self.size

    def draw(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """``k`` slots drawn with replacement in proportion to their weights."""
        total = self.tree[1]
        if not total > 0:
            raise ValueError("no slot has a positive weight")
        slots = self.find(rng.random(k) * total)
        # Float rounding at a boundary can land on a zero-weight leaf: redraw those.
        leaves = self.tree[self.size :]
        for _ in range(8):
            bad = np.flatnonzero(leaves[slots] <= 0)
            if not bad.size:
                break
            slots[bad] = self.find(rng.random(bad.size) * total)
        else:  # pragma: no cover - needs adversarial float sums
            bad = np.flatnonzero(leaves[slots] <= 0)
            if bad.size:
                slots[bad] = int(np.flatnonzero(leaves > 0)[-1])
        return slots

    def grow(self, capacity: int) -> None:
        """Room for at least ``capacity`` slots (weights kept)."""
        if capacity <= self.size:
            return
        old = self.leaves.copy()
        self.__init__(capacity)  # type: ignore[misc]
        self.tree[self.size : self.size + old.size] = old
        self.rebuild()

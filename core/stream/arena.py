"""A paged arena: variable-length rows stored in fixed-size numpy pages.

Rows are placed one after another in the current page; a row that does not
fit the rest of the page starts the next one (the tail is left unused). A
row's position is ``page * page_size + offset``. Pages are allocated on
demand (``np.empty``: never a copy of what is stored, unlike a growing
contiguous array), and a page whose rows are all released is reused. Each
page can carry several *lanes* of the same shape (token ids and the
loss-mask bytes share positions).

The owner (``ReplayBuffer``) releases rows it evicts and, when released rows
leave too much garbage in partly used pages, moves the live rows of the
emptiest pages elsewhere (:meth:`pages_to_clean`), so memory stays within
a fraction of the live data whatever the eviction order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from laden.errors import DataError
from laden.records import offsets_from_sizes

__all__ = ["PagedArena"]

#: Gathering copies run by run (a slice each) when there are at most this many runs,
#: or when runs hold at least ``_RUN_COPY_MIN`` rows on average; else token by token.
_RUN_LOOP_MAX = 4096
_RUN_COPY_MIN = 8


class PagedArena:
    """Rows of ``lanes`` (name -> dtype) in pages of ``page_size`` items.

    :param page_size: items per page, a power of two; a row longer than this
        cannot be stored (a DataError says which setting to raise).
    :param what: names the rows in errors ("tokens", "meta bytes").
    :param setting: the setting that sets ``page_size``, named in errors.
    """

    def __init__(
        self,
        lanes: Mapping[str, Any],
        page_size: int,
        *,
        defaults: Mapping[str, int] | None = None,
        what: str = "items",
        setting: str = "page_size",
    ) -> None:
        if page_size < 1 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, got {page_size}")
        self.page_size = page_size
        self.shift = page_size.bit_length() - 1
        self.lanes: dict[str, np.dtype[Any]] = {k: np.dtype(v) for k, v in lanes.items()}
        self.defaults = dict(defaults or {})
        self.what, self.setting = what, setting
        self.pages: dict[str, list[np.ndarray]] = {k: [] for k in self.lanes}
        self.live = np.zeros(0, dtype=np.int64)  # live items per page
        self.fill: list[int] = []  # next free offset per page
        self.free: list[int] = []  # pages holding nothing, to reuse (lowest first)
        self.write = -1  # the page rows are placed in
        self.live_total = 0

    # ------------------------------------------------------------------ info

    @property
    def num_pages(self) -> int:
        return len(self.fill)

    @property
    def allocated(self) -> int:
        """Items allocated (all pages)."""
        return self.num_pages * self.page_size

    @property
    def in_use(self) -> int:
        """Items of pages not on the free list."""
        return (self.num_pages - len(self.free)) * self.page_size

    @property
    def garbage(self) -> int:
        """Items in used pages that hold no live row (released rows, tails, unfilled rest)."""
        return self.in_use - self.live_total

    @property
    def nbytes(self) -> int:
        return sum(self.num_pages * self.page_size * dt.itemsize for dt in self.lanes.values())

    def add_lane(self, name: str, dtype: Any, default: int) -> None:
        """A new lane, filled with ``default`` for the rows already stored."""
        if name in self.lanes:
            return
        self.lanes[name] = np.dtype(dtype)
        self.defaults[name] = default
        self.pages[name] = [np.full(self.page_size, default, dtype=dtype) for _ in self.fill]

    # ----------------------------------------------------------------- place

    def _new_page(self) -> int:
        if self.free:
            page = self.free.pop(0)
        else:
            page = len(self.fill)
            for name, dtype in self.lanes.items():
                self.pages[name].append(np.empty(self.page_size, dtype=dtype))
            self.fill.append(0)
            self.live = np.append(self.live, 0)
        self.fill[page] = 0
        self.write = page
        return page

    def place(self, sizes: np.ndarray, values: Mapping[str, np.ndarray | None]) -> np.ndarray:
        """Store rows of ``sizes`` whose items are ``values[lane]`` (concatenated).

        A lane missing from ``values`` (or None) is filled with its default.
        :returns: each row's position.
        """
        sizes = np.asarray(sizes, dtype=np.int64)
        n = sizes.size
        pos = np.zeros(n, dtype=np.int64)
        if not n:
            return pos
        cum = np.cumsum(sizes)
        total = int(cum[-1])
        if total == 0:
            if self.write >= 0:
                pos[:] = (self.write << self.shift) + self.fill[self.write]
            return pos
        too_long = sizes > self.page_size
        if too_long.any():
            row = int(np.argmax(too_long))
            raise DataError(
                f"a row of {int(sizes[row])} {self.what} is longer than a page "
                f"({self.page_size}); raise {self.setting}"
            )
        page_size = self.page_size
        i = 0
        base = 0  # items of rows before row i
        while i < n:
            if self.write < 0:
                self._new_page()
            page = self.write
            room = page_size - self.fill[page]
            m = int(np.searchsorted(cum, base + room, side="right")) - i
            if m <= 0:
                self.write = -1  # the rest of this page stays unused
                continue
            stop = i + m
            used = int(cum[stop - 1]) - base
            start = self.fill[page]
            pos[i:stop] = (page << self.shift) + start + (cum[i:stop] - sizes[i:stop] - base)
            for name, pages in self.pages.items():
                src = values.get(name)
                if src is None:
                    pages[page][start : start + used] = self.defaults.get(name, 0)
                else:
                    pages[page][start : start + used] = src[base : base + used]
            self.fill[page] = start + used
            self.live[page] += used
            i, base = stop, base + used
            if self.fill[page] >= page_size:
                self.write = -1
        self.live_total += total
        return pos

    def release(self, pos: np.ndarray, sizes: np.ndarray) -> None:
        """Forget rows; pages left with nothing live go back to the free list."""
        sizes = np.asarray(sizes, dtype=np.int64)
        if not sizes.size or not int(sizes.sum()):
            return
        pages = np.asarray(pos, dtype=np.int64) >> self.shift
        keep = sizes > 0
        counts = np.bincount(pages[keep], weights=sizes[keep], minlength=self.num_pages)
        self.live -= counts.astype(np.int64)
        self.live_total -= int(sizes.sum())
        emptied = np.flatnonzero((counts > 0) & (self.live == 0)).tolist()
        for page in emptied:
            if page == self.write:
                self.fill[page] = 0  # write from its start again
            elif page not in self.free:
                self.free.append(page)
        if emptied:
            self.free.sort()

    def pages_to_clean(self, slack: float) -> list[int]:
        """The emptiest used pages whose live rows, moved, bring garbage under ``slack``.

        Empty when garbage is already at most ``slack`` times the live items
        (and one page, so a small arena is never cleaned).
        """
        limit = max(slack * self.live_total, self.page_size)
        if self.garbage <= limit:
            return []
        used = np.ones(self.num_pages, dtype=bool)
        used[self.free] = False
        if self.write >= 0:
            used[self.write] = False
        candidates = np.flatnonzero(used)
        order = candidates[np.argsort(self.live[candidates], kind="stable")]
        out, garbage = [], self.garbage
        target = max(slack * self.live_total / 2, self.page_size)
        for page in order.tolist():
            if garbage <= target:
                break
            freed = self.page_size - int(self.live[page])
            if freed <= 0:
                break
            out.append(page)
            garbage -= freed
        return out

    # ---------------------------------------------------------------- gather

    def gather(self, pos: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        """Every lane's items of the given rows, concatenated in the order given."""
        pos = np.asarray(pos, dtype=np.int64)
        sizes = np.asarray(sizes, dtype=np.int64)
        out_off = offsets_from_sizes(sizes)
        total = int(out_off[-1])
        out = {name: np.empty(total, dtype=dtype) for name, dtype in self.lanes.items()}
        if not total:
            return out
        keep = np.flatnonzero(sizes > 0)
        pos, sizes, dst = pos[keep], sizes[keep], out_off[:-1][keep]
        # Runs: rows stored back to back in one page and wanted back to back.
        breaks = np.ones(pos.size, dtype=bool)
        breaks[1:] = (pos[1:] != pos[:-1] + sizes[:-1]) | (
            (pos[1:] >> self.shift) != (pos[:-1] >> self.shift)
        )
        starts = np.flatnonzero(breaks)
        if starts.size <= _RUN_LOOP_MAX or starts.size * _RUN_COPY_MIN <= pos.size:
            run_sizes = np.add.reduceat(sizes, starts)
            run_pos, run_dst = pos[starts], dst[starts]
            mask = self.page_size - 1
            for p, d, s in zip(run_pos.tolist(), run_dst.tolist(), run_sizes.tolist(), strict=True):
                page, at = p >> self.shift, p & mask
                for name, pages in self.pages.items():
                    out[name][d : d + s] = pages[page][at : at + s]
            return out
        # Scattered rows: gather page by page, in blocks of rows to bound temporaries.
        page_of = pos >> self.shift
        order = np.argsort(page_of, kind="stable")
        bounds = np.flatnonzero(np.diff(page_of[order])) + 1
        for group in np.split(order, bounds):
            page = int(page_of[group[0]])
            for lo in range(0, group.size, 1 << 16):
                rows = group[lo : lo + (1 << 16)]
                n = sizes[rows]
                first = offsets_from_sizes(n)
                local = np.arange(int(first[-1]), dtype=np.int64) - np.repeat(first[:-1], n)
                src = np.repeat(pos[rows] & (self.page_size - 1), n) + local
                to = np.repeat(dst[rows], n) + local
                for name, pages in self.pages.items():
                    out[name][to] = pages[page][src]
        return out

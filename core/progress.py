"""A progress bar on a terminal, silence elsewhere (CI logs, pipes)."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

__all__ = ["Progress"]


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class Progress:
    """Counts work done and draws ``desc [#####.....] 50/100 0:03<0:03`` on a TTY.

    Usable as the ``progress(done, total)`` callback of an executor.

    :param total: the amount of work, or None when unknown.
    :param desc: a short label.
    :param enabled: force on or off; by default on only when ``stream`` is a TTY.
    """

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        *,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        unit: str = "",
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done = 0
        self._start = time.monotonic()
        self._last_draw = 0.0

    def __call__(self, done: int, total: int | None = None) -> None:
        """Set the absolute amount done (the executor callback form)."""
        self.done = done
        if total is not None:
            self.total = total
        self._draw()

    def update(self, n: int = 1) -> None:
        """Add ``n`` to the amount done."""
        self(self.done + n)

    def _draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        elapsed = now - self._start
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            eta = elapsed / frac - elapsed if frac > 0 else 0.0
            text = (
                f"{self.desc} [{bar:<30}] {self.done}/{self.total}{unit} "
                f"{_fmt_seconds(elapsed)}<{_fmt_seconds(eta)}"
            )
        else:
            text = f"{self.desc} {self.done}{unit} {_fmt_seconds(elapsed)}"
        self.stream.write("\r" + text[:120])
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(final=True)
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

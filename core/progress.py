"""A progress bar on a terminal, silence elsewhere (CI logs, pipes)."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from types import TracebackType
from typing import TextIO

__all__ = ["Progress"]

#: Erase from the cursor to the end of the line (so a shorter line leaves nothing behind).
CLEAR_TO_EOL = "\x1b[K"


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class Progress:
    """Counts work done and draws ``desc [#####.....] 50/100 0:03<0:03`` on a TTY.

    Usable as the ``progress(done, total)`` callback of an executor. The first
    frame is drawn at once, and a background thread redraws every ``tick``
    seconds, so the bar shows (and its clock runs) before the first piece of
    work finishes. Every frame erases the rest of the line, so a shorter frame
    leaves no stray characters.

    :param total: the amount of work, or None when unknown.
    :param desc: a short label.
    :param enabled: force on or off; by default on only when ``stream`` is a TTY.
    :param unit: the unit of ``done`` and ``total`` (shown after the counts).
    :param leave: keep the last frame on its line when closed; False erases it.
    :param tick: seconds between redraws while nothing is reported (0: none).
    """

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        *,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        unit: str = "",
        leave: bool = True,
        tick: float = 0.5,
    ) -> None:
        self.stream = stream or sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty()) if isatty is not None else False
        self.enabled = enabled
        self.total = total
        self.desc = desc
        self.unit = unit
        self.leave = leave
        self.done = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._ticker: threading.Thread | None = None
        if self.enabled:
            self._draw(final=True)
            if tick > 0:
                self._ticker = threading.Thread(
                    target=self._tick, args=(tick,), name="laden-progress", daemon=True
                )
                self._ticker.start()

    def __call__(self, done: int, total: int | None = None) -> None:
        """Set the absolute amount done (the executor callback form)."""
        self.done = done
        if total is not None:
            self.total = total
        self._draw()

    def update(self, n: int = 1) -> None:
        """Add ``n`` to the amount done."""
        self(self.done + n)

    def _tick(self, every: float) -> None:
        while not self._closed.wait(every):
            self._draw(final=True)

    def _text(self, now: float) -> str:
        elapsed = now - self._start
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            eta = f"<{_fmt_seconds(elapsed / frac - elapsed)}" if frac > 0 else ""
            return (
                f"{self.desc} [{bar:<30}] {self.done}/{self.total}{unit} "
                f"{_fmt_seconds(elapsed)}{eta}"
            )
        return f"{self.desc} {self.done}{unit} {_fmt_seconds(elapsed)}"

    def _draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if self._closed.is_set() or (not final and now - self._last_draw < 0.1):
                return
            self._last_draw = now
            width = max(20, min(120, shutil.get_terminal_size().columns - 1))
            self.stream.write("\r" + self._text(now)[:width] + CLEAR_TO_EOL)
            self.stream.flush()

    def close(self) -> None:
        """Draw the last frame and end the line (or erase it, with ``leave=False``)."""
        if not self.enabled or self._closed.is_set():
            return
        if self.leave:
            self._draw(final=True)
        with self._lock:
            self._closed.set()
            self.stream.write("\n" if self.leave else "\r" + CLEAR_TO_EOL)
            self.stream.flush()
        if self._ticker is not None:
            self._ticker.join()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""Online loading: iterate rolling windows like a static plan.

:class:`OnlineLoader` takes the windows of a
:class:`~laden.stream.window.RollingPlanWindow` as they become ready and
yields each window's batches collated by a backend strategy (``numpy``,
``torch`` on CPU or CUDA, ``mlx``), tagged with ``window``, ``epoch`` and
``step``. Collection and planning happen in the window's background threads;
the training loop is the same as for an offline plan.

Batches are collated in the loop's thread (a window's tokens are already in
memory, so collation is a few numpy gathers): ``laden.torch.PlanLoader`` is
not used per window because its dataset takes no loss-mask arena, and its
worker processes would have to be sent every window's arrays.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from laden.errors import DataError
from laden.stateful import check_state
from laden.stream.window import RollingPlanWindow, Window

__all__ = ["OnlineLoader"]

#: The ``kind`` of an online loader's state.
STATE_KIND = "laden.online_loader"


class OnlineLoader:
    """Collated batches of every window of ``windows``, resumable at any batch.

    :param windows: the rolling windows (started on first iteration).
    :param backend: a backend strategy (``collate(layout, tokens, loss_mask=)``).
    :param timeout: seconds to wait for a window before a TimeoutError (None: no limit).
    :param kernel: announces every batch through ``laden_batch_produced``.
    """

    def __init__(
        self,
        windows: RollingPlanWindow,
        backend: Any,
        *,
        timeout: float | None = None,
        kernel: Any = None,
    ) -> None:
        self.windows = windows
        self.backend = backend
        self.timeout = timeout
        self.kernel = kernel
        self.window: Window | None = None
        # The next batch to yield: (window, epoch, step).
        self._next = (windows.next_index, 0, 0)
        self._expect: str | None = None  # fingerprint the resumed window must have

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            window = self.windows.next_window(self.timeout)
            if window is None:
                return
            self.window = window
            w, epoch, step = self._next
            if window.index != w:
                epoch, step = 0, 0
            elif self._expect is not None and window.fingerprint != self._expect:
                raise DataError(
                    f"window {w} has fingerprint {window.fingerprint}, but the saved state "
                    f"was taken in a window {self._expect}: the stream is not the same"
                )
            self._expect = None
            plan = window.plan
            for batch in window.batches(self.backend, epoch=epoch, step=step):
                e, s = batch["epoch"], batch["step"]
                if s + 1 < len(plan.epochs[e]):
                    self._next = (window.index, e, s + 1)
                elif e + 1 < plan.num_epochs:
                    self._next = (window.index, e + 1, 0)
                else:
                    self._next = (window.index + 1, 0, 0)
                if self.kernel is not None:
                    self.kernel.hook.laden_batch_produced(
                        batch=batch, epoch=e, step=s, kernel=self.kernel
                    )
                yield batch
            self._next = (window.index + 1, 0, 0)

    def state_dict(self) -> dict[str, Any]:
        """The windows' state, rewound to the window in progress, and the next batch in it."""
        w, epoch, step = self._next
        windows = self.windows.state_dict()
        windows["next_index"] = w
        windows["log"] = windows["log"][:w]
        current = (
            self.window.fingerprint
            if self.window is not None and self.window.index == w and (epoch, step) != (0, 0)
            else self._expect  # loaded, not yet checked: kept for the next save
        )
        return {
            "kind": STATE_KIND,
            "windows": windows,
            "window": w,
            "epoch": epoch,
            "step": step,
            "window_fingerprint": current,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue after the last batch a saved state had consumed (before iterating)."""
        check_state(state, kind=STATE_KIND)
        self.windows.load_state_dict(state["windows"])
        self._next = (int(state["window"]), int(state["epoch"]), int(state["step"]))
        self._expect = state.get("window_fingerprint")

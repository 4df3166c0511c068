"""Fixtures for laden's tests and its plugin authors' (exposed through ``laden.testing``).

- ``kernel``: a kernel with laden's builtins only (no third-party autoload),
  so tests do not depend on what else is installed.
- ``make_kernel``: a factory, ``make_kernel(plugins=[...], autoload=False)``.
- :func:`registered` registers an ad-hoc plugin object for the length of a ``with`` block.
- :func:`record_hooks` records every lifecycle hook call of a kernel inside a block.
- :func:`run_cli` runs the ``laden`` command of a kernel in-process and checks its exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from laden.hookspecs import hookimpl
from laden.kernel import Kernel

__all__ = ["HookRecorder", "kernel", "make_kernel", "record_hooks", "registered", "run_cli"]


@contextmanager
def registered(kernel: Kernel, plugin: object, name: str | None = None) -> Iterator[str]:
    """Register ``plugin`` on ``kernel`` inside the block; always unregister after."""
    plugin_name = kernel.register(plugin, name=name)
    try:
        yield plugin_name
    finally:
        kernel.unregister(plugin)


@pytest.fixture
def make_kernel() -> Callable[..., Kernel]:
    """A factory for kernels with chosen plugins; builtins load, third parties do not."""

    def factory(
        plugins: Sequence[object] = (), *, autoload: bool = False, disable: Iterable[str] = ()
    ) -> Kernel:
        return Kernel(plugins=plugins, autoload=autoload, disable=disable)

    return factory


@pytest.fixture
def kernel(make_kernel: Callable[..., Kernel]) -> Kernel:
    """A kernel with laden's builtin plugins only."""
    result: Kernel = make_kernel()
    return result


class HookRecorder:
    """A plugin that records every lifecycle hook call (see :func:`record_hooks`).

    ``plans``: each plan announced through ``laden_plan_built``, in order.
    ``batches``: ``(epoch, step, batch)`` of each ``laden_batch_produced``.
    """

    def __init__(self) -> None:
        self.plans: list[Any] = []
        self.batches: list[tuple[int, int, Any]] = []

    @property
    def steps(self) -> list[tuple[int, int]]:
        """``(epoch, step)`` of every batch announced, in order."""
        return [(epoch, step) for epoch, step, _ in self.batches]

    @hookimpl
    def laden_plan_built(self, plan: Any, kernel: Kernel) -> None:
        self.plans.append(plan)

    @hookimpl
    def laden_batch_produced(self, batch: Any, epoch: int, step: int, kernel: Kernel) -> None:
        self.batches.append((epoch, step, batch))


@contextmanager
def record_hooks(kernel: Kernel) -> Iterator[HookRecorder]:
    """Record the lifecycle hooks ``kernel`` calls inside the block.

    ``with record_hooks(kernel) as seen: ...`` then ``seen.plans``, ``seen.steps``.
    """
    recorder = HookRecorder()
    with registered(kernel, recorder):
        yield recorder


def run_cli(
    kernel: Kernel, *args: object, code: int | None = None, catch_exceptions: bool = True
) -> Any:
    """Run ``laden ARGS`` with ``kernel``'s commands in-process; returns click's ``Result``.

    :param args: the arguments (paths and numbers are turned into strings).
    :param code: the exit status expected: checked (with the output in the
        message), and the output must hold no traceback.
    :param catch_exceptions: False lets an unexpected exception propagate.
    """
    from click.testing import CliRunner

    from laden.cli import build_cli

    result = CliRunner().invoke(
        build_cli(kernel), [str(a) for a in args], catch_exceptions=catch_exceptions
    )
    if code is not None:
        assert result.exit_code == code, result.output
        assert "Traceback" not in result.output, result.output
    return result

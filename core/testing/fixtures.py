"""Fixtures for laden's tests and its plugin authors' (exposed through ``laden.testing``).

- ``kernel``: a kernel with laden's builtins only (no third-party autoload),
  so tests do not depend on what else is installed.
- ``make_kernel``: a factory, ``make_kernel(plugins=[...], autoload=False)``.
- :func:`registered` registers an ad-hoc plugin object for the length of a ``with`` block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import pytest

from laden.kernel import Kernel

__all__ = ["kernel", "make_kernel", "registered"]


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

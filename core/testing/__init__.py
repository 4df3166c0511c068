"""Test helpers for laden and its plugin authors (also a ``pytest11`` plugin).

Fixtures (``kernel``, ``make_kernel``), :func:`registered`, and the
conformance checks (``check_sampler``, ``check_packer``, ``check_backend``, ...)
that any strategy, ours or a third party's, must pass. Re-exports only.
"""

from laden.testing.conformance import check_backend, check_packer, check_sampler
from laden.testing.fixtures import kernel, make_kernel, registered

__all__ = ["check_backend", "check_packer", "check_sampler", "kernel", "make_kernel", "registered"]

"""Test helpers for laden and its plugin authors (also a ``pytest11`` plugin).

Fixtures (``kernel``, ``make_kernel``), :func:`registered`, :func:`record_hooks`,
:func:`run_cli`, and the
conformance checks, one per kind (``check_tokenizer``, ``check_source``,
``check_packer``, ``check_sampler``, ``check_writer``, ``check_backend``,
``check_executor``, ``check_generator``) and ``check_stateful``, that any
strategy, ours or a third party's, must pass. Re-exports only.
"""

from laden.testing.conformance import (
    check_backend,
    check_executor,
    check_generator,
    check_packer,
    check_sampler,
    check_source,
    check_tokenizer,
    check_writer,
)
from laden.testing.envs import check_env
from laden.testing.fixtures import (
    HookRecorder,
    kernel,
    make_kernel,
    record_hooks,
    registered,
    run_cli,
)
from laden.testing.stateful import check_stateful

__all__ = [
    "HookRecorder",
    "check_backend",
    "check_env",
    "check_executor",
    "check_generator",
    "check_packer",
    "check_sampler",
    "check_source",
    "check_stateful",
    "check_tokenizer",
    "check_writer",
    "kernel",
    "make_kernel",
    "record_hooks",
    "registered",
    "run_cli",
]

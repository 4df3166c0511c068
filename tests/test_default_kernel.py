"""No hidden default kernel: library code takes ``kernel=`` or strategies.

Only the CLI and the convenience ``laden.default_kernel()`` load every
installed plugin; a library call given no kernel falls back on laden's
builtins (``builtin_kernel()``), never on third-party entry points. The same
promise is checked against a real third-party distribution in
``test_third_party.py``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

import laden
from laden.files.write import write_batches
from laden.kernel import Kernel, builtin_kernel
from laden.lengths import build_lengths
from laden.plan import BatchPlan

CORE = Path(__file__).resolve().parents[1] / "core"
#: Where a kernel may be made: the kernel module itself, the CLI, the test helpers.
ALLOWED = ("kernel.py", "cli/", "testing/")


def test_library_code_never_creates_a_kernel() -> None:
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        where = path.relative_to(CORE).as_posix()
        if where.startswith(ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name in ("Kernel", "default_kernel"):
                    offenders.append(f"{where}:{node.lineno}: {name}()")
    assert offenders == []


def test_builtin_kernel_loads_only_laden() -> None:
    kernel = builtin_kernel()
    assert kernel.autoload is False
    assert kernel is not builtin_kernel()  # no process-wide state
    assert {p.distribution for p in kernel.plugins()} == {"laden"}


def test_iter_batches_is_gone() -> None:
    assert not hasattr(Kernel, "iter_batches")  # the loaders fire laden_batch_produced


def test_library_defaults_load_no_third_party_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[bool] = []
    original = Kernel.__init__

    def spy(self: Kernel, **kwargs: Any) -> None:
        original(self, **kwargs)
        made.append(self.autoload)

    kernel = Kernel(autoload=False)
    monkeypatch.setattr(Kernel, "__init__", spy)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": "x" * n}) + "\n" for n in range(1, 30)))
    source = kernel.create("source", {"name": "jsonl", "path": str(data)})
    tokenizer = kernel.create("tokenizer", "bytes")
    table = build_lengths(source, tokenizer)  # default executor
    config = laden.RunConfig.from_mapping({"sampler": {"name": "fixed", "batch_size": 4}})
    plan = BatchPlan.from_config(table, config, kernel=kernel)
    assert plan.verify(table).ok  # default: laden's builtins
    write_batches(plan, table, source, tokenizer, kernel.create("writer", "npz"), tmp_path / "b")
    assert len(list(laden.BatchReader(tmp_path / "b"))) == plan.total_steps
    assert made  # defaults were made...
    assert not any(made)  # ...each from laden's builtins only

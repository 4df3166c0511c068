"""Shared fixtures: the corpus of the batch-file tests, the real puzzle arcade server.

The CLI runner (``run_cli``) and the hook recorder (``record_hooks``) are in
``laden.testing``, for plugin authors too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import laden
from laden.lengths import build_lengths
from laden.plan import BatchPlan
from tests.arcade_server import SKIP_REASON, ArcadeServer


def _mixed_row(i: int, size: int, rng: np.random.Generator) -> dict[str, Any]:
    """A text row, or every 7th row a row of token ids (the jsonl source reads both)."""
    if i % 7 == 0:
        return {"id": i, "input_ids": [int(x) for x in rng.integers(1, 255, 40)]}
    return {"id": i, "text": f"{i}:" + "ab" * size}


def make_corpus(
    root: Path,
    n: int = 240,
    seed: int = 3,
    *,
    max_size: int = 200,
    row: Callable[[int, int, np.random.Generator], dict[str, Any]] = _mixed_row,
    token_budget: int = 1024,
    pack_length: int | None = 256,
    epochs: int = 2,
    plan_seed: int = 1,
) -> dict[str, Any]:
    """The one test corpus: a JSONL file, its length cache and a saved plan of it.

    ``n`` rows of ``row(i, size, rng)`` (sizes drawn below ``max_size``) in
    ``root/data.jsonl``, measured with the ``bytes`` tokenizer into
    ``root/lengths``, planned by a ``token_budget`` sampler (packed by
    ``best_fit`` into rows of ``pack_length`` unless it is None) into
    ``root/plan``. Returns ``root``, ``data``, ``table``, ``plan``, ``source``,
    ``tokenizer`` and the builtins-only ``kernel``.
    """
    rng = np.random.default_rng(seed)
    data = root / "data.jsonl"
    with data.open("w") as f:
        for i, size in enumerate(rng.integers(1, max_size, n)):
            f.write(json.dumps(row(i, int(size), rng)) + "\n")
    kernel = laden.Kernel(autoload=False)
    source = kernel.create("source", {"name": "jsonl", "path": str(data)})
    tokenizer = kernel.create("tokenizer", "bytes")
    table = build_lengths(
        source,
        tokenizer,
        output=root / "lengths",
        executor=kernel.create("executor", {"name": "local", "workers": 0}),
    )
    sampler = kernel.create("sampler", {"name": "token_budget", "token_budget": token_budget})
    packer = None
    if pack_length is not None:
        packer = kernel.create(
            "packer", {"name": "best_fit", "max_length": pack_length, "overflow": "split"}
        )
    plan = BatchPlan.build(table, sampler, packer, epochs=epochs, seed=plan_seed)
    plan.save(root / "plan")
    return {
        "root": root,
        "data": data,
        "table": table,
        "plan": plan,
        "source": source,
        "tokenizer": tokenizer,
        "kernel": kernel,
    }


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, Any]:
    """:func:`make_corpus` in a fresh folder: 240 rows, packed, 2 epochs."""
    return make_corpus(tmp_path)


@pytest.fixture(scope="module")
def arcade_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArcadeServer]:
    """A running arcade server (its ``.port``), one per test module; skips without the extra."""
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    log = tmp_path_factory.mktemp("arcade") / "server.log"
    with ArcadeServer(log=log) as server:
        yield server

"""The demo run: the main job on built-in data that needs no download.

The data is the Python standard library's own ``.py`` files on the running
machine, one sample per top-level definition (module preambles included).
:func:`run_demo` writes the dataset, measures it, suggests bucket edges,
compares batching strategies, builds, shards and verifies a plan, writes
``report.json`` and returns a :class:`DemoRun`; ``laden demo`` prints it.
"""

from __future__ import annotations

import itertools
import json
import re
import sysconfig
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from laden.io import atomic_open, prepare_output, write_json
from laden.progress import Progress

if TYPE_CHECKING:
    from laden.analysis import BatchingComparison
    from laden.kernel import Kernel
    from laden.plan import BatchPlan, PlanCheck
    from laden.records import LengthTable

__all__ = [
    "MARKER",
    "DemoRun",
    "claim_output",
    "run_demo",
    "split_definitions",
    "stdlib_files",
    "write_stdlib_dataset",
]

#: The file that marks a folder as the demo's own: only such a folder is rewritten.
MARKER = ".laden-demo"
#: The artifact kind written into :data:`MARKER` (kept from when the demo lived in the CLI).
_KIND = "laden.cli.demo"

# A top-level definition starts at column 0; the decorators right above belong to it.
_TOP_LEVEL = re.compile(r"^(?:@[^\n]*\n)*(?:async def |def |class )", re.MULTILINE)


def stdlib_files(root: str | None = None) -> list[Path]:
    """Every ``.py`` file of the running interpreter's standard library, sorted."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    files = [p for p in base.rglob("*.py") if "site-packages" not in p.parts]
    return sorted(files)


def split_definitions(source: str) -> list[str]:
    """Cut a module into its preamble and its top-level definitions."""
    starts = [m.start() for m in _TOP_LEVEL.finditer(source)]
    bounds = [0, *(s for s in starts if s > 0), len(source)]
    pieces = (source[a:b].strip("\n") for a, b in itertools.pairwise(bounds))
    return [p for p in pieces if p.strip()]


def _read_samples(path: str) -> list[tuple[str, str]]:
    """Worker: the samples of one file as ``(id, text)``; unreadable files give none."""
    try:
        source = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [(f"{path}#{i}", text) for i, text in enumerate(split_definitions(source))]


def write_stdlib_dataset(
    output: Path, kernel: Kernel, *, workers: int | None = None, root: str | None = None
) -> tuple[Path, int]:
    """Write the stdlib samples as JSONL (``id``, ``text``); returns its path and row count."""
    files = [str(p) for p in stdlib_files(root)]
    executor = kernel.create("executor", {"name": "local", "workers": workers})
    output.mkdir(parents=True, exist_ok=True)
    path = output / "stdlib.jsonl"
    rows = 0
    with Progress(len(files), "reading stdlib", unit="files") as bar, atomic_open(path) as out:
        for samples in executor.map(_read_samples, files, progress=bar):
            for sample_id, text in samples:
                out.write((json.dumps({"id": sample_id, "text": text}) + "\n").encode())
                rows += 1
    return path, rows


def claim_output(output: Path) -> Path:
    """Make ``output`` the demo's folder: it must be new, empty or a previous demo's
    (marked by :data:`MARKER`); anything else is a ConfigError, and left untouched."""
    prepare_output(output, _KIND, force=True, option="--output")
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / MARKER, {"kind": _KIND})
    return output


@attrs.frozen(kw_only=True)
class DemoRun:
    """What a demo run made and measured; ``report`` is what ``report.json`` holds."""

    output: Path
    dataset: Path
    rows: int
    measured: int
    token_budget: int
    num_buckets: int
    pack_length: int
    #: The length table with every sample cut to the token budget.
    table: LengthTable
    stats: dict[str, Any]
    cut_to_budget: int
    suggestion: dict[str, Any]
    comparison: BatchingComparison
    #: Shapes of the first packed batch: ``input_ids`` shape, segments, ``max_seqlen``.
    first_batch: dict[str, Any] | None
    plan: BatchPlan
    shards: list[BatchPlan]
    check: PlanCheck
    online: dict[str, Any]
    report: dict[str, Any]
    seconds: float


def run_demo(
    output: Path,
    *,
    kernel: Kernel,
    workers: int | None = None,
    token_budget: int = 16384,
    num_buckets: int = 4,
    pack_length: int = 4096,
    seed: int = 0,
    world_size: int = 4,
) -> DemoRun:
    """Batch the Python standard library as a training set, start to finish.

    Writes the stdlib's top-level definitions as JSON lines into ``output``,
    measures them with the ``bytes`` tokenizer into a length cache, suggests
    bucket edges, compares random fixed-size batches, token-budget bucketed
    batches and packed rows (best fit, batched by the same token budget),
    builds a 3-epoch plan, shards it over ``world_size`` ranks, verifies the
    saved plan against a rebuild, collects a short online stream (a loopback puzzle
    arcade server with the ``arcade`` extra, the ``mock`` source otherwise) into one
    planned rolling window, and writes ``report.json``.

    :param output: new, empty or a previous demo's folder (see :func:`claim_output`).
    """
    from laden.analysis import compare_batching, length_stats, suggest_report
    from laden.lengths import build_lengths
    from laden.plan import BatchPlan
    from laden.stream.collect import online_demo

    started = time.perf_counter()
    claim_output(output)
    dataset, rows = write_stdlib_dataset(output, kernel, workers=workers)
    tokenizer = kernel.create("tokenizer", "bytes")
    source = kernel.create("source", {"name": "jsonl", "path": str(dataset)})
    executor = kernel.create("executor", {"name": "local", "workers": workers})
    measured = build_lengths(source, tokenizer, output=output / "lengths", executor=executor)
    # A model sees at most token_budget tokens of one sample: longer ones are cut,
    # as a trainer would, and counted here.
    too_long = int((measured.length > token_budget).sum())
    table = attrs.evolve(measured, length=np.minimum(measured.length, token_budget))
    stats = length_stats(table.length)
    suggestion = suggest_report(table.length, num_buckets)
    packer_config = {"name": "best_fit", "max_length": pack_length, "overflow": "split"}
    comparison = compare_batching(
        table,
        kernel.create(
            "sampler",
            {
                "name": "token_budget",
                "token_budget": token_budget,
                "bucket_edges": suggestion["bucket_edges"],
            },
        ),
        kernel=kernel,
        packer=kernel.create("packer", packer_config),
        seed=seed,
        fixed_batch_size="mean",
    )
    first_batch = _first_packed_batch(comparison, source, tokenizer, table, kernel)
    plan = BatchPlan.build(
        table,
        kernel.create("sampler", {"name": "token_budget", "token_budget": token_budget}),
        kernel.create("packer", packer_config),
        epochs=3,
        seed=seed,
        kernel=kernel,
    )
    plan.save(output / "plan")
    shards = [plan.shard(rank, world_size) for rank in range(world_size)]
    check = BatchPlan.load(output / "plan").verify(table, kernel=kernel)
    # Online: a loopback puzzle arcade server when the arcade extra is installed, the
    # mock stream otherwise; collected into a replay buffer and planned as one window.
    online = online_demo(output / "online", kernel=kernel, seconds_budget=10.0)
    report = _report(output, dataset, stats, too_long, suggestion, comparison, plan, shards, check)
    report["online"] = online
    write_json(output / "report.json", report)
    return DemoRun(
        output=output,
        dataset=dataset,
        rows=rows,
        measured=len(measured),
        token_budget=token_budget,
        num_buckets=num_buckets,
        pack_length=pack_length,
        table=table,
        stats=stats,
        cut_to_budget=too_long,
        suggestion=suggestion,
        comparison=comparison,
        first_batch=first_batch,
        plan=plan,
        shards=shards,
        check=check,
        online=online,
        report=report,
        seconds=time.perf_counter() - started,
    )


def _first_packed_batch(
    comparison: BatchingComparison, source: Any, tokenizer: Any, table: Any, kernel: Kernel
) -> dict[str, Any] | None:
    """Collate the first batch of packed rows, to show its shapes."""
    from laden.collate import BatchLayout
    from laden.collate.samples import SourceSamples

    packed, pack_plan = comparison.packed, comparison.pack_plan
    if packed is None or pack_plan is None or not len(packed):
        return None
    batch = kernel.create("backend", "numpy").collate(
        BatchLayout.for_batch(packed[0], pack_plan.pack_lengths, pack_plan),
        SourceSamples(source=source, tokenizer=tokenizer, table=table),
    )
    return {
        "input_ids": tuple(batch["input_ids"].shape),
        "segments": int(batch["cu_seqlens"].size - 1),
        "max_seqlen": int(batch["max_seqlen"]),
    }


def _report(
    output: Path,
    dataset: Path,
    stats: dict[str, Any],
    too_long: int,
    suggestion: dict[str, Any],
    comparison: BatchingComparison,
    plan: BatchPlan,
    shards: list[BatchPlan],
    check: PlanCheck,
) -> dict[str, Any]:
    """The content of ``report.json``."""
    return {
        "dataset": str(dataset),
        "lengths": str(output / "lengths"),
        "stats": stats,
        "cut_to_budget": too_long,
        "suggestion": suggestion,
        "token_budget_plan": comparison.budget_metrics,
        "random_fixed_plan": {
            "batch_size": comparison.fixed_batch_size,
            **comparison.fixed_metrics,
        },
        "packing": comparison.packing,
        "packed_plan": comparison.packed_metrics,
        "plan": {
            **plan.summary(),
            "directory": str(output / "plan"),
            "shards": [
                {"rank": s.rank, "fingerprint": s.fingerprint, "steps": s.steps, "tokens": s.tokens}
                for s in shards
            ],
            "verified": check.ok,
        },
    }

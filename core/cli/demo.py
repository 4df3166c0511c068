"""``laden demo``: the main job on built-in data that needs no download.

The data is the Python standard library's own ``.py`` files on the running
machine, one sample per top-level definition (module preambles included).
"""

from __future__ import annotations

import itertools
import json
import re
import sysconfig
import time
from pathlib import Path

import attrs
import click
import numpy as np

from laden.io import atomic_open, prepare_output, write_json
from laden.kernel import Kernel
from laden.progress import Progress

__all__ = [
    "MARKER",
    "claim_output",
    "demo_command",
    "split_definitions",
    "stdlib_files",
    "write_stdlib_dataset",
]

#: The file that marks a folder as the demo's own: only such a folder is rewritten.
MARKER = ".laden-demo"

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
    prepare_output(output, "laden.cli.demo", force=True, option="--output")
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / MARKER, {"kind": "laden.cli.demo"})
    return output


def _section(title: str) -> None:
    click.echo(f"\n== {title}")


@click.command("demo")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("laden-demo"),
    show_default=True,
    help="Where the demo writes its dataset, length cache and report.",
)
@click.option("--workers", type=int, default=None, help="Worker processes (default: CPUs).")
@click.option("--token-budget", type=click.IntRange(min=1), default=16384, show_default=True)
@click.option("--num-buckets", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--pack-length",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Tokens per packed row.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.pass_context
def demo_command(
    ctx: click.Context,
    output: Path,
    workers: int | None,
    token_budget: int,
    num_buckets: int,
    pack_length: int,
    seed: int,
) -> None:
    """Batch the Python standard library as a training set, start to finish.

    Writes the stdlib's top-level definitions as JSON lines, measures them with
    the ``bytes`` tokenizer into a length cache, suggests bucket edges, and
    compares random fixed-size batches, token-budget bucketed batches and
    packed rows (best fit, batched by the same token budget).
    """
    from laden.analysis import (
        ascii_counts,
        ascii_histogram,
        batch_metrics,
        length_stats,
        packing_metrics,
        suggest_report,
    )
    from laden.collate import BatchLayout
    from laden.collate.samples import SourceSamples
    from laden.lengths import build_lengths
    from laden.plan import BatchPlan

    kernel = ctx.find_object(Kernel)
    assert kernel is not None
    started = time.perf_counter()
    claim_output(output)
    dataset, rows = write_stdlib_dataset(output, kernel, workers=workers)
    click.echo(f"dataset: {rows:,} samples (top-level definitions of the stdlib) -> {dataset}")

    tokenizer = kernel.create("tokenizer", "bytes")
    source = kernel.create("source", {"name": "jsonl", "path": str(dataset)})
    executor = kernel.create("executor", {"name": "local", "workers": workers})
    measured = build_lengths(source, tokenizer, output=output / "lengths", executor=executor)
    click.echo(
        f"lengths: {len(measured):,} samples measured (bytes tokenizer) -> {output / 'lengths'}"
    )
    # A model sees at most token_budget tokens of one sample: longer ones are cut,
    # as a trainer would, and counted here.
    too_long = int((measured.length > token_budget).sum())
    table = attrs.evolve(measured, length=np.minimum(measured.length, token_budget))

    _section("length histogram")
    stats = length_stats(table.length)
    click.echo(
        f"samples={stats['samples']:,} tokens={stats['tokens']:,} mean={stats['mean']:.0f} "
        f"p50={stats['p50']:.0f} p90={stats['p90']:.0f} p99={stats['p99']:.0f} "
        f"max={stats['max']:,} ({too_long:,} samples cut to {token_budget:,})"
    )
    for line in ascii_histogram(table.length):
        click.echo("  " + line)

    _section(f"suggested bucket edges ({num_buckets} buckets, exact DP)")
    suggestion = suggest_report(table.length, num_buckets)
    click.echo(f"edges: {suggestion['bucket_edges']}")
    click.echo(
        f"padding to the bucket edge: efficiency {suggestion['efficiency_to_edge']:.4f} "
        f"(one bucket: {suggestion['single_bucket_efficiency']:.4f})"
    )

    _section(f"batching one epoch (token budget {token_budget:,})")
    budget = kernel.create(
        "sampler",
        {
            "name": "token_budget",
            "token_budget": token_budget,
            "bucket_edges": suggestion["bucket_edges"],
        },
    )
    budget_plan = kernel.plan_epoch(budget, table, seed=seed)
    budget_metrics = batch_metrics(budget_plan, table.length)
    batch_size = max(round(len(table) / max(len(budget_plan), 1)), 1)
    fixed = kernel.create("sampler", {"name": "fixed", "batch_size": batch_size})
    fixed_plan = kernel.plan_epoch(fixed, table, seed=seed)
    fixed_metrics = batch_metrics(fixed_plan, table.length)
    over = int((fixed_plan.batch_sizes * fixed_plan.max_length > token_budget).sum())
    pack_plan = kernel.create(
        "packer", {"name": "best_fit", "max_length": pack_length, "overflow": "split"}
    ).pack(table)
    packing = packing_metrics(pack_plan)
    packs = pack_plan.to_length_table()
    packed_plan = kernel.plan_epoch(
        kernel.create("sampler", {"name": "token_budget", "token_budget": token_budget}),
        packs,
        seed=seed,
    )
    packed_metrics = batch_metrics(packed_plan, packs.length)
    # Packed rows are padded to pack_length, not to the longest pack of the batch.
    packed_metrics["padded_tokens"] = int(packed_plan.order.size) * pack_length
    packed_metrics["padding_tokens"] = packed_metrics["padded_tokens"] - packing["real_tokens"]
    packed_metrics["efficiency"] = packing["efficiency"]
    click.echo(f"{'strategy':<34} {'batches':>8} {'efficiency':>10} {'padding tokens':>15}")
    for label, metrics in (
        (f"random fixed-size ({batch_size}/batch)", fixed_metrics),
        ("token_budget, bucketed", budget_metrics),
        (f"best_fit packed rows of {pack_length:,}", packed_metrics),
    ):
        click.echo(
            f"{label:<34} {metrics['batches']:>8,} {metrics['efficiency']:>10.4f} "
            f"{metrics['padding_tokens']:>15,}"
        )
    click.echo(
        f"random fixed-size batches over the budget: {over:,} of {len(fixed_plan):,}; "
        "token_budget batches over it: 0"
    )
    saved = fixed_metrics["padded_tokens"] / max(budget_metrics["padded_tokens"], 1)
    click.echo(f"token_budget computes {saved:.1f}x fewer padded tokens for the same samples")

    _section(f"packing (best_fit into rows of {pack_length:,}, longer samples split)")
    click.echo(
        f"{packing['rows']:,} rows for {packing['sequences']:,} samples: "
        f"{packing['packing_ratio']:.2f} per row, efficiency {packing['efficiency']:.4f}, "
        f"{packing['split_samples']:,} samples split, no token lost"
    )
    click.echo("segments per row:")
    for line in ascii_counts(packing["segments_per_row"]):
        click.echo("  " + line)
    if len(packed_plan):
        first = packed_plan[0]
        batch = kernel.create("backend", "numpy").collate(
            BatchLayout.for_batch(first, packs.length, pack_plan),
            SourceSamples(source=source, tokenizer=tokenizer, table=table),
        )
        click.echo(
            f"first packed batch: input_ids {batch['input_ids'].shape}, "
            f"{batch['cu_seqlens'].size - 1} segments, max_seqlen {batch['max_seqlen']:,}"
        )

    _section("batch plan (3 epochs, packed rows batched by the token budget, 4 ranks)")
    plan = BatchPlan.build(
        table,
        kernel.create("sampler", {"name": "token_budget", "token_budget": token_budget}),
        kernel.create(
            "packer", {"name": "best_fit", "max_length": pack_length, "overflow": "split"}
        ),
        epochs=3,
        seed=seed,
        kernel=kernel,
    )
    plan.save(output / "plan")
    click.echo(
        f"plan {plan.fingerprint}: {plan.total_steps:,} steps over {plan.num_epochs} epochs "
        f"-> {output / 'plan'}"
    )
    shards = [plan.shard(rank, 4) for rank in range(4)]
    for shard in shards:
        click.echo(
            f"  rank {shard.rank}: {shard.steps[0]:,} steps/epoch, "
            f"{shard.tokens[0]:,} tokens in epoch 0, "
            f"{int(shard.padding[0].sum())} padding batch(es), plan {shard.fingerprint}"
        )
    imbalance = shards[0].shard_report["step_imbalance"][0]
    click.echo(f"  per-step token imbalance across ranks: {imbalance:.1%} on average")
    check = BatchPlan.load(output / "plan").verify(table, kernel=kernel)
    verdict = "ok" if check else check.reason
    click.echo(f"  saved plan reloaded and verified against a rebuild: {verdict}")

    report = {
        "dataset": str(dataset),
        "lengths": str(output / "lengths"),
        "stats": stats,
        "cut_to_budget": too_long,
        "suggestion": suggestion,
        "token_budget_plan": budget_metrics,
        "random_fixed_plan": {"batch_size": batch_size, **fixed_metrics},
        "packing": packing,
        "packed_plan": packed_metrics,
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
    write_json(output / "report.json", report)
    click.echo(
        f"\ndone in {time.perf_counter() - started:.1f}s; dataset, length cache and "
        f"report.json in {output}/"
    )

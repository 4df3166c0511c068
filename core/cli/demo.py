"""``laden demo``: the main job on built-in data that needs no download.

The run itself is :func:`laden.demo.run_demo` (so Python users get the same
files and report); this command parses its options and prints the result.
"""

from __future__ import annotations

from pathlib import Path

import click

from laden.analysis import ascii_counts, ascii_histogram
from laden.cli.main import kernel_of
from laden.demo import (
    MARKER,
    DemoRun,
    claim_output,
    run_demo,
    split_definitions,
    stdlib_files,
    write_stdlib_dataset,
)

__all__ = [
    "MARKER",
    "claim_output",
    "demo_command",
    "print_demo",
    "split_definitions",
    "stdlib_files",
    "write_stdlib_dataset",
]


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
    run = run_demo(
        output,
        kernel=kernel_of(ctx),
        workers=workers,
        token_budget=token_budget,
        num_buckets=num_buckets,
        pack_length=pack_length,
        seed=seed,
    )
    print_demo(run)


def print_demo(run: DemoRun) -> None:
    """Print what :func:`~laden.demo.run_demo` made, section by section."""
    output, token_budget, pack_length = run.output, run.token_budget, run.pack_length
    click.echo(
        f"dataset: {run.rows:,} samples (top-level definitions of the stdlib) -> {run.dataset}"
    )
    click.echo(
        f"lengths: {run.measured:,} samples measured (bytes tokenizer) -> {output / 'lengths'}"
    )

    _section("length histogram")
    stats = run.stats
    click.echo(
        f"samples={stats['samples']:,} tokens={stats['tokens']:,} mean={stats['mean']:.0f} "
        f"p50={stats['p50']:.0f} p90={stats['p90']:.0f} p99={stats['p99']:.0f} "
        f"max={stats['max']:,} ({run.cut_to_budget:,} samples cut to {token_budget:,})"
    )
    for line in ascii_histogram(run.table.length):
        click.echo("  " + line)

    _section(f"suggested bucket edges ({run.num_buckets} buckets, exact DP)")
    suggestion = run.suggestion
    click.echo(f"edges: {suggestion['bucket_edges']}")
    click.echo(
        f"padding to the bucket edge: efficiency {suggestion['efficiency_to_edge']:.4f} "
        f"(one bucket: {suggestion['single_bucket_efficiency']:.4f})"
    )

    _section(f"batching one epoch (token budget {token_budget:,})")
    compared = run.comparison
    budget_metrics, fixed_metrics = compared.budget_metrics, compared.fixed_metrics
    packing, packed_metrics = run.report["packing"], run.report["packed_plan"]
    click.echo(f"{'strategy':<34} {'batches':>8} {'efficiency':>10} {'padding tokens':>15}")
    for label, metrics in (
        (f"random fixed-size ({compared.fixed_batch_size}/batch)", fixed_metrics),
        ("token_budget, bucketed", budget_metrics),
        (f"best_fit packed rows of {pack_length:,}", packed_metrics),
    ):
        click.echo(
            f"{label:<34} {metrics['batches']:>8,} {metrics['efficiency']:>10.4f} "
            f"{metrics['padding_tokens']:>15,}"
        )
    click.echo(
        f"random fixed-size batches over the budget: {compared.fixed_over_budget:,} of "
        f"{len(compared.fixed):,}; token_budget batches over it: 0"
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
    if run.first_batch is not None:
        first = run.first_batch
        click.echo(
            f"first packed batch: input_ids {first['input_ids']}, "
            f"{first['segments']} segments, max_seqlen {first['max_seqlen']:,}"
        )

    plan, shards = run.plan, run.shards
    _section(f"batch plan (3 epochs, packed rows batched by the token budget, {len(shards)} ranks)")
    click.echo(
        f"plan {plan.fingerprint}: {plan.total_steps:,} steps over {plan.num_epochs} epochs "
        f"-> {output / 'plan'}"
    )
    for shard in shards:
        click.echo(
            f"  rank {shard.rank}: {shard.steps[0]:,} steps/epoch, "
            f"{shard.tokens[0]:,} tokens in epoch 0, "
            f"{int(shard.padding[0].sum())} padding batch(es), plan {shard.fingerprint}"
        )
    imbalance = shards[0].shard_report["step_imbalance"][0]
    click.echo(f"  per-step token imbalance across ranks: {imbalance:.1%} on average")
    verdict = "ok" if run.check else run.check.reason
    click.echo(f"  saved plan reloaded and verified against a rebuild: {verdict}")
    online = run.online
    _section(f"online stream ({online['source']} -> replay buffer -> one rolling window)")
    click.echo(
        f"{online['samples']:,} samples at {online['samples_per_second']:,.0f}/s "
        f"({online['errors']} errors) -> {online['output']}"
    )
    click.echo(
        f"window of {online['window']['count']:,} samples (ids {online['window']['start']} to "
        f"{online['window']['stop'] - 1}), fingerprint {online['window_fingerprint']}: "
        f"{online['batches']} packed batches, efficiency {online['efficiency']:.4f}"
    )
    click.echo(
        "\nnext: parameter sweeps into datasets -> laden sweep --example --dry-run "
        "(75 Gaussian stimuli: 5 amplitudes x 5 sigmas x 3 repetitions; docs/sweeps.md)"
    )
    click.echo(f"\ndone in {run.seconds:.1f}s; dataset, length cache and report.json in {output}/")

"""``laden lengths``, ``laden analyze`` and ``laden suggest``: measure and study a dataset."""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

import click

from laden.analysis import (
    analyze_report,
    ascii_counts,
    ascii_histogram,
    batch_bytes_report,
    compare_batching,
    depth_report,
    length_stats,
    over_budget_line,
    over_budget_report,
    plot_histogram,
    suggest_report,
)
from laden.cli.main import emit_json, executor_of, executor_options, kernel_of, parse_options
from laden.errors import ConfigError, DataError
from laden.io import prepare_output, prepare_output_file
from laden.kernel import Kernel
from laden.lengths import build_lengths, load_lengths, save_lengths
from laden.serde import combine_problems

__all__ = ["analyze_command", "lengths_group", "suggest_command"]


_MISSING = re.compile(r"^missing required key '([^']+)'$")


def _create(kernel: Kernel, kind: str, config: dict[str, Any], flag: str) -> Any:
    """``kernel.create``; a missing required setting says which ``flag KEY=...`` gives it."""
    try:
        return kernel.create(kind, config)
    except ConfigError as exc:
        problems = getattr(exc, "problems", None) or [exc]
        hinted = []
        for p in problems:
            missing = _MISSING.match(p.reason)
            if missing:
                p = ConfigError(f"{p.reason} (pass {flag} {missing[1]}=...)", path=p.path)
            hinted.append(p)
        raise combine_problems(hinted) from None


def _blank(path: str, *, block: int = 1 << 16) -> bool:
    """Whether a file holds nothing but whitespace (stops at the first other byte)."""
    with open(path, "rb") as f:
        while chunk := f.read(block):
            if chunk.strip():
                return False
    return True


def _edges(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        edges = tuple(int(e) for e in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected integers like 256,512,1024, got {text!r}") from None
    if any(b <= a for a, b in itertools.pairwise(edges)) or edges[0] < 1:
        raise click.BadParameter(f"edges must be positive and increase strictly, got {text!r}")
    return edges


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# ------------------------------------------------------------------- lengths


@click.group("lengths")
def lengths_group() -> None:
    """Measure datasets into length caches and inspect them."""


@lengths_group.command("build")
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False))
@click.option("--tokenizer", default="bytes", show_default=True, help="Tokenizer name.")
@click.option(
    "--source",
    "source_name",
    default="jsonl",
    show_default=True,
    help="Source name: jsonl, another indexed source (staged_h5: an HDF5 file of staged "
    "samples), or one that plans itself (timeseries: -S window=48 ...).",
)
@click.option(
    "-T",
    "--tokenizer-option",
    "tokenizer_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A tokenizer setting, e.g. -T path=tokenizer.json (repeatable).",
)
@click.option(
    "-S",
    "--source-option",
    "source_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A jsonl source setting, e.g. -S ids_field=tokens or -S vocab_size=50257 (repeatable).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="The length cache directory to write.",
)
@click.option("--workers", type=int, default=None, help="Worker processes (default: CPUs).")
@executor_options
@click.option(
    "--on-error",
    type=click.Choice(["error", "skip"]),
    default=None,
    help="Stop at a malformed line (default), or skip and count it (-S on_error=...).",
)
@click.option("--text-field", default=None, help="Field holding the text (default: text).")
@click.option("--no-reuse", is_flag=True, help="Measure again even if the cache matches.")
@click.option("--force", is_flag=True, help="Replace a length cache in OUTPUT that does not match.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def lengths_build(
    dataset: str,
    tokenizer: str,
    source_name: str,
    tokenizer_options: tuple[str, ...],
    source_options: tuple[str, ...],
    output: str,
    workers: int | None,
    executor_name: str,
    executor_options: tuple[str, ...],
    on_error: str | None,
    text_field: str | None,
    no_reuse: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Measure every row of DATASET (JSON lines, or --source's file) into a length cache.

    OUTPUT must be new, empty or a length cache (replaced only with --force).
    """
    if _blank(dataset):
        raise DataError("is empty: there are no samples to measure", file=dataset)
    kernel = kernel_of()
    tok = _create(
        kernel,
        "tokenizer",
        {"name": tokenizer, **parse_options(tokenizer_options, "--tokenizer-option")},
        "-T",
    )
    source_settings = parse_options(source_options, "--source-option")
    for key in ("name", "path"):
        if key in source_settings:
            raise click.BadParameter(
                f"{key!r} is not a source option (the dataset is the DATASET argument)",
                param_hint="--source-option",
            )
    if source_name != "jsonl":
        source = _create(
            kernel, "source", {"name": source_name, "path": dataset, **source_settings}, "-S"
        )
        if not callable(getattr(source, "measure", None)):  # e.g. timeseries: its windows
            _build_self_measured(source, source_name, output, force, as_json)
            return
    else:
        flags = {"on_error": on_error, "text_field": text_field}
        source_settings.update({k: v for k, v in flags.items() if v is not None})
        source = _create(
            kernel, "source", {"name": "jsonl", "path": dataset, **source_settings}, "-S"
        )
    executor = executor_of(kernel, executor_name, workers, executor_options)
    started = time.perf_counter()
    table = build_lengths(
        source,
        tok,
        output=output,
        executor=executor,
        reuse=not no_reuse,
        overwrite=force or no_reuse,  # measuring again replaces the cache: that is the ask
    )
    summary = {
        "output": output,
        "samples": len(table),
        "tokens": table.num_tokens,
        "skipped": table.meta.get("skipped", 0),
        "skipped_lines": table.meta.get("skipped_lines", []),
        "reused": bool(table.meta.get("reused", False)),
        "seconds": round(time.perf_counter() - started, 3),
        "dataset_digest": table.meta.get("dataset_digest"),
        "tokenizer_hash": table.meta.get("tokenizer_hash"),
    }
    if as_json:
        emit_json(summary)
        return
    state = "reused" if summary["reused"] else "measured"
    click.echo(
        f"{state} {summary['samples']:,} samples, {summary['tokens']:,} tokens "
        f"in {summary['seconds']:.2f}s -> {output}"
    )
    if summary["skipped"]:
        lines = ", ".join(str(n) for n in summary["skipped_lines"][:10])
        click.echo(f"skipped {summary['skipped']:,} malformed line(s): {lines}")


def _build_self_measured(source: Any, name: str, output: str, force: bool, as_json: bool) -> None:
    """A source that makes its own length table (``lengths()``, e.g. ``timeseries`` windows)."""
    if not callable(getattr(source, "lengths", None)):
        raise click.BadParameter(
            f"source {name!r} cannot be measured: it has neither measure() (read by "
            "offsets) nor lengths()",
            param_hint="--source",
        )
    started = time.perf_counter()
    prepare_output(output, "laden.lengths", force=force, option="--output")
    table = source.lengths()
    save_lengths(table, output, overwrite=force)
    summary = {
        "output": output,
        "samples": len(table),
        "tokens": table.num_tokens,
        "windows": table.meta.get("windows"),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if as_json:
        emit_json(summary)
        return
    click.echo(f"planned {len(table):,} samples in {summary['seconds']:.2f}s -> {output}")


@lengths_group.command("stats")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also write a PNG histogram.")
@click.option("--force", is_flag=True, help="Overwrite an existing --plot file.")
def lengths_stats(directory: str, as_json: bool, plot: str | None, force: bool) -> None:
    """Length statistics and histogram of a length cache."""
    if plot:
        prepare_output_file(plot, force=force, option="--plot")
    table = load_lengths(directory)
    stats = length_stats(table.length)
    meta = {k: table.meta.get(k) for k in ("dataset", "tokenizer", "skipped")}
    if plot:
        plot_histogram(table.length, plot, title=f"{directory}: sample lengths")
    if as_json:
        emit_json({**stats, **meta, "plot": plot})
        return
    click.echo(f"{directory}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in stats.items()))
    click.echo(f"dataset={meta['dataset']} tokenizer={meta['tokenizer']}")
    for line in ascii_histogram(table.length):
        click.echo("  " + line)
    if plot:
        click.echo(f"plot: {plot}")


# ------------------------------------------------------------------- analyze


@click.command("analyze")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--bucket-edges", help="Upper bucket edges, e.g. 256,512,1024.")
@click.option(
    "--token-budget",
    type=int,
    default=16384,
    show_default=True,
    help="Token budget of the simulated token_budget plan.",
)
@click.option(
    "--overflow",
    type=click.Choice(["error", "drop", "truncate", "alone"]),
    default="error",
    show_default=True,
    help="What the simulated plan does with a sample longer than the budget (the "
    "token_budget sampler's overflow).",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also write a PNG histogram.")
@click.option("--force", is_flag=True, help="Overwrite an existing --plot file.")
@click.option(
    "--pack-length",
    type=int,
    help="Also pack the samples into rows of this many tokens and report the packing.",
)
@click.option(
    "--packer",
    default="best_fit",
    show_default=True,
    help="The packer strategy used with --pack-length.",
)
@click.option(
    "--backend",
    "backend_name",
    default=None,
    help="Count collated bytes per batch as this backend collates (default: int64 token "
    "columns, an upper bound; windows count their own arrays).",
)
@click.option(
    "--step-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Staged samples: bytes of all fields of one step (counts bytes per batch as staged).",
)
def analyze_command(
    directory: str,
    bucket_edges: str | None,
    token_budget: int,
    overflow: str,
    seed: int,
    as_json: bool,
    plot: str | None,
    force: bool,
    pack_length: int | None,
    packer: str,
    backend_name: str | None,
    step_bytes: int | None,
) -> None:
    """Bucket efficiency, recommendations, batch metrics and bytes per batch of a length cache."""
    if plot:
        prepare_output_file(plot, force=force, option="--plot")
    if token_budget <= 0:
        raise ConfigError(f"must be > 0, got {token_budget}", path=("token_budget",))
    if pack_length is not None and pack_length <= 0:
        raise ConfigError(f"must be > 0, got {pack_length}", path=("pack_length",))
    table = load_lengths(directory)
    edges = _edges(bucket_edges)
    kernel = kernel_of()
    sampler = kernel.create(
        "sampler",
        {
            "name": "token_budget",
            "token_budget": token_budget,
            "bucket_edges": list(edges),
            "overflow": overflow,
        },
    )
    over_budget = over_budget_report(table.length, sampler.max_sample_length, overflow)
    if over_budget["samples"] and overflow == "error":
        raise DataError(
            f"{over_budget['samples']:,} sample(s) with {over_budget['tokens']:,} tokens are "
            f"longer than the token budget allows ({over_budget['limit']:,} tokens; the longest "
            f"has {over_budget['longest']:,}): pass --overflow drop, truncate or alone (the "
            "sampler's overflow setting), or raise --token-budget",
            file=directory,
        )
    packer_strategy = None
    if pack_length is not None:
        packer_strategy = kernel.create(
            "packer", {"name": packer, "max_length": pack_length, "overflow": "split"}
        )
    comparison = compare_batching(table, sampler, kernel=kernel, packer=packer_strategy, seed=seed)
    result = analyze_report(table, sampler, comparison)
    if table.meta.get("windows"):
        result["windows"] = table.meta["windows"]
    if table.stage_length is not None:  # staged samples: their depth_buckets plan, padded
        keep = {"alone": "alone", "truncate": "alone", "drop": "drop"}.get(overflow, "error")
        staged = {"name": "depth_buckets", "token_budget": token_budget, "overflow": keep}
        depth_plan = kernel.create("sampler", staged).plan_epoch(table, seed=seed)
        result["depth_buckets"] = depth_report(table, depth_plan)
    # Bytes per batch of the plan shown: depth buckets for staged samples, else token_budget.
    shown = depth_plan if "depth_buckets" in result else comparison.budget
    result["batch_bytes"] = _batch_bytes(kernel, table, shown, backend_name, step_bytes)
    if plot:
        plot_histogram(table.length, plot, edges=edges, title=f"{directory}: lengths and edges")
        result["plot"] = plot
    if as_json:
        emit_json(result)
        return
    if "windows" in result:
        w = result["windows"]
        click.echo(
            f"windows: {w['count']:,} of {w['window']} rows (stride {w['stride']}, horizon "
            f"{w['horizon']}) over {w['series']:,} series, {w['rows']:,} rows; "
            f"{w['series_without_windows']:,} series too short"
        )
    if "depth_buckets" in result:
        d = result["depth_buckets"]
        click.echo(
            f"depth buckets (depth_buckets, token_budget {token_budget}, padded per stage): "
            f"{d['batches']:,} batches, efficiency {d['efficiency'] or 0:.4f}"
        )
        click.echo("depth   samples  batches  dropped  efficiency  per stage")
        for depth, row in d["depths"].items():
            per_stage = " ".join("-" if e is None else f"{e:.3f}" for e in row["stage_efficiency"])
            eff = "-" if row["efficiency"] is None else f"{row['efficiency']:.4f}"
            click.echo(
                f"{depth:>5}  {row['samples']:>8,}  {row['batches']:>7,}  {row['dropped']:>7,}"
                f"  {eff:>10}  {per_stage}"
            )
        click.echo("")
    click.echo("bucket  range            samples    share  eff@edge  eff@max")
    for row in result["buckets"]:
        lo, hi = row["range"]
        span = f"{lo}-{hi if hi is not None else 'inf'}"
        e_edge = "-" if row["efficiency_to_edge"] is None else f"{row['efficiency_to_edge']:.3f}"
        e_max = "-" if row["efficiency_to_max"] is None else f"{row['efficiency_to_max']:.3f}"
        click.echo(
            f"{row['bucket']:>6}  {span:<15} {row['samples']:>8,}  {row['share']:>6.1%}"
            f"  {e_edge:>8}  {e_max:>7}"
        )
    metrics = result["token_budget_plan"]
    click.echo(
        f"\ntoken_budget {token_budget}: {metrics['batches']:,} batches, efficiency "
        f"{metrics['efficiency']:.4f}, padding {metrics['padding_tokens']:,} tokens, "
        f"{metrics['distinct_shapes']:,} distinct shapes, "
        f"{metrics['repeat_rate']:.1%} of epoch 1's batches repeat one of epoch 0"
    )
    click.echo(over_budget_line(result["over_budget"]))
    sizes = result["batch_bytes"]
    if sizes is None:
        click.echo("collated bytes per batch: pass --step-bytes (staged samples)")
    elif sizes["batches"]:
        click.echo(
            f"collated bytes per batch ({sizes['layout']}): min {sizes['min']:,}, median "
            f"{sizes['median']:,.0f}, max {sizes['max']:,}"
        )
    baseline = result["random_fixed_plan"]
    click.echo(
        f"random fixed batches of {comparison.fixed_batch_size}: efficiency "
        f"{baseline['efficiency']:.4f}, "
        f"padding {baseline['padding_tokens']:,} tokens"
    )
    click.echo(
        "top batch shapes (size x max_length): "
        + ", ".join(
            f"{shape} ({count})" for shape, count in list(metrics["top_shapes"].items())[:5]
        )
    )
    if "packing" in result:
        packing = result["packing"]
        click.echo(
            f"\npacked by {packer} into rows of {pack_length:,}: {packing['rows']:,} rows, "
            f"{packing['packing_ratio']:.2f} sequences per row, efficiency "
            f"{packing['efficiency']:.4f}, {packing['split_samples']:,} longer samples split"
        )
        click.echo("segments per row:")
        for line in ascii_counts(packing["segments_per_row"]):
            click.echo("  " + line)
    click.echo("\nrecommendations:")
    for line in result["recommendations"]:
        click.echo(f"  - {line}")
    if plot:
        click.echo(f"plot: {plot}")


def _batch_bytes(
    kernel: Kernel, table: Any, plan: Any, backend_name: str | None, step_bytes: int | None
) -> dict[str, Any] | None:
    """Bytes per batch of the simulated plan, counted as ``--backend`` or ``--step-bytes`` say
    (None for staged samples without ``--step-bytes``: their bytes depend on their fields)."""
    from laden.memory import MemoryBudget, model_for

    if getattr(table, "stage_length", None) is not None and step_bytes is None:
        return None
    backend = (
        _create(kernel, "backend", {"name": backend_name}, "--backend") if backend_name else None
    )
    layout = "staged" if step_bytes is not None else "auto"
    budget = MemoryBudget(bytes=1, layout=layout, step_bytes=step_bytes)
    return batch_bytes_report(plan, table, model_for(budget, table, backend))


@click.command("suggest")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--num-buckets", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def suggest_command(directory: str, num_buckets: int, as_json: bool) -> None:
    """Bucket edges that minimise padding (exact dynamic programming)."""
    table = load_lengths(directory)
    report = suggest_report(table.length, num_buckets)
    if as_json:
        emit_json(report)
        return
    click.echo(f"bucket edges: {','.join(str(e) for e in report['bucket_edges'])}")
    click.echo(
        f"padding to edges: {report['padding_tokens']:,} tokens, efficiency "
        f"{report['efficiency_to_edge']:.4f} (one bucket: "
        f"{report['single_bucket_efficiency']:.4f})"
    )

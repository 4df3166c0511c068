"""``laden stream collect`` and ``laden stream stats``: collect an online stream into a dataset."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from laden.cli.data import _create
from laden.cli.main import emit_json, kernel_of, parse_options
from laden.config import read_config_file
from laden.errors import ConfigError
from laden.progress import Progress
from laden.stream.buffer import EVICTIONS
from laden.stream.collect import CollectStatus, collect, stream_stats

__all__ = ["stream_group"]


@click.group("stream")
def stream_group() -> None:
    """Collect online streams (mock, telnet, puzzle_arcade, ...) into datasets."""


def _section(data: Mapping[str, Any], kind: str, file: str) -> dict[str, Any]:
    value = data.get(kind)
    if value is None:
        return {}
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a table or a name, got {value!r}", path=(kind,), source=file)
    return dict(value)


def _settings(
    name: str | None, pairs: tuple[str, ...], flag: str, base: dict[str, Any], kind: str
) -> dict[str, Any]:
    """A strategy's settings: the config file's section, ``--NAME`` and ``-X KEY=VALUE`` on top."""
    settings = dict(base)
    if name is not None and name != settings.get("name"):
        settings = {"name": name}  # another strategy than the file's: its settings do not apply
    settings.update(parse_options(pairs, flag))
    if "name" not in settings:
        raise click.UsageError(f"give --{kind} NAME (or a [{kind}] section in --config)")
    return settings


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_summary(summary: Mapping[str, Any], output: str) -> None:
    status = summary["status"]
    click.echo(
        f"collected {summary['samples']:,} samples ({summary['new_samples']:,} new), "
        f"{summary['tokens']:,} tokens from {summary['source']['name']} in "
        f"{summary['run_seconds']:.2f}s ({summary['samples_per_second']:,.0f} samples/s), "
        f"{summary['errors']:,} errors -> {output}"
    )
    stats = summary["buffer_stats"]
    click.echo(
        f"buffer: {stats['size']:,} samples, {stats['tokens']:,} tokens, mean difficulty "
        f"{_fmt_rate(stats['mean_difficulty'])}, success rate {_fmt_rate(stats['success_rate'])}, "
        f"{stats['evictions']:,} evicted"
    )
    kinds = summary["counters"]["error_kinds"]
    if kinds:
        shown = ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items()))
        click.echo(f"errors: {shown} (last: {summary['last_error']})")
    stops = {
        "exhausted": "the source ended before --samples were collected",
        "source_failed": "the source kept failing; rerun with --resume to continue",
        "time_limit": "the time limit was reached; rerun with --resume to continue",
    }
    if status in stops:
        click.echo(f"stopped: {stops[status]}", err=True)


@stream_group.command("collect")
@click.option("--source", "source_name", help="The source strategy (mock, telnet, ...).")
@click.option(
    "-S",
    "--source-option",
    "source_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A source setting, e.g. -S seed=3 or -S port=8023 (repeatable).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A run config (TOML/YAML) whose [source] and [tokenizer] sections are used.",
)
@click.option("--samples", type=click.IntRange(min=1), required=True, help="Samples to collect.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="The collection directory (samples.jsonl, buffer/, collect.json).",
)
@click.option(
    "--tokenizer",
    default=None,
    help="Tokenizes text samples (default: bytes, or the config's [tokenizer]).",
)
@click.option(
    "-T",
    "--tokenizer-option",
    "tokenizer_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A tokenizer setting (repeatable).",
)
@click.option("--capacity", type=click.IntRange(min=1), help="Buffer size (default: --samples).")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Buffer token bound.")
@click.option("--eviction", type=click.Choice(EVICTIONS), help="Buffer eviction (default: fifo).")
@click.option("--seed", type=click.IntRange(min=0), help="The buffer's seed (default: 0).")
@click.option(
    "--max-failures",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Source failures in a row (no sample between them) before stopping.",
)
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), help="Time limit.")
@click.option("--resume", is_flag=True, help="Continue the collection in OUTPUT.")
@click.option("--force", is_flag=True, help="Replace a collection in OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def collect_command(
    source_name: str | None,
    source_options: tuple[str, ...],
    config_file: str | None,
    samples: int,
    output: str,
    tokenizer: str | None,
    tokenizer_options: tuple[str, ...],
    capacity: int | None,
    max_tokens: int | None,
    eviction: str | None,
    seed: int | None,
    max_failures: int,
    max_seconds: float | None,
    resume: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Collect --samples samples of a stream into OUTPUT: a JSONL dataset every offline
    command reads, a replay buffer snapshot and a summary.

    Errors of the stream are counted and skipped. Ctrl-C keeps what was
    collected; --resume continues without writing a sample id twice.
    """
    kernel = kernel_of()
    data = read_config_file(config_file) if config_file else {}
    where = config_file or ""
    source = _create(
        kernel,
        "source",
        _settings(source_name, source_options, "-S", _section(data, "source", where), "source"),
        "-S",
    )
    tok_base = _section(data, "tokenizer", where) or {"name": "bytes"}
    tok = _create(
        kernel,
        "tokenizer",
        _settings(tokenizer, tokenizer_options, "-T", tok_base, "tokenizer"),
        "-T",
    )
    given = {"capacity": capacity, "max_tokens": max_tokens, "eviction": eviction, "seed": seed}
    buffer = {k: v for k, v in given.items() if v is not None} or None
    with Progress(total=samples, desc="collect", unit="samples") as bar:

        def show(status: CollectStatus) -> None:
            bar.unit = (
                f"samples, {status.samples_per_second:,.0f}/s, "
                f"{status.errors:,} error{'' if status.errors == 1 else 's'}"
            )
            bar(status.samples, status.target)

        summary = collect(
            source,
            samples=samples,
            output=output,
            kernel=kernel,
            tokenizer=tok,
            progress=show if bar.enabled else None,
            resume=resume,
            force=force,
            buffer=buffer,
            max_failures=max_failures,
            max_seconds=max_seconds,
        )
    if as_json:
        emit_json({**summary, "output": output})
        return
    _print_summary(summary, output)


@stream_group.command("stats")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def stats_command(directory: str, as_json: bool) -> None:
    """What a collection holds: its summary, the buffer's statistics, sample lengths."""
    stats = stream_stats(directory)
    if as_json:
        emit_json(stats)
        return
    runs = stats["runs"]
    click.echo(
        f"{directory}: {stats['samples']:,} samples, {stats['tokens']:,} tokens from "
        f"{stats['source']['name']} ({stats['status']}, {runs} run{'' if runs == 1 else 's'}, "
        f"{stats['errors']:,} errors)"
    )
    buf = stats["buffer_stats"]
    click.echo(
        f"buffer: {buf['size']:,}/{buf['capacity']:,} samples, {buf['tokens']:,} tokens, "
        f"mean difficulty {_fmt_rate(buf['mean_difficulty'])}, success rate "
        f"{_fmt_rate(buf['success_rate'])}, {buf['evictions']:,} evicted"
    )
    lengths = stats.get("lengths") or {}
    if lengths:
        click.echo(
            f"lengths: min={lengths['min']:,} p50={lengths['p50']:,.0f} "
            f"p99={lengths['p99']:,.0f} max={lengths['max']:,}"
        )

"""``laden write`` (plan -> batch files) and ``laden verify`` (files vs manifest)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from laden.cli_data import _kernel, _options
from laden.errors import ConfigError, DataError
from laden.kernel import Kernel
from laden.lengths import load_lengths
from laden.plan import BatchPlan
from laden.progress import Progress
from laden.writing import verify_directory, write_batches


def tokenizer_of(kernel: Kernel, meta: dict[str, Any], options: dict[str, Any]) -> Any:
    """The tokenizer a length cache was measured with, checked against its hash."""
    config = dict(meta.get("tokenizer_config") or {"name": meta.get("tokenizer", "bytes")})
    config.update(options)
    tokenizer = kernel.create("tokenizer", config, path=("tokenizer",))
    if meta.get("tokenizer_hash") and tokenizer.fingerprint() != meta["tokenizer_hash"]:
        raise ConfigError(
            f"tokenizer {config} is not the one the lengths were measured with "
            f"(hash {meta['tokenizer_hash']}); pass its settings with -T KEY=VALUE",
            path=("tokenizer",),
        )
    return tokenizer


@click.command("write")
@click.argument("plan_dir", metavar="PLAN", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--dataset",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="The JSONL file the lengths were measured on.",
)
@click.option(
    "--lengths",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="The length cache the plan was built from (locates every sample).",
)
@click.option("--writer", default="npz", show_default=True, help="Writer strategy.")
@click.option("-W", "writer_options", multiple=True, metavar="KEY=VALUE", help="Writer setting.")
@click.option(
    "-B",
    "backend_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Collation setting (pad_to_multiple_of, dense_mask, ...).",
)
@click.option(
    "-T", "tokenizer_options", multiple=True, metavar="KEY=VALUE", help="Tokenizer setting."
)
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True)
@click.option("--workers", type=int, default=0, show_default=True, help="Worker processes.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in OUTPUT.")
def write_command(
    plan_dir: str,
    dataset: str,
    lengths: str,
    writer: str,
    writer_options: tuple[str, ...],
    backend_options: tuple[str, ...],
    tokenizer_options: tuple[str, ...],
    output: str,
    workers: int,
    resume: bool,
) -> None:
    """Collate every batch of PLAN once and write it to OUTPUT, one file per batch."""
    kernel = _kernel()
    plan = BatchPlan.load(plan_dir)
    table = load_lengths(lengths)
    meta = dict(table.meta)
    source_config = dict(meta.get("source") or {"name": "jsonl"})
    source_config["path"] = dataset
    source = kernel.create("source", source_config, path=("source",))
    tokenizer = tokenizer_of(kernel, meta, _options(tokenizer_options, "-T"))
    writer_strategy = kernel.create(
        "writer", {"name": writer, **_options(writer_options, "-W")}, path=("writer",)
    )
    backend = kernel.create(
        "backend", {"name": "numpy", **_options(backend_options, "-B")}, path=("backend",)
    )
    executor = kernel.create("executor", {"name": "local", "workers": workers})
    with Progress(plan.total_steps, "writing batches", unit="files") as bar:
        summary = write_batches(
            plan,
            table,
            source,
            tokenizer,
            writer_strategy,
            output,
            backend=backend,
            executor=executor,
            resume=resume,
            progress=bar,
        )
    click.echo(
        f"{summary['written']:,} written, {summary['kept']:,} kept from before, "
        f"{summary['failed']:,} failed, of {summary['total']:,} batches in "
        f"{summary['seconds']:.1f}s -> {output}"
    )
    if summary["failed"]:
        click.echo(
            f"{summary['failed']} batch(es) failed; their errors are in "
            f"{Path(output) / 'manifest.json'}; fix the cause and rerun with --resume",
            err=True,
        )
        sys.exit(1)


@click.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def verify_command(directory: str) -> None:
    """Re-check every batch file in DIRECTORY against its manifest (exit 1 on a problem)."""
    problems = verify_directory(directory)
    if problems:
        for line in problems:
            click.echo(line, err=True)
        raise DataError(f"{len(problems)} problem(s) in {directory}")
    click.echo(f"ok: every file in {directory} matches the manifest")

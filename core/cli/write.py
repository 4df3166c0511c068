"""``laden write`` (plan -> batch files) and ``laden verify`` (files vs manifest)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from laden.cli.main import emit_json, executor_of, executor_options, kernel_of, parse_options
from laden.errors import DataError
from laden.files.write import verify_directory, write_batches
from laden.io import ARTIFACT_KINDS, artifact_kind, prepare_output
from laden.lengths import source_of, tokenizer_of
from laden.plan import BatchPlan
from laden.progress import Progress


class _Stages:
    """One progress bar per step of ``write_batches``, each started when its step starts."""

    def __init__(self) -> None:
        self.what: str | None = None
        self.bar: Progress | None = None

    def __call__(self, what: str, done: int, total: int | None) -> None:
        if what != self.what:
            self.close()
            unit = "chunks" if what.startswith("tokenizing") else "files"
            self.what, self.bar = what, Progress(total, what, unit=unit)
        assert self.bar is not None
        self.bar(done, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.what = self.bar = None


@click.command("write")
@click.argument("plan_dir", metavar="PLAN", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--dataset",
    type=click.Path(exists=True, dir_okay=False),
    help="The JSONL file the lengths were measured on (default: where the length cache "
    "recorded it).",
)
@click.option(
    "--lengths",
    type=click.Path(exists=True, file_okay=False),
    help="The length cache the plan was built from (default: where the plan recorded it).",
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
@executor_options
@click.option("--resume", is_flag=True, help="Continue an interrupted run in OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--force", is_flag=True, help="Replace the batch files of a previous run in OUTPUT.")
def write_command(
    plan_dir: str,
    dataset: str | None,
    lengths: str | None,
    writer: str,
    writer_options: tuple[str, ...],
    backend_options: tuple[str, ...],
    tokenizer_options: tuple[str, ...],
    output: str,
    workers: int,
    executor_name: str,
    executor_options: tuple[str, ...],
    resume: bool,
    as_json: bool,
    force: bool,
) -> None:
    """Collate every batch of PLAN once and write it to OUTPUT, one file per batch.

    The dataset and length cache are found where the plan recorded them, from
    any directory; --dataset and --lengths name them when they moved.
    """
    if force and resume:
        raise click.UsageError("--force starts over and --resume continues: pass one")
    if force:  # refuses what is not a batch directory; write_batches clears it under its lock
        prepare_output(output, "laden.batches", force=True)
    kernel = kernel_of()
    plan = BatchPlan.load(plan_dir)
    table, dataset = plan.load_inputs(lengths=lengths, dataset=dataset)
    source = source_of(table, kernel=kernel, dataset=dataset)
    tokenizer = tokenizer_of(table, kernel=kernel, options=parse_options(tokenizer_options, "-T"))
    writer_strategy = kernel.create(
        "writer", {"name": writer, **parse_options(writer_options, "-W")}, path=("writer",)
    )
    backend = kernel.create(
        "backend", {"name": "numpy", **parse_options(backend_options, "-B")}, path=("backend",)
    )
    executor = executor_of(kernel, executor_name, workers, executor_options)
    stages = _Stages()
    try:
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
            force=force,
            progress=lambda done, total: stages("writing batches", done, total),
            stage_progress=stages,
        )
    finally:
        stages.close()
    if as_json:
        emit_json({**summary, "output": output, "plan": plan.fingerprint})
    else:
        click.echo(
            f"{summary['written']:,} written, {summary['kept']:,} kept from before, "
            f"{summary['failed']:,} failed, of {summary['total']:,} batches in "
            f"{summary['seconds']:.1f}s -> {output}"
        )
        if summary["damaged"]:
            names = list(summary["damaged_files"].items())
            shown = "; ".join(f"{name}: {why}" for name, why in names[:5])
            more = f"; and {len(names) - 5} more" if len(names) > 5 else ""
            click.echo(
                f"{summary['damaged']:,} kept file(s) were damaged or missing and were "
                f"written again ({shown}{more})"
            )
        click.echo(f"{summary['tokens_tokenized']:,} tokens read and tokenized")
    if summary["failed"]:
        click.echo(
            f"{summary['failed']} batch(es) failed; their errors are in "
            f"{Path(output) / 'manifest.json'}; fix the cause and rerun with --resume",
            err=True,
        )
        sys.exit(1)


@click.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def verify_command(directory: str, as_json: bool) -> None:
    """Re-check every batch file in DIRECTORY against its manifest (exit 1 on a problem)."""
    found = artifact_kind(directory)
    if found not in (None, "laden.batches"):
        raise DataError(f"is a {ARTIFACT_KINDS[found]}, not a batch file directory", file=directory)
    problems = verify_directory(directory)
    if as_json:
        emit_json({"ok": not problems, "directory": directory, "problems": problems})
    if problems:
        if not as_json:
            for line in problems:
                click.echo(line, err=True)
        raise DataError(f"{len(problems)} problem(s) in {directory}")
    if not as_json:
        click.echo(f"ok: every file in {directory} matches the manifest")

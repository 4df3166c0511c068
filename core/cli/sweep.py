"""``laden sweep``: run a parameter sweep file into a dataset (see :mod:`laden.sweep`)."""

from __future__ import annotations

import sys
from typing import Any

import attrs
import click

from laden.cli.main import emit_json, kernel_of
from laden.sweep import dry_run as sweep_dry_run
from laden.sweep import example_path, load_sweep, run_sweep

__all__ = ["sweep_command"]


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _print_dry_run(report: dict[str, Any]) -> None:
    click.echo(f"{report['source']}: {report['total']} points")
    for block in report["blocks"]:
        axes = " x ".join(f"{n} {k}" for k, n in block["axes"].items()) or "1"
        click.echo(
            f"  {block['name']} ({block['generator']}): {axes} x {block['repetitions']} "
            f"repetitions = {block['points']} points"
        )
    click.echo("examples:")
    for point in report["examples"]:
        shown = ", ".join(f"{k}={v!r}" for k, v in point["parameters"].items())
        click.echo(f"  {point['id']}  seed={point['seed']}  {shown}")
    out = report["output"]
    click.echo(
        f"output: {out['directory']}/  {out['files']} {out['writer']} files of up to "
        f"{out['points_per_file']} points ({out['first_file']} .. {out['last_file']}), "
        f"{out['index']}, manifest.json"
    )
    est = report["estimate"]
    workers = est["workers"]
    click.echo(
        f"estimate (from {est['measured_points']} points run here): "
        f"{_fmt_bytes(est['bytes'])} of arrays, {est['seconds_one_worker']:.1f} s of work"
        + (f", ~{est['seconds']:.1f} s on {workers} workers" if workers else "")
    )
    for error in est["errors"]:
        click.echo(f"  warning: {error}")


#: The bundled example sweep files, and where ``--example`` writes (relative to the working dir).
EXAMPLES = ("gaussian", "puzzle")
EXAMPLE_OUTPUT = {"gaussian": "batch_results/my_dataset", "puzzle": "batch_results/puzzles"}


@click.command("sweep")
@click.argument("file", type=click.Path(dir_okay=False), required=False)
@click.option(
    "--example",
    type=click.Choice(EXAMPLES),
    is_flag=False,
    flag_value="gaussian",
    default=None,
    help="Use a bundled example: gaussian (the seed's 75 points; the default) or puzzle "
    "(90 chuk-puzzles-gym episodes, extra arcade).",
)
@click.option(
    "--dry-run", is_flag=True, help="Show the points, layout and estimates; write nothing."
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in the output directory.")
@click.option("--retry-failed", is_flag=True, help="Rerun only the points that failed (a resume).")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Output directory.")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="Overrides the file's.")
@click.option("--workers", type=click.IntRange(min=0), help="Worker processes (0: in this one).")
@click.option("--force", is_flag=True, help="Start over in an output directory of a sweep run.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def sweep_command(
    ctx: click.Context,
    file: str | None,
    example: str | None,
    dry_run: bool,
    resume: bool,
    retry_failed: bool,
    output: str | None,
    executor: str | None,
    workers: int | None,
    force: bool,
    as_json: bool,
) -> None:
    """Generate a dataset from the parameter sweep FILE (YAML or TOML).

    Each point (a combination of parameter values and a repetition) runs its
    generator with its own seed; results go to point files, index.json and a
    manifest. A failing point is recorded and the run goes on (exit status 1
    when any failed); --resume continues after a crash, --retry-failed reruns
    the failures.
    """
    if (file is None) == (example is None):
        raise click.UsageError("pass a sweep FILE or --example")
    path = example_path(example) if example else str(file)
    kernel = kernel_of(ctx)
    spec = load_sweep(path, kernel=kernel)
    if example:  # never inside the installed package: relative to here
        spec = attrs.evolve(spec, output_dir=EXAMPLE_OUTPUT[example])
    if executor is not None:
        spec_executor: dict[str, Any] = {"name": executor}
    else:
        spec_executor = dict(spec.executor)
    if dry_run:
        report = sweep_dry_run(spec, kernel=kernel, output=output, workers=workers)
        if as_json:
            emit_json(report)
        else:
            _print_dry_run(report)
        return
    if output is None and spec.output_dir is None:
        raise click.UsageError("no output directory: pass --output DIR or set output.dir")
    result = run_sweep(
        spec,
        kernel=kernel,
        output=output,
        resume=resume,
        retry_failed=retry_failed,
        force=force,
        executor=spec_executor,
        workers=workers,
    )
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(
            f"{result.directory}: {result.ok}/{result.total} points ok, "
            f"{len(result.failed)} failed, {result.ran} run now, {result.kept} kept, "
            f"{result.files} files, {result.seconds:.1f} s"
        )
        for pid, error in list(result.failed.items())[:10]:
            click.echo(f"  failed {pid}: {error}")
        if len(result.failed) > 10:
            click.echo(f"  ... and {len(result.failed) - 10} more (see index.json)")
        if result.failed:
            click.echo("rerun them with: laden sweep FILE --retry-failed", err=True)
    if result.failed:
        sys.exit(1)

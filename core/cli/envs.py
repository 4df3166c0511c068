"""``laden envs bench`` (env-steps/s, memory and compile time per batch size) and
``laden envs collect`` (rollout chunks to files, resumable)."""

from __future__ import annotations

import click

from laden.cli.main import emit_json, parse_options
from laden.io import prepare_output_file

__all__ = ["envs_group"]


#: Options of every command that makes envs.
array_backend_option = click.option(
    "--array-backend",
    "array_backend",
    default="numpy",
    show_default=True,
    type=click.Choice(["numpy", "torch", "jax"]),
)
env_option_option = click.option(
    "-E",
    "--env-option",
    "env_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A setting of the env factory (repeatable).",
)


@click.group("envs")
def envs_group() -> None:
    """Vectorized environments."""


def _sizes(value: str) -> list[int]:
    try:
        sizes = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected numbers like 1,16,256, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"every size must be > 0, got {value!r}")
    return sizes


@envs_group.command("bench")
@click.argument("env", default="grid")
@click.option(
    "--num-envs",
    "num_envs",
    default="1,16,256,4096",
    show_default=True,
    help="Batch sizes to measure, comma-separated.",
)
@click.option(
    "--steps",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Steps per timed rollout.",
)
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@array_backend_option
@click.option(
    "--autoreset",
    default="same_step",
    show_default=True,
    type=click.Choice(["next_step", "same_step", "disabled", "pool"]),
)
@env_option_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also write a PNG plot.")
@click.option("--force", is_flag=True, help="Overwrite an existing --plot file.")
def bench_command(
    env: str,
    num_envs: str,
    steps: int,
    repeats: int,
    array_backend: str,
    autoreset: str,
    env_options: tuple[str, ...],
    as_json: bool,
    plot: str | None,
    force: bool,
) -> None:
    """Measure ENV (grid, a gymnasium id, or pkg.mod:factory) at each batch size."""
    from laden.stream.envs.bench import bench_env, plot_bench

    if plot:
        prepare_output_file(plot, force=force, option="--plot")
    report = bench_env(
        env,
        num_envs=_sizes(num_envs),
        steps=steps,
        repeats=repeats,
        array_backend=array_backend,
        autoreset=autoreset,
        options=parse_options(env_options, "--env-option"),
    )
    if plot:
        plot_bench(report, plot)
        report["plot"] = plot
    if as_json:
        emit_json(report)
        return
    click.echo(f"{report['env']} ({array_backend}, autoreset {autoreset}, {steps} steps)")
    click.echo(
        f"{'num_envs':>9} {'env-steps/s':>13} {'step ms':>9} {'compile s':>10} {'bytes/env':>10}"
    )
    for row in report["rows"]:
        if "error" in row:
            click.echo(f"{row['num_envs']:>9} failed: {row['error']}")
            continue
        click.echo(
            f"{row['num_envs']:>9} {row['env_steps_per_s']:>13,.0f} {row['step_ms']:>9.3f} "
            f"{row['compile_s']:>10.2f} {row['state_bytes_per_env']:>10,.0f}"
        )
    click.echo(f"best num_envs: {report['best_num_envs']}")
    if plot:
        click.echo(f"plot: {plot}")


@envs_group.command("collect")
@click.argument("env", default="grid")
@click.option(
    "-o", "--output", required=True, type=click.Path(file_okay=False), help="The rollout directory."
)
@click.option("--num-envs", "num_envs", default=16, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--rollout-len", "rollout_len", default=64, show_default=True, type=click.IntRange(min=1)
)
@click.option(
    "--chunks", default=8, show_default=True, type=click.IntRange(min=1), help="Chunks to write."
)
@click.option("--writer", default="npz", show_default=True, type=click.Choice(["npz", "pt", "h5"]))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--autoreset",
    default="next_step",
    show_default=True,
    type=click.Choice(["next_step", "same_step", "disabled", "pool"]),
)
@click.option("--policy", default="random", show_default=True, help="random or pkg.mod:name.")
@array_backend_option
@env_option_option
@click.option("--resume", is_flag=True, help="Continue the run in OUTPUT (same settings).")
@click.option("--force", is_flag=True, help="Replace a rollout run in OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def collect_command(
    env: str,
    output: str,
    num_envs: int,
    rollout_len: int,
    chunks: int,
    writer: str,
    seed: int,
    autoreset: str,
    policy: str,
    array_backend: str,
    env_options: tuple[str, ...],
    resume: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Write --chunks rollout chunks of ENV to OUTPUT, one file each (resumable)."""
    from laden.cli.main import kernel_of
    from laden.progress import Progress
    from laden.stream.envs.files import write_rollouts

    kernel = kernel_of()
    source = kernel.create(
        "source",
        {
            "name": "env_batch",
            "env": env,
            "env_options": parse_options(env_options, "--env-option"),
            "num_envs": num_envs,
            "rollout_len": rollout_len,
            "seed": seed,
            "autoreset": autoreset,
            "policy": policy,
            "array_backend": array_backend,
        },
        path=("source",),
    )
    with Progress(chunks, desc="collect", unit="chunks", enabled=False if as_json else None) as bar:
        report = write_rollouts(
            source,
            output,
            chunks=chunks,
            writer=writer,
            resume=resume,
            force=force,
            progress=bar,
            kernel=kernel,
        )
    if as_json:
        emit_json(report)
        return
    kept = f" ({report['kept']} kept)" if report["kept"] else ""
    click.echo(
        f"wrote {report['written']} rollout file{'' if report['written'] == 1 else 's'}{kept} "
        f"to {report['output']}: "
        f"{report['env_steps']:,} env-steps, {report['episodes']:,} episodes"
    )
    if report["episodes"]:
        click.echo(
            f"mean return {report['mean_return']:.4g}, mean length {report['mean_length']:.1f}, "
            f"completion rate {report['completion_rate']:.1%}"
        )
    for name, why in report["damaged_files"].items():
        click.echo(f"rewrote damaged {name}: {why}", err=True)

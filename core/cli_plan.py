"""``laden plan``: build, inspect, verify and shard batch plans."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import attrs
import click

from laden.cli_data import _kernel
from laden.config import load_config
from laden.errors import ConfigError
from laden.lengths import load_lengths
from laden.plan import BatchPlan


@click.group("plan")
def plan_group() -> None:
    """Precomputed batch plans: fingerprinted, sharded per rank, resumable."""


@plan_group.command("build")
@click.argument("lengths", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="Run config (TOML or YAML) with a [sampler] and optionally a [packer] section.",
)
@click.option("--epochs", type=int, help="Epochs to plan (default: the config's).")
@click.option("--seed", type=int, help="Seed (default: the config's).")
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True)
def build_command(
    lengths: str, config_file: str, epochs: int | None, seed: int | None, output: str
) -> None:
    """Plan every epoch of a length cache and save the plan to OUTPUT."""
    kernel = _kernel()
    config = load_config(config_file, kernel=kernel)
    changes: dict[str, Any] = {}
    if epochs is not None:
        if epochs < 1:
            raise ConfigError(f"must be >= 1, got {epochs}", path=("epochs",))
        changes["epochs"] = epochs
    if seed is not None:
        changes["seed"] = seed
    config = attrs.evolve(config, **changes)
    table = load_lengths(lengths)
    plan = BatchPlan.from_config(table, config, kernel=kernel)
    plan.save(output)
    click.echo(
        f"plan {plan.fingerprint}: {plan.num_epochs} epochs, {plan.total_steps:,} steps, "
        f"{plan.num_units:,} units -> {output}"
    )


@plan_group.command("info")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--rank", type=int, default=None, help="Show this rank's shard.")
@click.option("--world-size", type=int, default=None, help="Ranks to shard across.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info_command(directory: str, rank: int | None, world_size: int | None, as_json: bool) -> None:
    """Fingerprint, steps, tokens and config of a saved plan (or of one rank's shard)."""
    if (rank is None) != (world_size is None):
        raise click.UsageError("--rank and --world-size go together")
    plan = BatchPlan.load(directory)
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise click.BadParameter(f"rank {rank} is not in 0..{world_size - 1}")
        plan = plan.shard(rank, world_size)
    info = plan.summary()
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    shard = f", rank {plan.rank} of {plan.world_size}" if plan.world_size > 1 else ""
    click.echo(f"plan {info['fingerprint']}{shard}")
    click.echo(
        f"epochs {info['epochs']}, steps per epoch {info['steps']}, total {info['total_steps']:,}"
    )
    click.echo(f"samples {info['samples']:,}, units {info['units']:,} (packed: {info['packed']})")
    click.echo(f"tokens per epoch {info['tokens']}, with padding {info['padded_tokens']}")
    if plan.world_size > 1:
        click.echo(f"padding batches per epoch {info['padding_batches']}")
    click.echo(f"config {json.dumps(info['config'], sort_keys=True)}")


@plan_group.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--lengths",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="The length cache the plan was built from.",
)
def verify_command(directory: str, lengths: str) -> None:
    """Rebuild the plan from its config and LENGTHS and compare (exit 1 on a mismatch)."""
    plan = BatchPlan.load(directory)
    check = plan.verify(load_lengths(lengths), kernel=_kernel())
    if not check.ok:
        click.echo(f"MISMATCH: {check.reason}", err=True)
        sys.exit(1)
    click.echo(f"ok: plan {plan.fingerprint} matches a rebuild")


@plan_group.command("shard")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--world-size", type=int, required=True)
@click.option(
    "--remainder",
    type=click.Choice(["pad", "drop"]),
    default="pad",
    show_default=True,
    help="Batches left over: repeat some marked as padding, or drop the cheapest.",
)
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True)
def shard_command(directory: str, world_size: int, remainder: str, output: str) -> None:
    """Split a plan into OUTPUT/rank-R directories, one per rank."""
    if world_size < 1:
        raise click.BadParameter(f"must be >= 1, got {world_size}", param_hint="--world-size")
    plan = BatchPlan.load(directory)
    root = Path(output)
    for rank in range(world_size):
        shard = plan.shard(rank, world_size, remainder=remainder)
        shard.save(root / f"rank-{rank}")
        click.echo(
            f"rank {rank}: {shard.total_steps:,} steps, plan {shard.fingerprint} "
            f"-> {root / f'rank-{rank}'}"
        )

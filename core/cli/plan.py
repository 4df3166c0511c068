"""``laden plan``: build, inspect, verify and shard batch plans."""

from __future__ import annotations

import json
import sys
from typing import Any

import attrs
import click

from laden.cli.main import emit_json, kernel_of
from laden.config import load_config
from laden.errors import DataError
from laden.io import prepare_output, remove_artifact
from laden.lengths import load_lengths
from laden.plan import BatchPlan
from laden.progress import Progress


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
@click.option(
    "--epochs", type=click.IntRange(min=1), help="Epochs to plan (default: the config's)."
)
@click.option("--seed", type=click.IntRange(min=0), help="Seed (default: the config's).")
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True)
@click.option("--force", is_flag=True, help="Replace a plan already saved in OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def build_command(
    lengths: str,
    config_file: str,
    epochs: int | None,
    seed: int | None,
    output: str,
    force: bool,
    as_json: bool,
) -> None:
    """Plan every epoch of a length cache and save the plan to OUTPUT.

    OUTPUT must be new, empty or a saved plan (replaced only with --force).
    """
    prepare_output(output, "laden.plan", force=force)
    kernel = kernel_of()
    config = load_config(config_file, kernel=kernel)
    changes: dict[str, Any] = {}
    if epochs is not None:
        changes["epochs"] = epochs
    if seed is not None:
        changes["seed"] = seed
    config = attrs.evolve(config, **changes)
    table = load_lengths(lengths)
    if not len(table):
        raise DataError("the length cache holds no samples: nothing to plan", file=lengths)
    # A 10M-sample plan takes seconds: a bar (elapsed time) on a terminal, nothing elsewhere.
    with Progress(None, "planning", leave=False):
        plan = BatchPlan.from_config(table, config, kernel=kernel)
        plan.save(output, overwrite=force)
    info = plan.summary()
    if as_json:
        emit_json({**info, "output": output})
    else:
        click.echo(
            f"plan {plan.fingerprint}: {plan.num_epochs} epochs, {plan.total_steps:,} steps, "
            f"{plan.num_units:,} units -> {output}"
        )
        for line in report_lines(info):
            click.echo(line)
    _warn(info["warnings"])


@plan_group.command("info")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--rank", type=click.IntRange(min=0), default=None, help="Show this rank's shard.")
@click.option(
    "--world-size", type=click.IntRange(min=1), default=None, help="Ranks to shard across."
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info_command(directory: str, rank: int | None, world_size: int | None, as_json: bool) -> None:
    """Fingerprint, steps, tokens and config of a saved plan (or of one rank's shard)."""
    if (rank is None) != (world_size is None):
        raise click.UsageError("--rank and --world-size go together")
    plan = BatchPlan.load(directory)
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise click.BadParameter(
                f"rank {rank} is not in 0..{world_size - 1}", param_hint="--rank"
            )
        require_full_plan(plan, directory)
        plan = plan.shard(rank, world_size)
    info = plan.summary()
    if as_json:
        emit_json(info)
        _warn(info["warnings"])
        return
    shard = f", rank {plan.rank} of {plan.world_size}" if plan.world_size > 1 else ""
    click.echo(f"plan {info['fingerprint']}{shard}")
    click.echo(
        f"epochs {info['epochs']}, steps per epoch {info['steps']}, total {info['total_steps']:,}"
    )
    click.echo(f"samples {info['samples']:,}, units {info['units']:,} (packed: {info['packed']})")
    click.echo(f"tokens per epoch {info['tokens']}, with padding {info['padded_tokens']}")
    for line in report_lines(info):
        click.echo(line)
    click.echo(f"config {json.dumps(info['config'], sort_keys=True)}")
    _warn(info["warnings"])


@plan_group.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--lengths",
    type=click.Path(exists=True, file_okay=False),
    help="The length cache the plan was built from (default: the one it recorded).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def verify_command(directory: str, lengths: str | None, as_json: bool) -> None:
    """Rebuild the plan from its config and LENGTHS and compare (exit 1 on a mismatch)."""
    with Progress(None, "rebuilding the plan", leave=False):
        plan = BatchPlan.load(directory)
        check = plan.verify(load_lengths(lengths or plan.recorded_lengths()), kernel=kernel_of())
    if as_json:
        emit_json(
            {
                "ok": check.ok,
                "fingerprint": plan.fingerprint,
                "reason": check.reason or None,
                "epoch": check.epoch,
                "batch": check.batch,
            }
        )
        if not check.ok:
            sys.exit(1)
        return
    if not check.ok:
        click.echo(f"MISMATCH: {check.reason}", err=True)
        sys.exit(1)
    click.echo(f"ok: plan {plan.fingerprint} matches a rebuild")


@plan_group.command("shard")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--world-size", type=click.IntRange(min=1), required=True)
@click.option(
    "--remainder",
    type=click.Choice(["pad", "drop"]),
    default="pad",
    show_default=True,
    help="Batches left over: repeat some marked as padding, or drop the cheapest.",
)
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True)
@click.option("--force", is_flag=True, help="Replace rank-R plans already in OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def shard_command(
    directory: str, world_size: int, remainder: str, output: str, force: bool, as_json: bool
) -> None:
    """Split a plan into OUTPUT/rank-R directories, one per rank.

    OUTPUT must be new, empty or hold only rank-R plans (replaced only with --force).
    """
    root = prepare_output(output, "laden.shards", force=force)
    plan = BatchPlan.load(directory)
    require_full_plan(plan, directory)
    if root.is_dir():  # shards of a larger world size: laden's own, and stale now
        for old in root.glob("rank-*"):
            if old.name[5:].isdigit() and int(old.name[5:]) >= world_size:
                remove_artifact(old, "laden.plan")
    ranks: list[dict[str, Any]] = []
    by_reason: dict[str, list[int]] = {}  # one warning for all the ranks it concerns
    shard_report: dict[str, Any] = {}
    for rank in range(world_size):
        shard = plan.shard(rank, world_size, remainder=remainder)
        shard.save(root / f"rank-{rank}", overwrite=True)
        shard_report = dict(shard.shard_report)
        prefix = f"rank {rank} of {world_size} "
        for warning in shard.warnings():
            by_reason.setdefault(warning.removeprefix(prefix), []).append(rank)
        ranks.append(
            {
                "rank": rank,
                "path": str(root / f"rank-{rank}"),
                "fingerprint": shard.fingerprint,
                "steps": shard.steps,
                "total_steps": shard.total_steps,
                "padding_batches": [int(p.sum()) for p in shard.padding],
            }
        )
        if not as_json:
            click.echo(
                f"rank {rank}: {shard.total_steps:,} steps, plan {shard.fingerprint} "
                f"-> {root / f'rank-{rank}'}"
            )
    warnings = [
        f"{_ranks(members)} of {world_size}: {'each ' if len(members) > 1 else ''}{reason}"
        for reason, members in by_reason.items()
    ]
    info = {**plan.losses(), "shard_report": shard_report}
    if as_json:
        emit_json(
            {
                **info,
                "fingerprint": plan.fingerprint,
                "output": output,
                "world_size": world_size,
                "remainder": remainder,
                "ranks": ranks,
                "warnings": warnings,
            }
        )
    else:
        for line in report_lines({**info, "world_size": world_size}):
            click.echo(line)
    _warn(warnings)


# ----------------------------------------------------------------- reporting


def require_full_plan(plan: BatchPlan, directory: str) -> None:
    """Refuse to shard a shard: its batches are one rank's, not the plan's."""
    if plan.world_size > 1:
        raise DataError(
            f"is already a shard (rank {plan.rank} of {plan.world_size}); shard the full plan "
            "instead",
            file=directory,
        )


def _ranks(ranks: list[int]) -> str:
    """``rank 3`` or ``ranks 0, 4-7``."""
    runs: list[list[int]] = []
    for r in ranks:
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    text = ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)
    return f"rank{'s' if len(ranks) > 1 else ''} {text}"


def _per_epoch(values: list[Any]) -> str:
    """``12`` when every epoch has the same count, else ``12/13/11``; unknown counts ``?``."""
    shown = ["?" if v is None else f"{v:,}" for v in values]
    return shown[0] if len(set(shown)) == 1 else "/".join(shown)


def report_lines(info: dict[str, Any]) -> list[str]:
    """What the plan dropped, cut, split or padded, in words (from ``BatchPlan.summary``)."""
    overflow = info.get("overflow") or {}
    policies = ", ".join(f"{k} {v!r}" for k, v in overflow.items() if v) or "none"
    lines = [
        f"dropped per epoch: {_per_epoch(info['dropped_samples'])} samples, "
        f"{_per_epoch(info['dropped_tokens'])} tokens; truncated: "
        f"{_per_epoch(info['truncated_samples'])} samples, "
        f"{_per_epoch(info['truncated_tokens'])} tokens cut (overflow: {policies})"
    ]
    if info.get("split_samples"):
        lines.append(f"split: {info['split_samples']:,} samples packed in pieces, every token kept")
    if any(info.get("over_budget_batches") or ()):
        lines.append(
            f"over budget: {_per_epoch(info['over_budget_batches'])} batches per epoch hold one "
            "sample longer than the budget"
        )
    memory = info.get("memory_budget")
    if memory:
        how = (
            f" ({memory['percent']}% of {memory['available']:,} bytes available at plan time)"
            if memory.get("percent") is not None
            else ""
        )
        lines.append(
            f"memory budget: {memory['bytes']:,} collated bytes per batch{how}; per epoch "
            f"{_per_epoch(memory['split_batches'])} batches split "
            f"({_per_epoch(memory['extra_batches'])} batches more), "
            f"{_per_epoch(memory['oversize_units'])} samples over it alone "
            f"(oversize {memory['oversize']!r})"
        )
    report = info.get("shard_report") or {}
    if info.get("world_size", 1) > 1 and report:
        if report.get("remainder") == "drop":
            lines.append(
                f"remainder 'drop': dropped per epoch {_per_epoch(report['dropped_batches'])} "
                f"batches, {_per_epoch(report['dropped_samples'])} units, "
                f"{_per_epoch(report.get('dropped_tokens') or [None])} tokens"
            )
        else:
            lines.append(
                f"remainder 'pad': padding batches per epoch "
                f"{_per_epoch(report['padding_batches'])} over all ranks"
                + (
                    f", {_per_epoch(info['padding_batches'])} on this rank"
                    if "padding_batches" in info
                    else ""
                )
            )
    return lines


def _warn(warnings: list[str]) -> None:
    for line in warnings:
        click.echo(f"warning: {line}", err=True)

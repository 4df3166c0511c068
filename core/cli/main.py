"""The ``laden`` command. Plugins add subcommands through ``laden_add_commands``."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from laden import __version__
from laden.config import load_config
from laden.errors import ConfigError, LadenError
from laden.io import plain_json
from laden.kernel import Kernel
from laden.kinds import KINDS
from laden.serde import config_of

__all__ = ["build_cli", "emit_json", "kernel_of", "main", "os_error_message", "parse_options"]


class LadenCommandError(click.ClickException):
    """A LadenError shown as ``Error: ...``, exit status 1."""

    exit_code = 1


class LadenConfigCommandError(LadenCommandError):
    """A ConfigError shown as ``Error: ...``, exit status 2 (like a usage error)."""

    exit_code = 2


#: The exit status after Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED_EXIT_CODE = 130


class LadenGroup(click.Group):
    """Turns a LadenError, an OSError (full disk, unwritable output) or Ctrl-C into ``Error:``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LadenError as exc:
            kind = LadenConfigCommandError if isinstance(exc, ConfigError) else LadenCommandError
            raise kind(str(exc)) from exc
        except OSError as exc:
            raise LadenCommandError(os_error_message(exc)) from exc
        except KeyboardInterrupt as exc:
            # Ctrl-C: one line, no traceback, exit 130 like a shell. What can be
            # resumed says so in a note (``exc.add_note``) where it was stopped.
            notes = [str(note) for note in getattr(exc, "__notes__", ())]
            # Drop the locals of the frames it unwound: work iterators held there
            # are closed now (ending their worker processes), not at exit.
            traceback.clear_frames(exc.__traceback__)
            if sys.stderr.isatty():
                click.echo(err=True)  # past the ^C the terminal echoed
            click.echo("Error: interrupted" + "".join(f"; {n}" for n in notes), err=True)
            ctx.exit(INTERRUPTED_EXIT_CODE)


def os_error_message(exc: OSError) -> str:
    """One line naming the path and the cause: ``out/meta.json: No space left on device``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    if paths:
        return f"{' -> '.join(paths)}: {reason}"
    return reason


def kernel_of(ctx: click.Context | None = None) -> Kernel:
    """The kernel a command runs with (set up by :func:`build_cli`; default: the current context's).

    The one place a command finds its kernel: plugins' commands use it too.
    """
    kernel = (ctx or click.get_current_context()).find_object(Kernel)
    assert kernel is not None
    return kernel


def parse_options(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are JSON where they parse (``3``, ``true``), else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=flag)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def executor_options(command: Any) -> Any:
    """Give a command ``--executor NAME`` and ``-E KEY=VALUE`` (read by :func:`executor_of`)."""
    command = click.option(
        "-E",
        "--executor-option",
        "executor_options",
        multiple=True,
        metavar="KEY=VALUE",
        help="An executor setting, e.g. -E chunksize=100 or -E address=auto (repeatable).",
    )(command)
    return click.option(
        "--executor",
        "executor_name",
        default="local",
        show_default=True,
        help="Where the work runs: local (processes here) or ray (a Ray cluster; extra ray).",
    )(command)


def executor_of(kernel: Kernel, name: str, workers: int | None, options: Sequence[str]) -> Any:
    """The executor that ``--executor``, ``--workers`` and ``-E`` ask for.

    ``--workers`` is ``local``'s ``workers`` and the size of ``ray``'s local
    cluster (``num_cpus``); ``-E`` settings win over it.
    """
    settings = parse_options(options, "-E")
    if name == "local":
        settings.setdefault("workers", workers)
    elif name == "ray" and workers and settings.get("address") is None:
        settings.setdefault("num_cpus", workers)
    return kernel.create("executor", {**settings, "name": name}, path=("executor",))


def emit_json(value: Any) -> None:
    """Print ``value`` as indented JSON with sorted keys: the output of every ``--json``."""
    click.echo(json.dumps(plain_json(value), indent=2, sort_keys=True, default=str))


# ------------------------------------------------------------------ plugins


def plugin_listing(kernel: Kernel) -> list[dict[str, Any]]:
    """What ``laden plugins --json`` prints: each plugin and its strategies per kind."""
    out = []
    for info in kernel.plugins():
        strategies: dict[str, list[dict[str, Any]]] = {}
        for kind, names in info.strategies.items():
            registry = kernel.registry(kind)
            rows = strategies.setdefault(kind, [])
            for name in names:
                entry = registry.entry(name)
                rows.append(
                    {
                        "name": name,
                        "class": entry.qualname,
                        "available": entry.available,
                        "missing": list(entry.missing),
                        "extra": entry.extra,
                    }
                )
        out.append(
            {
                "name": info.name,
                "entry_point": info.entry_point,
                "distribution": info.distribution,
                "version": info.version,
                "strategies": strategies,
            }
        )
    return out


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool) -> None:
    """List every plugin, where it comes from and the strategies it registers."""
    kernel = kernel_of(ctx)
    listing = plugin_listing(kernel)
    if as_json:
        emit_json({"plugins": listing, "disabled": sorted(kernel.disabled)})
        return
    for plugin in listing:
        origin = plugin["distribution"] or "registered in-process"
        if plugin["version"]:
            origin += f" {plugin['version']}"
        where = f" ({plugin['entry_point']})" if plugin["entry_point"] else ""
        click.echo(f"{plugin['name']}: {origin}{where}")
        for kind, rows in plugin["strategies"].items():
            for row in rows:
                state = ""
                if not row["available"]:
                    fix = f'pip install "laden[{row["extra"]}]"' if row["extra"] else "install"
                    state = f"  [unavailable: needs {', '.join(row['missing'])}; {fix}]"
                click.echo(f"    {kind} {row['name']}{state}")
    if kernel.disabled:
        click.echo(f"disabled: {', '.join(sorted(kernel.disabled))}")


# ------------------------------------------------------------------- config


@click.group("config")
def config_group() -> None:
    """Work with run config files (TOML or YAML)."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the validated config as JSON.")
@click.pass_context
def config_check(ctx: click.Context, file: str, as_json: bool) -> None:
    """Validate FILE: every section names a known strategy with valid settings."""
    config = load_config(file, kernel=kernel_of(ctx))
    if as_json:
        emit_json(config.to_dict())
        return
    click.echo(f"{file}: ok (seed={config.seed}, epochs={config.epochs})")
    for kind in KINDS:
        strategy = config.get(kind)
        if strategy is not None:
            settings = config_of(strategy)
            name = settings.pop("name")
            shown = ", ".join(f"{k}={v!r}" for k, v in settings.items())
            click.echo(f"  {kind}: {name}" + (f" ({shown})" if shown else ""))


# --------------------------------------------------------------------- main


def build_cli(kernel: Kernel) -> click.Group:
    """The ``laden`` group with the builtin commands and every plugin's commands."""

    @click.group(cls=LadenGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, "--version", prog_name="laden")
    @click.pass_context
    def cli(ctx: click.Context) -> None:
        """laden: turn training data into batches, fast and reproducibly."""
        ctx.obj = kernel

    from laden.cli.data import analyze_command, lengths_group, suggest_command
    from laden.cli.demo import demo_command
    from laden.cli.envs import envs_group
    from laden.cli.plan import plan_group
    from laden.cli.stream import stream_group
    from laden.cli.write import verify_command, write_command

    for command in (
        plugins_command,
        config_group,
        lengths_group,
        analyze_command,
        suggest_command,
        demo_command,
        plan_group,
        write_command,
        verify_command,
        stream_group,
        envs_group,
    ):
        cli.add_command(command)
    cli.add_command(__import__("laden.cli.sweep", fromlist=["_"]).sweep_command)
    kernel.hook.laden_add_commands(cli=cli, kernel=kernel)
    return cli


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``laden`` console script."""
    # After a Ctrl-C laden exits at once (see below); multiprocessing's resource tracker
    # then unlinks the pools' semaphores itself and would print a warning about them.
    # It inherits this environment when a pool starts it.
    quiet = "ignore:resource_tracker:UserWarning"
    if quiet not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(
            w for w in (os.environ.get("PYTHONWARNINGS", ""), quiet) if w
        )
    try:
        kernel = Kernel()
    except LadenError as exc:
        click.echo(f"Error: {exc}", err=True)
        click.echo(
            "hint: LADEN_DISABLE_PLUGINS=<name> skips a broken plugin; "
            "LADEN_NO_AUTOLOAD=1 loads only laden's builtins",
            err=True,
        )
        sys.exit(1)
    try:
        build_cli(kernel).main(args=list(argv) if argv is not None else None, prog_name="laden")
    except SystemExit as exc:
        if exc.code == INTERRUPTED_EXIT_CODE:
            # Ctrl-C: what can be resumed was saved while the stack unwound. Skip the
            # interpreter's exit-time joins: a process pool's manager thread can block
            # forever on a result pipe a killed worker left half-written.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(INTERRUPTED_EXIT_CODE)
        raise

"""The ``laden`` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

import laden
from laden.testing import registered, run_cli


def run(kernel: laden.Kernel, *args: str) -> click.testing.Result:
    return run_cli(kernel, *args, catch_exceptions=False)


def test_version(kernel: laden.Kernel) -> None:
    result = run(kernel, "--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"laden, version {laden.__version__}"


def test_plugins_text(kernel: laden.Kernel) -> None:
    result = run(kernel, "plugins")
    assert result.exit_code == 0
    assert "bytes: laden" in result.output
    assert "(laden.plugins.tokenizers.bytes)" in result.output
    assert "    executor local" in result.output


def test_plugins_json_lists_each_builtin_with_entry_point(kernel: laden.Kernel) -> None:
    result = run(kernel, "plugins", "--json")
    data = json.loads(result.output)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["numpy"]["entry_point"] == "laden.plugins.backends.numpy"
    assert by_name["numpy"]["distribution"] == "laden"
    assert by_name["numpy"]["version"] == laden.__version__
    [row] = by_name["whitespace"]["strategies"]["tokenizer"]
    assert row == {
        "name": "whitespace",
        "class": "laden.plugins.tokenizers.whitespace.WhitespaceTokenizer",
        "available": True,
        "missing": [],
        "extra": None,
    }


def test_plugins_shows_unavailable_with_fix(kernel: laden.Kernel) -> None:
    from tests.test_registry import NeedsMissing

    class Plugin:
        @laden.hookimpl
        def laden_register_tokenizers(self, registry: laden.Registry) -> None:
            registry.add(NeedsMissing)

    with registered(kernel, Plugin(), name="needy"):
        text = run(kernel, "plugins").output
        data = json.loads(run(kernel, "plugins", "--json").output)
    assert (
        'needs_missing  [unavailable: needs laden_no_such_module_xyz; pip install "laden[hf]"]'
        in text
    )
    [row] = {p["name"]: p for p in data["plugins"]}["needy"]["strategies"]["tokenizer"]
    assert row["available"] is False
    assert row["extra"] == "hf"


def test_config_check(kernel: laden.Kernel, tmp_path: Path) -> None:
    good = tmp_path / "run.toml"
    good.write_text("seed = 3\n[tokenizer]\nname = 'whitespace'\nlowercase = true\n")
    result = run(kernel, "config", "check", str(good))
    assert result.exit_code == 0
    assert f"{good}: ok (seed=3, epochs=1)" in result.output
    assert "tokenizer: whitespace (lowercase=True, vocab_size=1048576)" in result.output
    data = json.loads(run(kernel, "config", "check", "--json", str(good)).output)
    assert data["tokenizer"] == {"name": "whitespace", "lowercase": True, "vocab_size": 1048576}


def test_config_check_bad_file_exits_2_naming_the_key(kernel: laden.Kernel, tmp_path: Path) -> None:
    bad = tmp_path / "run.yaml"
    bad.write_text("executor:\n  name: local\n  workers: -1\n")
    result = run_cli(kernel, "config", "check", str(bad))
    assert result.exit_code == 2
    assert f"Error: {bad}: executor.workers: must be >= 0, got -1" in result.output


def test_plugins_add_commands(kernel: laden.Kernel) -> None:
    class Plugin:
        @laden.hookimpl
        def laden_add_commands(self, cli: click.Group, kernel: laden.Kernel) -> None:
            @cli.command("hello")
            def hello() -> None:
                """Say hello with the kernel's tokenizers."""
                click.echo("hello " + ",".join(kernel.registry("tokenizer").names()))

    with registered(kernel, Plugin()):
        result = run(kernel, "hello")
    assert result.output == "hello bytes,hf,whitespace\n"
    assert "No such command" in run_cli(kernel, "hello").output


def test_console_script_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "laden", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"laden, version {laden.__version__}"


def test_broken_plugin_message_from_the_console(tmp_path: Path) -> None:
    from tests.test_kernel import make_dist

    make_dist(
        tmp_path,
        "laden-broken",
        {"broken": "laden_broken_cli"},
        {"laden_broken_cli": "raise RuntimeError('kaput')\n"},
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "laden", "plugins"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 1
    assert (
        'error importing plugin "broken" (from dist laden-broken): RuntimeError: kaput'
        in out.stderr
    )
    assert "LADEN_DISABLE_PLUGINS" in out.stderr
    env["LADEN_DISABLE_PLUGINS"] = "broken"
    ok = subprocess.run(
        [sys.executable, "-m", "laden", "plugins"], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0, ok.stderr
    assert "disabled: broken" in ok.stdout


@pytest.mark.slow
def test_demo_runs_on_the_standard_library(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "laden", "demo", "--output", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    text = out.stdout
    assert "samples (top-level definitions of the stdlib)" in text
    assert "== suggested bucket edges (4 buckets, exact DP)" in text
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    # Real numbers from this machine's standard library.
    assert report["stats"]["samples"] > 1000
    assert len(report["suggestion"]["bucket_edges"]) == 4
    budget, fixed = report["token_budget_plan"], report["random_fixed_plan"]
    assert budget["samples"] == fixed["samples"] == report["stats"]["samples"]
    assert budget["efficiency"] > 0.95 > fixed["efficiency"]
    assert f"{budget['efficiency']:.4f}" in text
    packing, packed = report["packing"], report["packed_plan"]
    assert packing["real_tokens"] == report["stats"]["tokens"]  # split: no token lost
    assert packing["efficiency"] > budget["efficiency"]
    assert packing["packing_ratio"] > 1
    assert sum(packing["segments_per_row"].values()) == packing["rows"]
    assert packed["samples"] == packing["rows"]
    assert "== packing (best_fit into rows of 4,096" in text
    assert "first packed batch: input_ids (" in text
    plan = report["plan"]
    assert plan["verified"] is True
    assert plan["epochs"] == 3
    assert len({s["fingerprint"] for s in plan["shards"]}) == 4
    assert len({tuple(s["steps"]) for s in plan["shards"]}) == 1  # ranks in step
    assert f"plan {plan['fingerprint']}" in text
    loaded = laden.BatchPlan.load(tmp_path / "demo" / "plan")
    assert loaded.fingerprint == plan["fingerprint"]
    assert (tmp_path / "demo" / "lengths" / "meta.json").exists()
    assert str(tmp_path / "demo") in text

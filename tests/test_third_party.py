"""A real third-party distribution, installed into a fresh virtualenv beside laden."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "laden-example-plugin"


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with laden and the example plugin installed into it (not editable).

    laden's own dependencies come from this interpreter's site-packages through a
    ``.pth`` line (no network); laden and the plugin are built and installed for real.
    """
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Appended after the venv's own site-packages: the venv's laden wins.
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "zz_outer_deps.pth").write_text("\n".join(sorted(outer)) + "\n")
    for project in (ROOT, FIXTURE):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(python),
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                str(project),
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PIP_NO_WARN_SCRIPT_LOCATION": "1"},
        )
    return env_dir


def laden_cli(env_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [env_dir / "bin" / "laden", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=env_dir,
    )


@pytest.mark.slow
def test_installed_plugin_is_listed(fresh_venv: Path) -> None:
    result = laden_cli(fresh_venv, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    example = plugins["example"]
    assert example["distribution"] == "laden-example-plugin"
    assert example["version"] == "1.2.0"
    assert example["entry_point"] == "laden_example_plugin"
    assert [s["name"] for s in example["strategies"]["sampler"]] == ["sorted_chunks"]
    # laden's own builtins come from the venv's install, not the outer one.
    assert plugins["bytes"]["distribution"] == "laden"


@pytest.mark.slow
def test_disabling_by_name_removes_it(fresh_venv: Path) -> None:
    result = laden_cli(fresh_venv, "plugins", "--json", LADEN_DISABLE_PLUGINS="example")
    names = {p["name"] for p in json.loads(result.stdout)["plugins"]}
    assert "example" not in names
    assert "bytes" in names
    result = laden_cli(fresh_venv, "plugins", "--json", LADEN_NO_AUTOLOAD="1")
    assert "example" not in {p["name"] for p in json.loads(result.stdout)["plugins"]}


@pytest.mark.slow
def test_selectable_by_kernel_create(fresh_venv: Path) -> None:
    script = """
import laden
kernel = laden.Kernel()
sampler = kernel.create("sampler", {"name": "sorted_chunks", "batch_size": 2})
plan = sampler.plan_epoch(laden.LengthTable.from_lengths([5, 1, 4, 2, 3]))
print([b.indices.tolist() for b in plan])
try:
    kernel.create("sampler", {"name": "sorted_chunks", "batch_size": 0})
except laden.ConfigError as exc:
    print(exc)
"""
    out = subprocess.run(
        [fresh_venv / "bin" / "python", "-c", script],
        capture_output=True,
        text=True,
        cwd=fresh_venv,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "[[1, 3], [4, 2], [0]]",
        "sampler.batch_size: must be > 0, got 0",
    ]


@pytest.mark.slow
def test_a_builtins_only_kernel_never_imports_it(fresh_venv: Path) -> None:
    """Library calls with ``Kernel(autoload=False)``, or none, leave third parties unloaded."""
    script = """
import json, sys
from pathlib import Path
import laden
from laden.files.write import write_batches
from laden.lengths import build_lengths
from laden.plan import BatchPlan

kernel = laden.Kernel(autoload=False)
data = Path("data.jsonl")
data.write_text("".join(json.dumps({"text": "x" * n}) + "\\n" for n in range(1, 40)))
source = kernel.create("source", {"name": "jsonl", "path": str(data)})
tokenizer = kernel.create("tokenizer", "bytes")
table = build_lengths(source, tokenizer, output="lengths")
config = laden.RunConfig.from_mapping({"sampler": {"name": "fixed", "batch_size": 4}})
plan = BatchPlan.from_config(table, config, kernel=kernel)
assert plan.verify(table).ok
write_batches(plan, table, source, tokenizer, kernel.create("writer", "npz"), "batches")
assert len(list(laden.BatchReader("batches"))) == plan.total_steps
print("laden_example_plugin" in sys.modules)
laden.Kernel()
print("laden_example_plugin" in sys.modules)
"""
    out = subprocess.run(
        [fresh_venv / "bin" / "python", "-c", script],
        capture_output=True,
        text=True,
        cwd=fresh_venv,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["False", "True"]

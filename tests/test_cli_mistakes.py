"""Ordinary mistakes against the real CLI: one ``Error:`` line naming the place, never a traceback.

Every case runs through click's CliRunner with ``catch_exceptions=False``, so
an exception that escapes a command fails the test with its traceback
instead of being turned into an exit code.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from click.testing import Result

import laden
from laden.cli import build_cli, emit_json, os_error_message
from laden.lengths import load_lengths, save_lengths
from laden.plan import BatchPlan
from laden.testing import run_cli


def invoke(kernel: laden.Kernel, args: list[str]) -> Result:
    return run_cli(kernel, *args, catch_exceptions=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A dataset, its length cache, a plan, its shards and its batch files, plus bad inputs."""
    root = tmp_path_factory.mktemp("mistakes")
    kernel = laden.Kernel(autoload=False)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"text": "tok " * (i % 40 + 1)}) + "\n" for i in range(200)))
    config = root / "run.yaml"
    config.write_text("seed: 1\nepochs: 1\nsampler:\n  name: token_budget\n  token_budget: 1024\n")
    steps = [
        ["lengths", "build", str(data), "-o", str(root / "lens"), "--workers", "0"],
        ["plan", "build", str(root / "lens"), "--config", str(config), "-o", str(root / "plan")],
        ["plan", "shard", str(root / "plan"), "--world-size", "2", "-o", str(root / "shards")],
        [
            "write",
            str(root / "plan"),
            "--dataset",
            str(data),
            "--lengths",
            str(root / "lens"),
            "-o",
            str(root / "batches"),
        ],
        [
            "envs",
            "collect",
            "grid",
            "-o",
            str(root / "rollouts"),
            "--num-envs",
            "2",
            "--chunks",
            "1",
        ],
    ]
    for args in steps:
        result = invoke(kernel, args)
        assert result.exit_code == 0, result.output
    save_lengths(laden.LengthTable.from_lengths(np.zeros(0, dtype=np.int64)), root / "nolens")
    (root / "bad.yaml").write_text("seed: 1\nsampler: [\n")
    budget = "sampler:\n  name: token_budget\n  token_budget: 1024\nmemory_budget:\n"
    (root / "budget.yaml").write_text(budget + "  percent: 150\n")
    (root / "tiny.yaml").write_text(budget + "  bytes: 10\n")
    (root / "notes.txt").write_text("hello world\nthis is not json\n")
    (root / "empty.jsonl").write_text("")
    (root / "blank.jsonl").write_text("\n  \n\n")
    return {
        "tmp": str(root),
        "data": str(data),
        "config": str(config),
        "lens": str(root / "lens"),
        "plan": str(root / "plan"),
        "shards": str(root / "shards"),
        "batches": str(root / "batches"),
        "rollouts": str(root / "rollouts"),
        "nolens": str(root / "nolens"),
        "bad": str(root / "bad.yaml"),
        "budget": str(root / "budget.yaml"),
        "tiny": str(root / "tiny.yaml"),
        "notes": str(root / "notes.txt"),
        "empty": str(root / "empty.jsonl"),
        "blank": str(root / "blank.jsonl"),
    }


BUILD = ["plan", "build", "{lens}", "--config", "{config}", "-o", "{tmp}/out-plan"]

#: (id, arguments, exit codes allowed, what the Error line must name)
MISTAKES: list[tuple[str, list[str], tuple[int, ...], str]] = [
    (
        "timeseries-on-jsonl",
        ["lengths", "build", "{data}", "--source", "timeseries", "-S", "window=4", "-o", "{tmp}/w"],
        (2,),
        "data.jsonl: unknown file type; expected .npy, .csv or .parquet",
    ),
    # An artifact of one kind where another is expected, all ways round.
    (
        "plan-as-lengths-build",
        ["plan", "build", "{plan}", "--config", "{config}", "-o", "{tmp}/p"],
        (1,),
        "{plan}: is a batch plan, not a length cache",
    ),
    ("plan-as-lengths-analyze", ["analyze", "{plan}"], (1,), "is a batch plan, not a length cache"),
    ("plan-as-lengths-stats", ["lengths", "stats", "{plan}"], (1,), "is a batch plan"),
    ("plan-as-lengths-suggest", ["suggest", "{plan}"], (1,), "is a batch plan"),
    (
        "plan-as-lengths-verify",
        ["plan", "verify", "{plan}", "--lengths", "{plan}"],
        (1,),
        "is a batch plan, not a length cache",
    ),
    (
        "plan-as-lengths-write",
        ["write", "{plan}", "--dataset", "{data}", "--lengths", "{plan}", "-o", "{tmp}/b"],
        (1,),
        "is a batch plan, not a length cache",
    ),
    (
        "lengths-as-plan-info",
        ["plan", "info", "{lens}"],
        (1,),
        "is a length cache, not a batch plan",
    ),
    (
        "lengths-as-plan-shard",
        ["plan", "shard", "{lens}", "--world-size", "2", "-o", "{tmp}/s"],
        (1,),
        "is a length cache, not a batch plan",
    ),
    (
        "lengths-as-plan-write",
        ["write", "{lens}", "--dataset", "{data}", "--lengths", "{lens}", "-o", "{tmp}/b"],
        (1,),
        "{lens}: is a length cache, not a batch plan",
    ),
    ("batches-as-plan", ["plan", "info", "{batches}"], (1,), "is a batch file directory"),
    ("batches-as-lengths", ["analyze", "{batches}"], (1,), "is a batch file directory"),
    ("plan-as-batches", ["verify", "{plan}"], (1,), "is a batch plan, not a batch file directory"),
    ("shards-as-plan", ["plan", "info", "{shards}"], (1,), "pass one of its rank-R folders"),
    ("no-meta", ["plan", "info", "{tmp}"], (1,), "{tmp}/meta.json: missing file: not a batch plan"),
    ("sweep-not-yaml", ["sweep", "{notes}", "--dry-run"], (2,), "{notes}: config files must"),
    # Sharding a shard.
    (
        "shard-a-shard",
        ["plan", "shard", "{shards}/rank-0", "--world-size", "2", "-o", "{tmp}/s2"],
        (1,),
        "rank-0: is already a shard (rank 0 of 2)",
    ),
    (
        "info-shard-of-a-shard",
        ["plan", "info", "{shards}/rank-1", "--rank", "0", "--world-size", "2"],
        (1,),
        "is already a shard",
    ),
    # Numbers out of range name their option.
    ("negative-seed-build", [*BUILD, "--seed", "-1"], (2,), "--seed"),
    ("negative-seed-analyze", ["analyze", "{lens}", "--seed", "-1"], (2,), "--seed"),
    ("negative-seed-demo", ["demo", "--seed", "-1", "--output", "{tmp}/demo"], (2,), "--seed"),
    (
        "zero-buckets-demo",
        ["demo", "--num-buckets", "0", "--output", "{tmp}/d"],
        (2,),
        "--num-buckets",
    ),
    ("zero-epochs", [*BUILD, "--epochs", "0"], (2,), "--epochs"),
    (
        "zero-world-size-shard",
        ["plan", "shard", "{plan}", "--world-size", "0", "-o", "{tmp}/s3"],
        (2,),
        "--world-size",
    ),
    (
        "zero-world-size-info",
        ["plan", "info", "{plan}", "--rank", "0", "--world-size", "0"],
        (2,),
        "--world-size",
    ),
    (
        "rank-out-of-range",
        ["plan", "info", "{plan}", "--rank", "2", "--world-size", "2"],
        (2,),
        "--rank",
    ),
    ("zero-buckets-suggest", ["suggest", "{lens}", "--num-buckets", "0"], (2,), "--num-buckets"),
    (
        "negative-workers",
        ["lengths", "build", "{data}", "-o", "{tmp}/l1", "--workers", "-1"],
        (2,),
        "workers",
    ),
    # Config files.
    (
        "missing-config",
        ["plan", "build", "{lens}", "--config", "{tmp}/missing.yaml", "-o", "{tmp}/p"],
        (2,),
        "--config",
    ),
    ("missing-config-check", ["config", "check", "{tmp}/missing.toml"], (2,), "missing.toml"),
    (
        "yaml-syntax",
        ["plan", "build", "{lens}", "--config", "{bad}", "-o", "{tmp}/p"],
        (2,),
        "{bad}: invalid YAML",
    ),
    ("yaml-syntax-check", ["config", "check", "{bad}"], (2,), "{bad}: invalid YAML"),
    # Datasets.
    (
        "not-jsonl",
        ["lengths", "build", "{notes}", "-o", "{tmp}/l2", "--workers", "0"],
        (1,),
        "{notes}:1:",
    ),
    (
        "empty-dataset",
        ["lengths", "build", "{empty}", "-o", "{tmp}/l3", "--workers", "0"],
        (1,),
        "{empty}: is empty",
    ),
    (
        "blank-dataset",
        ["lengths", "build", "{blank}", "-o", "{tmp}/l4", "--workers", "0"],
        (1,),
        "{blank}: is empty",
    ),
    (
        "empty-length-cache",
        ["plan", "build", "{nolens}", "--config", "{config}", "-o", "{tmp}/p"],
        (1,),
        "{nolens}: the length cache holds no samples",
    ),
    (
        "over-budget-analyze",
        ["analyze", "{lens}", "--token-budget", "50"],
        (1,),
        "--overflow",
    ),
    # Outputs that cannot be written.
    ("plot-missing-folder", ["analyze", "{lens}", "--plot", "{tmp}/nodir/h.png"], (2,), "nodir"),
    (
        "plot-missing-folder-stats",
        ["lengths", "stats", "{lens}", "--plot", "{tmp}/nodir/h.png"],
        (2,),
        "nodir",
    ),
    (
        "output-under-a-file-lengths",
        ["lengths", "build", "{data}", "-o", "{data}/lens", "--workers", "0"],
        (1, 2),
        "{data}",
    ),
    (
        "output-under-a-file-plan",
        ["plan", "build", "{lens}", "--config", "{config}", "-o", "{data}/plan"],
        (1, 2),
        "{data}",
    ),
    (
        "output-under-a-file-shard",
        ["plan", "shard", "{plan}", "--world-size", "2", "-o", "{data}/s"],
        (1, 2),
        "{data}",
    ),
    (
        "output-under-a-file-write",
        ["write", "{plan}", "--dataset", "{data}", "--lengths", "{lens}", "-o", "{data}/b"],
        (1, 2),
        "{data}",
    ),
    # Stream collections.
    (
        "stream-collect-into-a-plan",
        ["stream", "collect", "--source", "mock", "--samples", "5", "-o", "{plan}"],
        (2,),
        "holds a batch plan, not a stream collection",
    ),
    ("stream-stats-of-lengths", ["stream", "stats", "{lens}"], (1,), "is not a stream collection"),
    # Vectorized envs.
    (
        "envs-bench-unknown-env",
        ["envs", "bench", "nosuch", "--num-envs", "1", "--steps", "1", "--repeats", "1"],
        (2,),
        "env: must be a bundled env (grid, grid_torch), 'gym:ID', a gymnasium id",
    ),
    ("envs-bench-no-envs", ["envs", "bench", "grid", "--num-envs", "0"], (2,), "must be > 0"),
    (
        "envs-collect-into-a-folder-of-other-files",
        ["envs", "collect", "grid", "-o", "{tmp}", "--chunks", "1"],
        (2,),
        "is not empty; choose an empty directory",
    ),
    (
        "envs-collect-into-a-plan",
        ["envs", "collect", "grid", "-o", "{plan}", "--chunks", "1", "--force"],
        (2,),
        "holds a batch plan, not a rollout file directory",
    ),
    (
        "envs-collect-again-without-resume",
        ["envs", "collect", "grid", "-o", "{rollouts}", "--num-envs", "2", "--chunks", "1"],
        (2,),
        "already holds a rollout file directory; pass --resume",
    ),
    (
        "envs-collect-resume-other-settings",
        [
            "envs",
            "collect",
            "grid",
            "-o",
            "{rollouts}",
            "--num-envs",
            "2",
            "--seed",
            "5",
            "--resume",
        ],
        (2,),
        "cannot resume: {rollouts} was written with source seed 0; this run has seed 5",
    ),
    (
        "envs-collect-resume-and-force",
        ["envs", "collect", "grid", "-o", "{rollouts}", "--resume", "--force"],
        (2,),
        "force starts over and resume continues: pass one",
    ),
    (
        "envs-collect-zero-chunks",
        ["envs", "collect", "grid", "-o", "{tmp}/r0", "--chunks", "0"],
        (2,),
        "--chunks",
    ),
    # Executors: an unknown name, a bad setting, a setting without a value.
    (
        "executor-unknown",
        ["lengths", "build", "{data}", "-o", "{tmp}/l2", "--executor", "nope"],
        (2,),
        "executor: unknown executor 'nope'",
    ),
    (
        "executor-bad-chunksize",
        ["write", "{plan}", "-o", "{tmp}/b2", "-E", "chunksize=0"],
        (1, 2),
        'executor.chunksize: must be "auto" or an integer >= 1, got 0',
    ),
    (
        "memory-budget-percent",
        ["plan", "build", "{lens}", "--config", "{budget}", "-o", "{tmp}/mb"],
        (2,),
        "budget.yaml: memory_budget.percent: must be in (0, 100], got 150",
    ),
    (
        "memory-budget-under-one-sample",
        ["plan", "build", "{lens}", "--config", "{tiny}", "-o", "{tmp}/mb2"],
        (1,),
        "alone collates to",
    ),
    ("analyze-unknown-backend", ["analyze", "{lens}", "--backend", "nope"], (2,), "'nope'"),
    (
        "executor-option-no-value",
        ["lengths", "build", "{data}", "-o", "{tmp}/l3", "-E", "chunksize"],
        (2,),
        "expected KEY=VALUE, got 'chunksize'",
    ),
]


def check_one_error_line(result: Result, codes: tuple[int, ...], needle: str) -> str:
    """The exit code is one of ``codes``; one ``Error:`` line names ``needle``; no traceback."""
    assert result.exit_code in codes, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert needle in errors[0], result.output
    return errors[0]


@pytest.mark.parametrize(
    ("args", "codes", "needle"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_mistake_is_one_error_line(
    kernel: laden.Kernel,
    files: dict[str, str],
    args: list[str],
    codes: tuple[int, ...],
    needle: str,
) -> None:
    result = invoke(kernel, [a.format(**files) for a in args])
    check_one_error_line(result, codes, needle.format(**files))


def test_the_table_covers_every_command(kernel: laden.Kernel) -> None:
    """Each builtin command (and subcommand) meets at least one mistake above."""
    cli = build_cli(kernel)
    names: set[str] = set()
    for name, command in cli.commands.items():
        if isinstance(command, click.Group):
            names |= {f"{name} {sub}" for sub in command.commands}
        else:
            names.add(name)
    names -= {"plugins"}  # takes no input that can be wrong
    tried = set()
    for _, args, *_ in MISTAKES:
        two = " ".join(args[:2])
        tried.add(two if two in names else args[0])
    assert names <= tried, sorted(names - tried)


def test_every_command_with_output_has_json(kernel: laden.Kernel) -> None:
    cli = build_cli(kernel)
    missing = []
    for name, command in cli.commands.items():
        subs = command.commands.items() if isinstance(command, click.Group) else [("", command)]
        for sub, leaf in subs:
            if f"{name} {sub}".strip() == "demo":  # writes report.json instead
                continue
            if "--json" not in [o for p in leaf.params for o in getattr(p, "opts", [])]:
                missing.append(f"{name} {sub}".strip())
    assert not missing


# ----------------------------------------------------------------- OS errors


def test_a_full_disk_is_one_error_line_naming_the_file(
    kernel: laden.Kernel, files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while a plan is saved: ``Error: PATH: No space left on device``, exit 1."""

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = Path(files["tmp"]) / "full-plan"
    result = invoke(kernel, [a.format(**files) for a in BUILD[:-1]] + [str(out)])
    line = check_one_error_line(result, (1,), "No space left on device")
    assert str(out) in line
    assert ".tmp" not in line  # the file asked for, not its temporary name
    assert not out.exists()


def test_a_size_cap_in_a_real_process_is_one_error_line(files: dict[str, str]) -> None:
    """A real write failure (RLIMIT_FSIZE: EFBIG) in a real process: no traceback."""
    out = Path(files["tmp"]) / "capped-lens"

    # The child caps itself before laden starts (no preexec_fn: that forks this process,
    # which JAX, once imported by another test, warns about).
    child = (
        "import resource, runpy, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))\n"
        "sys.argv = ['laden', *sys.argv[1:]]\n"
        "runpy.run_module('laden', run_name='__main__', alter_sys=True)\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            child,
            "lengths",
            "build",
            files["data"],
            "-o",
            str(out),
            "--workers",
            "0",
            "--no-reuse",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    assert "File too large" in errors[0]
    assert f"{out.parent}/" in errors[0]
    assert out.name in errors[0]  # the output, or laden's work files beside it
    assert not out.exists()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "out/meta.json"), "out/meta.json: No"),
        (OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b"), "a -> b: Invalid"),
        (OSError(errno.EIO, "Input/output error"), "Input/output error"),
    ],
)
def test_os_error_message(exc: OSError, expected: str) -> None:
    assert os_error_message(exc).startswith(expected)


def test_emit_json_takes_numpy_values(capsys: pytest.CaptureFixture[str]) -> None:
    value: dict[str, Any] = {"n": np.int64(3), "a": np.arange(2), "p": Path("x"), "t": (1, 2)}
    emit_json(value)
    assert json.loads(capsys.readouterr().out) == {"n": 3, "a": [0, 1], "p": "x", "t": [1, 2]}


def test_loaders_name_the_kind_they_were_given(files: dict[str, str]) -> None:
    with pytest.raises(laden.DataError, match="is a batch plan, not a length cache"):
        load_lengths(files["plan"])
    with pytest.raises(laden.DataError, match="is a length cache, not a batch plan"):
        BatchPlan.load(files["lens"])
    with pytest.raises(laden.DataError, match="is a batch file directory, not a batch plan"):
        BatchPlan.load(files["batches"])

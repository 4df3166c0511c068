"""``laden plan build|info|verify|shard``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

import laden
from laden.cli import build_cli
from laden.lengths import save_lengths
from laden.plan import BatchPlan


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    lengths = np.clip(np.random.default_rng(1).lognormal(5, 1, 4000), 1, 3000).astype(np.int64)
    cache = save_lengths(laden.LengthTable.from_lengths(lengths), tmp_path / "cache")
    config = tmp_path / "run.yaml"
    config.write_text("seed: 1\nepochs: 1\nsampler:\n  name: token_budget\n  token_budget: 8192\n")
    return {"cache": cache, "config": config, "root": tmp_path}


def run(kernel: laden.Kernel, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(build_cli(kernel), list(args))
    assert result.exit_code == code, result.output
    return result


def test_build_info_verify_shard(kernel: laden.Kernel, setup: dict[str, Path]) -> None:
    cache, config, root = setup["cache"], setup["config"], setup["root"]
    out = root / "plan"
    built = run(
        kernel,
        "plan",
        "build",
        str(cache),
        "--config",
        str(config),
        "--epochs",
        "3",
        "--seed",
        "4",
        "-o",
        str(out),
    )
    plan = BatchPlan.load(out)
    assert plan.num_epochs == 3
    assert plan.config["seed"] == 4
    assert plan.fingerprint in built.output
    info = json.loads(run(kernel, "plan", "info", str(out), "--json").output)
    assert info["fingerprint"] == plan.fingerprint
    assert info["steps"] == plan.steps
    assert info["tokens"] == plan.tokens
    text = run(kernel, "plan", "info", str(out)).output
    assert f"total {plan.total_steps:,}" in text
    rank = json.loads(
        run(kernel, "plan", "info", str(out), "--rank", "1", "--world-size", "3", "--json").output
    )
    assert rank["rank"] == 1
    assert rank["fingerprint"] == plan.shard(1, 3).fingerprint
    ok = run(kernel, "plan", "verify", str(out), "--lengths", str(cache))
    assert "ok: plan" in ok.output
    shards = root / "shards"
    run(kernel, "plan", "shard", str(out), "--world-size", "2", "-o", str(shards))
    loaded = [BatchPlan.load(shards / f"rank-{r}") for r in range(2)]
    assert [p.rank for p in loaded] == [0, 1]
    assert loaded[0].steps == loaded[1].steps
    assert loaded[1].fingerprint == plan.shard(1, 2).fingerprint
    assert run(kernel, "plan", "verify", str(shards / "rank-1"), "--lengths", str(cache))


def test_verify_fails_on_other_lengths(kernel: laden.Kernel, setup: dict[str, Path]) -> None:
    cache, config, root = setup["cache"], setup["config"], setup["root"]
    run(kernel, "plan", "build", str(cache), "--config", str(config), "-o", str(root / "plan"))
    other = save_lengths(laden.LengthTable.from_lengths(np.arange(1, 100)), root / "other")
    bad = run(kernel, "plan", "verify", str(root / "plan"), "--lengths", str(other), code=1)
    assert "MISMATCH: the length table differs" in bad.output


def test_bad_input_is_named(kernel: laden.Kernel, setup: dict[str, Path]) -> None:
    cache, root = setup["cache"], setup["root"]
    config = root / "bad.toml"
    config.write_text("[sampler]\nname = 'token_budget'\ntoken_budget = 0\n")
    bad = run(
        kernel, "plan", "build", str(cache), "--config", str(config), "-o", str(root / "p"), code=2
    )
    assert "sampler.token_budget: must be > 0, got 0" in bad.output
    assert str(config) in bad.output
    assert not (root / "p").exists()
    broken = root / "broken"
    broken.mkdir()
    (broken / "meta.json").write_text("{")
    bad = run(kernel, "plan", "info", str(broken), code=1)
    assert "meta.json" in bad.output
    assert "not valid JSON" in bad.output
    bad = run(kernel, "plan", "info", str(broken), "--rank", "1", code=2)
    assert "--rank and --world-size go together" in bad.output

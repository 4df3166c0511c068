"""``laden plan build|info|verify|shard``."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import numpy as np
import pytest
from click.testing import Result
from hypothesis import given, settings
from hypothesis import strategies as st

import laden
from laden.lengths import save_lengths
from laden.plan import BatchPlan
from laden.testing import run_cli


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    lengths = np.clip(np.random.default_rng(1).lognormal(5, 1, 4000), 1, 3000).astype(np.int64)
    cache = save_lengths(laden.LengthTable.from_lengths(lengths), tmp_path / "cache")
    config = tmp_path / "run.yaml"
    config.write_text("seed: 1\nepochs: 1\nsampler:\n  name: token_budget\n  token_budget: 8192\n")
    return {"cache": cache, "config": config, "root": tmp_path}


def run(kernel: laden.Kernel, *args: str, code: int = 0) -> Result:
    return run_cli(kernel, *args, code=code)


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


# ------------------------------------------------- what was dropped or cut, --json


def write_config(root: Path, name: str, body: str) -> Path:
    path = root / name
    path.write_text(body)
    return path


LONG = np.array([5, 50, 3000, 10, 2000, 7, 9000, 1] * 50, dtype=np.int64)


@pytest.mark.parametrize(
    ("overflow", "samples", "tokens"),
    [("drop", 100, 50 * (3000 + 9000)), ("truncate", 100, 50 * (3000 - 2048 + 9000 - 2048))],
)
def test_build_and_info_report_dropped_and_truncated(
    kernel: laden.Kernel, tmp_path: Path, overflow: str, samples: int, tokens: int
) -> None:
    cache = save_lengths(laden.LengthTable.from_lengths(LONG), tmp_path / "cache")
    config = write_config(
        tmp_path,
        "run.toml",
        f"epochs = 2\n[sampler]\nname = 'token_budget'\ntoken_budget = 2048\n"
        f"overflow = '{overflow}'\n",
    )
    out = tmp_path / "plan"
    built = run(kernel, "plan", "build", str(cache), "--config", str(config), "-o", str(out))
    kind = "dropped" if overflow == "drop" else "truncated"
    other = "truncated" if overflow == "drop" else "dropped"
    if kind == "dropped":
        expected = f"dropped per epoch: {samples:,} samples, {tokens:,} tokens;"
    else:
        expected = f"truncated: {samples:,} samples, {tokens:,} tokens cut"
    assert expected in built.output
    assert f"(overflow: sampler '{overflow}')" in built.output
    data = json.loads(
        run(
            kernel,
            "plan",
            "build",
            str(cache),
            "--config",
            str(config),
            "-o",
            str(out),
            "--force",
            "--json",
        ).output
    )
    info = json.loads(run(kernel, "plan", "info", str(out), "--json").output)
    for report in (data, info):
        assert report[f"{kind}_samples"] == [samples, samples]
        assert report[f"{kind}_tokens"] == [tokens, tokens]
        assert report[f"{other}_samples"] == [0, 0]
        assert report["overflow"] == {"sampler": overflow, "packer": None}
    assert data["output"] == str(out)
    assert expected in run(kernel, "plan", "info", str(out)).output
    # The counts are the plan's own: what is left plus what was lost is the dataset.
    plan = BatchPlan.load(out)
    lost = info["dropped_tokens"][0] + info["truncated_tokens"][0]
    assert plan.tokens[0] + lost == int(LONG.sum())


def test_packed_plan_reports_the_packers_losses(kernel: laden.Kernel, tmp_path: Path) -> None:
    cache = save_lengths(laden.LengthTable.from_lengths(LONG), tmp_path / "cache")
    base = "[sampler]\nname = 'token_budget'\ntoken_budget = 4096\n"
    for overflow, key, count in (("split", "split_samples", 150), ("drop", "dropped_samples", 150)):
        config = write_config(
            tmp_path,
            f"{overflow}.toml",
            base + f"[packer]\nname = 'best_fit'\nmax_length = 1024\noverflow = '{overflow}'\n",
        )
        out = tmp_path / overflow
        info = json.loads(
            run(
                kernel,
                "plan",
                "build",
                str(cache),
                "--config",
                str(config),
                "-o",
                str(out),
                "--json",
            ).output
        )
        got = info[key] if key == "split_samples" else info[key][0]
        assert got == count
        assert info["overflow"] == {"sampler": "error", "packer": overflow}
        text = run(kernel, "plan", "info", str(out)).output
        if overflow == "split":
            assert "split: 150 samples packed in pieces, every token kept" in text
            assert info["dropped_tokens"] == [0]
        else:
            assert f"dropped per epoch: 150 samples, {50 * (3000 + 2000 + 9000):,} tokens" in text


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 300), min_size=1, max_size=120),
    budget=st.integers(16, 400),
    sampler_overflow=st.sampled_from(["drop", "truncate", "alone"]),
    pack=st.sampled_from([None, "drop", "truncate", "split"]),
    fixed=st.booleans(),
)
def test_tokens_kept_and_lost_add_up_to_the_dataset(
    lengths: list[int], budget: int, sampler_overflow: str, pack: str | None, fixed: bool
) -> None:
    """Invariant: tokens in batches + dropped + truncated == every token of the dataset."""
    kernel = laden.Kernel(autoload=False)
    table = laden.LengthTable.from_lengths(lengths)
    if fixed:
        sampler = kernel.create("sampler", {"name": "fixed", "batch_size": 7, "drop_last": True})
    else:
        sampler = kernel.create(
            "sampler",
            {"name": "token_budget", "token_budget": budget, "overflow": sampler_overflow},
        )
    packer = None
    if pack is not None:
        packer = kernel.create(
            "packer", {"name": "first_fit", "max_length": max(budget // 2, 8), "overflow": pack}
        )
    plan = BatchPlan.build(table, sampler, packer, epochs=2, seed=3)
    info = plan.summary()
    for e in range(2):
        lost = info["dropped_tokens"][e] + info["truncated_tokens"][e]
        assert plan.tokens[e] + lost == sum(lengths)
        if packer is None:
            assert info["dropped_samples"][e] == plan.epochs[e].dropped.size
            assert info["truncated_samples"][e] == plan.epochs[e].truncated.size
    # Recorded outside the fingerprint: a plan without the counts has the same one.
    stripped = BatchPlan(
        config=plan.config,
        table_digest=plan.table_digest,
        num_samples=plan.num_samples,
        num_units=plan.num_units,
        epochs=tuple(attrs.evolve(e, report={}) for e in plan.epochs),
        batch_tokens=plan.batch_tokens,
        pack=plan.pack,
    )
    assert stripped.fingerprint == plan.fingerprint


def test_older_plan_without_recorded_counts_still_reports(kernel: laden.Kernel) -> None:
    fixture = Path(__file__).parent / "fixtures" / "plan-py310"
    info = json.loads(run(kernel, "plan", "info", str(fixture), "--json").output)
    assert info["dropped_samples"] == [0, 0]  # packed: the pack plan and arrays still tell
    assert info["truncated_samples"] == [None, None]  # unknown, never a made-up 0
    assert "truncated: ? samples, ? tokens cut" in run(kernel, "plan", "info", str(fixture)).output


def test_shard_reports_padding_and_warns_about_padding_only_ranks(
    kernel: laden.Kernel, tmp_path: Path
) -> None:
    cache = save_lengths(laden.LengthTable.from_lengths([10, 20, 30]), tmp_path / "cache")
    config = write_config(tmp_path, "run.toml", "[sampler]\nname = 'fixed'\nbatch_size = 1\n")
    plan = tmp_path / "plan"
    run(kernel, "plan", "build", str(cache), "--config", str(config), "-o", str(plan))
    text = run(kernel, "plan", "shard", str(plan), "--world-size", "5", "-o", str(tmp_path / "s"))
    assert "remainder 'pad': padding batches per epoch 2 over all ranks" in text.output
    warnings = [line for line in text.output.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: ranks 3-4 of 5: each holds only padding batches in 1 of 1 epoch(s) "
        "(more ranks than batches): it trains on nothing there"
    ]
    data = json.loads(
        run_cli(
            kernel, "plan", "shard", plan, "--world-size", "5", "-o", tmp_path / "s2", "--json"
        ).stdout
    )
    assert [r["padding_batches"] for r in data["ranks"]] == [[0], [0], [0], [1], [1]]
    assert data["shard_report"]["padding_batches"] == [2]
    assert len(data["warnings"]) == 1
    assert BatchPlan.load(data["ranks"][4]["path"]).fingerprint == data["ranks"][4]["fingerprint"]
    info = run(kernel, "plan", "info", str(tmp_path / "s" / "rank-4"))
    assert "rank 4 of 5 holds only padding batches" in info.output
    assert "1 on this rank" in info.output
    assert "warning:" not in run(kernel, "plan", "info", str(tmp_path / "s" / "rank-0")).output
    dropped = run(
        kernel,
        "plan",
        "shard",
        str(plan),
        "--world-size",
        "2",
        "--remainder",
        "drop",
        "-o",
        str(tmp_path / "s3"),
    )
    assert "remainder 'drop': dropped per epoch 1 batches, 1 units, 10 tokens" in dropped.output


def test_verify_write_and_batch_verify_speak_json(
    kernel: laden.Kernel, setup: dict[str, Path], tmp_path: Path
) -> None:
    cache, config, root = setup["cache"], setup["config"], setup["root"]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"text": "x" * (i % 90 + 1)}) + "\n" for i in range(300)))
    lens = root / "lens"
    run(kernel, "lengths", "build", str(data), "-o", str(lens), "--workers", "0")
    plan = root / "plan"
    run(kernel, "plan", "build", str(lens), "--config", str(config), "-o", str(plan))
    ok = json.loads(
        run(kernel, "plan", "verify", str(plan), "--lengths", str(lens), "--json").output
    )
    assert ok == {
        "ok": True,
        "fingerprint": BatchPlan.load(plan).fingerprint,
        "reason": None,
        "epoch": None,
        "batch": None,
    }
    bad = run(kernel, "plan", "verify", str(plan), "--lengths", str(cache), "--json", code=1)
    verdict = json.loads(bad.stdout)
    assert verdict["ok"] is False
    assert "the length table differs" in verdict["reason"]
    out = root / "batches"
    args = ["write", str(plan), "--dataset", str(data), "--lengths", str(lens), "-o", str(out)]
    written = json.loads(run(kernel, *args, "--json").stdout)
    assert written["written"] == written["total"] == BatchPlan.load(plan).total_steps
    assert written["output"] == str(out)
    checked = json.loads(run(kernel, "verify", str(out), "--json").stdout)
    assert checked == {"ok": True, "directory": str(out), "problems": []}
    victim = sorted(out.glob("e*.npz"))[0]
    victim.write_bytes(victim.read_bytes()[:-10])
    broken = run(kernel, "verify", str(out), "--json", code=1)
    report = json.loads(broken.stdout)
    assert report["ok"] is False
    assert any(victim.name in p for p in report["problems"])

"""Nothing lost: outputs replace only what laden wrote, files follow the umask,
and length caches and plans remember where their inputs are."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import Result
from hypothesis import given, settings
from hypothesis import strategies as st

import laden
from laden.cli.demo import MARKER, claim_output
from laden.io import (
    artifact_kind,
    atomic_directory,
    atomic_write_bytes,
    prepare_output,
    write_json,
)
from laden.lengths import build_lengths, load_lengths, save_lengths
from laden.plan import BatchPlan
from laden.testing import run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "plan-py310"
CONFIG = "seed: 1\nepochs: 2\nsampler:\n  name: token_budget\n  token_budget: 512\n"


def run(kernel: laden.Kernel, *args: str, code: int = 0) -> Result:
    return run_cli(kernel, *args, code=code)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: what must survive a refused command."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def rows(n: int = 60) -> str:
    return "".join(json.dumps({"id": i, "text": "ab " * (i % 17 + 1)}) + "\n" for i in range(n))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's project folder (the working directory): data, a config, notes."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.jsonl").write_text(rows())
    (root / "data" / "README").write_text("my notes, not laden's\n")
    (root / "run.yaml").write_text(CONFIG)
    monkeypatch.chdir(root)
    return root


def build(kernel: laden.Kernel, *extra: str, code: int = 0) -> Result:
    return run(kernel, "lengths", "build", "data/train.jsonl", "--workers", "0", *extra, code=code)


# ------------------------------------------------- never delete what laden did not write


def test_lengths_build_into_the_datasets_folder_is_refused(
    kernel: laden.Kernel, project: Path
) -> None:
    before = snapshot(project)
    bad = build(kernel, "-o", "data", code=2)
    assert "data" in bad.output
    assert "train.jsonl" in bad.output
    assert "not a length cache" in bad.output
    assert snapshot(project) == before


@pytest.mark.parametrize("spelling", [".", "ABS"])
def test_lengths_build_into_the_working_directory_is_refused(
    kernel: laden.Kernel, project: Path, spelling: str
) -> None:
    before = snapshot(project)
    out = str(project) if spelling == "ABS" else spelling
    run(kernel, "lengths", "build", "data/train.jsonl", "--workers", "0", "-o", out, code=2)
    assert snapshot(project) == before
    assert Path.cwd() == project
    assert project.is_dir()


def test_plan_build_over_its_length_cache_is_refused(kernel: laden.Kernel, project: Path) -> None:
    build(kernel, "-o", "lens")
    before = snapshot(project)
    bad = run(kernel, "plan", "build", "lens", "--config", "run.yaml", "-o", "lens", code=2)
    assert "holds a length cache, not a batch plan" in bad.output
    assert snapshot(project) == before
    assert len(load_lengths("lens")) == 60


def test_same_kind_is_replaced_only_with_force(kernel: laden.Kernel, project: Path) -> None:
    build(kernel, "-o", "lens")
    run(kernel, "plan", "build", "lens", "--config", "run.yaml", "-o", "plan")
    before = snapshot(project)
    again = run(kernel, "plan", "build", "lens", "--config", "run.yaml", "-o", "plan", code=2)
    assert "already holds a batch plan; pass --force" in again.output
    assert snapshot(project) == before
    run(
        kernel,
        "plan",
        "build",
        "lens",
        "--config",
        "run.yaml",
        "--seed",
        "5",
        "-o",
        "plan",
        "--force",
    )
    assert BatchPlan.load("plan").config["seed"] == 5
    # A cache that no longer matches (the data changed) is replaced only with --force ...
    (project / "data" / "train.jsonl").write_text(rows(70))
    stale = build(kernel, "-o", "lens", code=2)
    assert "already holds a length cache; pass --force" in stale.output
    assert len(load_lengths("lens")) == 60
    build(kernel, "-o", "lens", "--force")
    assert len(load_lengths("lens")) == 70
    # ... while a matching one is reused, which replaces nothing.
    assert build(kernel, "-o", "lens").output.startswith("reused 70 samples")


def test_outputs_that_are_files_or_other_artifacts_are_refused(
    kernel: laden.Kernel, project: Path
) -> None:
    build(kernel, "-o", "lens")
    (project / "out.txt").write_text("keep me")
    before = snapshot(project)
    bad = run(kernel, "plan", "build", "lens", "--config", "run.yaml", "-o", "out.txt", code=2)
    assert "is a file" in bad.output or "out.txt" in bad.output
    # --force never widens to another kind or to foreign files.
    foreign = run(
        kernel, "plan", "build", "lens", "--config", "run.yaml", "-o", "data", "--force", code=2
    )
    assert "2 entries laden did not write (README, train.jsonl)" in foreign.output
    other = run(
        kernel, "plan", "build", "lens", "--config", "run.yaml", "-o", "lens", "--force", code=2
    )
    assert "holds a length cache, not a batch plan" in other.output
    assert "laden did not write" in build(kernel, "-o", "data", "--force", code=2).output
    assert snapshot(project) == before


def test_library_writers_never_replace_anything_else(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    table = laden.LengthTable.from_lengths([3, 1, 4])
    with pytest.raises(laden.ConfigError, match=r"thesis\.tex"):
        save_lengths(table, folder)
    cache = save_lengths(table, tmp_path / "cache")
    kernel = laden.Kernel(autoload=False)
    sampler = kernel.create("sampler", {"name": "token_budget", "token_budget": 8})
    plan = BatchPlan.build(load_lengths(cache), sampler)
    with pytest.raises(laden.ConfigError, match="holds a length cache"):
        plan.save(cache)
    with pytest.raises(laden.ConfigError, match="pass --force"):
        save_lengths(table, cache, overwrite=False)
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert load_lengths(cache).length.tolist() == [3, 1, 4]
    assert sorted(os.listdir(tmp_path)) == ["cache", "mine"]  # no temporaries left
    # An empty folder is fine, and is filled in place.
    empty = tmp_path / "empty"
    empty.mkdir()
    save_lengths(table, empty)
    assert artifact_kind(empty) == "laden.lengths"


def test_artifacts_without_a_kind_field_are_recognised(tmp_path: Path) -> None:
    """Caches and plans from before the ``kind`` field are still laden's own."""
    assert artifact_kind(FIXTURE) == "laden.plan"
    cache = save_lengths(laden.LengthTable.from_lengths([1, 2]), tmp_path / "c")
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["kind"] == "laden.lengths"
    del meta["kind"]
    (cache / "meta.json").write_text(json.dumps(meta))
    assert artifact_kind(cache) == "laden.lengths"
    save_lengths(laden.LengthTable.from_lengths([5]), cache)  # replaced as a cache
    assert load_lengths(cache).length.tolist() == [5]
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "meta.json").write_text('{"kind": "something.else"}')
    assert artifact_kind(tmp_path / "x") is None
    with pytest.raises(laden.ConfigError, match=r"1 entry laden did not write \(meta\.json\)"):
        prepare_output(tmp_path / "x", "laden.lengths", force=True)


def test_plan_shard_owns_only_rank_folders(kernel: laden.Kernel, project: Path) -> None:
    build(kernel, "-o", "lens")
    run(kernel, "plan", "build", "lens", "--config", "run.yaml", "-o", "plan")
    before = snapshot(project)
    run(kernel, "plan", "shard", "plan", "--world-size", "2", "-o", "data", code=2)
    run(kernel, "plan", "shard", "plan", "--world-size", "2", "-o", "plan", code=2)
    run(kernel, "plan", "shard", "plan", "--world-size", "2", "-o", "data", "--force", code=2)
    assert snapshot(project) == before
    run(kernel, "plan", "shard", "plan", "--world-size", "4", "-o", "shards")
    assert artifact_kind("shards") == "laden.shards"
    again = run(kernel, "plan", "shard", "plan", "--world-size", "2", "-o", "shards", code=2)
    assert "pass --force" in again.output
    run(kernel, "plan", "shard", "plan", "--world-size", "2", "-o", "shards", "--force")
    assert sorted(os.listdir("shards")) == ["rank-0", "rank-1"]  # the stale rank-2, rank-3 went
    assert BatchPlan.load("shards/rank-1").world_size == 2
    # A file of the user's among the shards: the folder is no longer laden's alone.
    Path("shards/notes.txt").write_text("mine")
    run(kernel, "plan", "shard", "plan", "--world-size", "2", "-o", "shards", "--force", code=2)
    assert Path("shards/notes.txt").read_text() == "mine"


def test_plot_files(kernel: laden.Kernel, project: Path) -> None:
    pytest.importorskip("matplotlib")
    build(kernel, "-o", "lens")
    missing = run(kernel, "lengths", "stats", "lens", "--plot", "nowhere/h.png", code=2)
    assert "folder nowhere does not exist" in missing.output
    assert "--plot" in missing.output
    Path("h.png").write_bytes(b"my own picture")
    for command in (["lengths", "stats", "lens"], ["analyze", "lens"]):
        taken = run(kernel, *command, "--plot", "h.png", code=2)
        assert "h.png already exists; pass --force" in taken.output
        assert Path("h.png").read_bytes() == b"my own picture"
    run(kernel, "analyze", "lens", "--plot", "h.png", "--force")
    assert Path("h.png").read_bytes().startswith(b"\x89PNG")
    run(kernel, "lengths", "stats", "lens", "--plot", "data", code=2)


def test_demo_owns_only_its_own_folder(kernel: laden.Kernel, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "lengths").mkdir()
    (mine / "lengths" / "keep.txt").write_text("keep")
    (mine / "stdlib.jsonl").write_text("not the demo's")
    before = snapshot(mine)
    bad = run(kernel, "demo", "--output", mine, code=2)
    assert str(mine) in bad.output
    assert "--output" in bad.output
    assert snapshot(mine) == before
    # New, empty, or marked by a previous demo: the demo may write there.
    fresh = claim_output(tmp_path / "new")
    assert (fresh / MARKER).is_file()
    write_json(fresh / "report.json", {"old": True})
    assert claim_output(fresh) == fresh
    assert artifact_kind(fresh) == "laden.cli.demo"
    (fresh / MARKER).unlink()  # a demo folder from before the marker: still the demo's
    save_lengths(laden.LengthTable.from_lengths([1]), fresh / "lengths")
    (fresh / "stdlib.jsonl").write_text("")
    assert artifact_kind(fresh) == "laden.cli.demo"


def test_write_force_and_resume_touch_only_batch_files(kernel: laden.Kernel, project: Path) -> None:
    build(kernel, "-o", "lens")
    run(kernel, "plan", "build", "lens", "--config", "run.yaml", "-o", "plan")
    run(kernel, "write", "plan", "-o", "batches")
    first = sorted(os.listdir("batches"))
    run(kernel, "write", "plan", "-o", "batches", code=2)
    run(kernel, "write", "plan", "-o", "batches", "--force")
    assert sorted(os.listdir("batches")) == first
    # A file of the user's among the batches: --force deletes nothing at all.
    Path("batches/notes.txt").write_text("mine")
    before = snapshot(project / "batches")
    refused = run(kernel, "write", "plan", "-o", "batches", "--force", code=2)
    assert "notes.txt" in refused.output
    assert snapshot(project / "batches") == before
    run(kernel, "write", "plan", "-o", "data", "--force", code=2)
    before = snapshot(project / "data")
    run(kernel, "write", "plan", "-o", "data", "--resume", code=2)
    assert snapshot(project / "data") == before


# ------------------------------------------------------------- permissions follow the umask


@pytest.fixture
def umask() -> Iterator[Any]:
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"),
    [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)],
)
def test_files_and_folders_follow_the_umask(
    tmp_path: Path, umask: Any, mask: int, file_mode: int, dir_mode: int
) -> None:
    umask(mask)
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert mode(tmp_path / "a.bin") == file_mode
    cache = save_lengths(laden.LengthTable.from_lengths([1, 2, 3]), tmp_path / "cache")
    assert mode(cache) == dir_mode
    assert {mode(p) for p in cache.iterdir()} == {file_mode}
    kernel = laden.Kernel(autoload=False)
    sampler = kernel.create("sampler", {"name": "token_budget", "token_budget": 8})
    plan = BatchPlan.build(load_lengths(cache), sampler).save(tmp_path / "plan")
    assert mode(plan) == dir_mode
    assert {mode(p) for p in plan.iterdir()} == {file_mode}
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_bytes(b"")
    assert mode(tmp_path / "d") == dir_mode
    assert os.umask(mask) == mask  # reading the umask did not change it


def test_batch_files_are_readable_by_others(
    kernel: laden.Kernel, project: Path, umask: Any
) -> None:
    build(kernel, "-o", "lens")
    run(kernel, "plan", "build", "lens", "--config", "run.yaml", "-o", "plan")
    run(kernel, "write", "plan", "-o", "batches")
    assert {mode(p) for p in Path("batches").iterdir()} == {0o644}
    assert mode(Path("batches")) == 0o755


# ------------------------------------------------------------- paths laden can know, it remembers


@pytest.fixture
def measured(project: Path) -> Path:
    kernel = laden.Kernel(autoload=False)
    build_lengths(
        kernel.create("source", {"name": "jsonl", "path": "data/train.jsonl"}),
        kernel.create("tokenizer", "bytes"),
        output="lens",
        executor=kernel.create("executor", {"name": "local", "workers": 0}),
    )
    return project


SPELLINGS = ["data/train.jsonl", "./data/train.jsonl", "data/../data/train.jsonl", "ABS"]


def test_cache_reuse_does_not_depend_on_spelling(measured: Path) -> None:
    """However the dataset's path is spelt, the cache measured under another spelling is reused."""
    kernel = laden.Kernel(autoload=False)
    executor = kernel.create("executor", {"name": "local", "workers": 0})
    tok = kernel.create("tokenizer", "bytes")
    absolute = str(measured / "data" / "train.jsonl")

    @settings(max_examples=10, deadline=None)
    @given(st.sampled_from(SPELLINGS))
    def check(spelling: str) -> None:
        path = absolute if spelling == "ABS" else spelling
        source = kernel.create("source", {"name": "jsonl", "path": path})
        table = build_lengths(source, tok, output="lens", executor=executor)
        assert table.meta.get("reused") is True
        assert table.meta["dataset"] == absolute
        assert table.meta["source"]["path"] == absolute

    check()


def test_old_caches_with_a_relative_source_path_are_reused(measured: Path) -> None:
    meta = json.loads(Path("lens/meta.json").read_text())
    meta["source"]["path"] = "data/train.jsonl"  # as laden stored it before
    Path("lens/meta.json").write_text(json.dumps(meta))
    kernel = laden.Kernel(autoload=False)
    table = build_lengths(
        kernel.create("source", {"name": "jsonl", "path": "./data/train.jsonl"}),
        kernel.create("tokenizer", "bytes"),
        output="lens",
        executor=kernel.create("executor", {"name": "local", "workers": 0}),
    )
    assert table.meta["reused"] is True


def test_plans_record_their_inputs_outside_the_fingerprint(
    kernel: laden.Kernel, measured: Path
) -> None:
    table = load_lengths("lens")
    assert table.meta["cache_path"] == str(measured / "lens")
    sampler = kernel.create("sampler", {"name": "token_budget", "token_budget": 512})
    plan = BatchPlan.build(table, sampler, epochs=2, seed=1)
    bare = BatchPlan.build(attrs.evolve(table, meta={}), sampler, epochs=2, seed=1)
    assert plan.inputs["lengths"] == {
        "path": str(measured / "lens"),
        "table_digest": table.digest(),
    }
    assert plan.inputs["dataset"]["path"] == str(measured / "data" / "train.jsonl")
    assert plan.inputs["dataset"]["digest"] == table.meta["dataset_digest"]
    assert bare.inputs == {}
    assert plan.fingerprint == bare.fingerprint
    loaded = BatchPlan.load(plan.save("plan"))
    assert loaded.inputs == plan.inputs
    assert loaded.shard(1, 2).inputs == plan.inputs
    assert BatchPlan.load(FIXTURE).inputs == {}  # a plan from before: loads, records nothing


def test_write_finds_inputs_from_any_directory(
    kernel: laden.Kernel, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(kernel, "-o", "lens")
    run(kernel, "plan", "build", "lens", "--config", "run.yaml", "-o", "plan")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    done = run(kernel, "write", project / "plan", "-o", "batches")
    assert "0 failed" in done.output
    assert run(kernel, "verify", "batches").exit_code == 0
    assert "ok: plan" in run(kernel, "plan", "verify", project / "plan").output
    # A moved dataset is named, and --dataset says where it went.
    shutil.move(project / "data" / "train.jsonl", elsewhere / "moved.jsonl")
    gone = run(kernel, "write", project / "plan", "-o", "b2", code=1)
    assert str(project / "data" / "train.jsonl") in gone.output
    assert "no longer there" in gone.output
    run(kernel, "write", project / "plan", "-o", "b2", "--dataset", "moved.jsonl")
    # A changed dataset is named too.
    with open("moved.jsonl", "a") as f:
        f.write(json.dumps({"text": "new"}) + "\n")
    changed = run(kernel, "write", project / "plan", "-o", "b3", "--dataset", "moved.jsonl", code=1)
    assert "moved.jsonl" in changed.output
    assert "no longer matches" in changed.output
    # A moved or replaced length cache is named.
    shutil.move(project / "lens", elsewhere / "lens")
    lost = run(kernel, "write", project / "plan", "-o", "b4", code=1)
    assert str(project / "lens") in lost.output
    save_lengths(laden.LengthTable.from_lengths([1, 2]), project / "lens")
    other = run(kernel, "write", project / "plan", "-o", "b4", code=1)
    assert str(project / "lens") in other.output
    assert "not the one the plan was built from" in other.output


def test_hf_tokenizer_path_is_stored_absolute(kernel: laden.Kernel, project: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        ["ab ab ab abc"] * 20, trainers.BpeTrainer(vocab_size=40, special_tokens=["[UNK]"])
    )
    tok.save("tokenizer.json")
    build(kernel, "--tokenizer", "hf", "-T", "path=tokenizer.json", "-o", "lens")
    meta = load_lengths("lens").meta
    assert meta["tokenizer_config"]["path"] == str(project / "tokenizer.json")
    assert meta["tokenizer_file"]["path"] == str(project / "tokenizer.json")
    assert len(meta["tokenizer_file"]["digest"]) == 32
    run(kernel, "plan", "build", "lens", "--config", "run.yaml", "-o", "plan")
    elsewhere = project.parent / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    try:
        assert "0 failed" in run(kernel, "write", project / "plan", "-o", "batches").output
    finally:
        os.chdir(project)

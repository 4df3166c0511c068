"""Batch files are never served or kept damaged; one write per directory; each sample
tokenized once per write (issue 10)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import laden
from laden.collate import BatchLayout
from laden.collate.samples import SourceSamples
from laden.digest import content_digest
from laden.files.write import (
    LOCK,
    OutputBusyError,
    load_manifest,
    verify_directory,
    write_batches,
)
from laden.lengths import build_lengths
from laden.plan import BatchPlan
from laden.testing import run_cli
from tests.conftest import make_corpus

from .test_writing import contents, write, write_args


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference(corpus: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted npz write of the corpus (read-only for the tests)."""
    out = tmp_path_factory.mktemp("reference") / "batches"
    write(corpus, "npz", out)
    return out


def digests(directory: Path) -> dict[str, str]:
    return {n: r["blake2b"] for n, r in load_manifest(directory)["files"].items()}


def flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def expected_contents(corpus: dict[str, Any], backend: Any = None) -> dict[str, str]:
    """Content digests collated directly from the dataset, batch by batch (no token file)."""
    plan, table = corpus["plan"], corpus["table"]
    backend = backend or corpus["kernel"].create("backend", "numpy")
    samples = SourceSamples(source=corpus["source"], tokenizer=corpus["tokenizer"], table=table)
    lengths = plan.pack.pack_lengths if plan.pack is not None else table.length
    out = {}
    for epoch, step, spec in plan.iter_from():
        layout = BatchLayout.for_batch(spec, lengths, plan.pack)
        arrays = dict(backend.host(layout, samples))
        arrays["max_seqlen"] = np.asarray(arrays["max_seqlen"], dtype=np.int64)
        out[f"e{epoch:04d}-s{step:07d}-r{plan.rank:03d}.npz"] = content_digest(arrays)
    return out


# ---------------------------------------------------------------- resume


def test_resume_rewrites_exactly_the_damaged_files(
    corpus: dict[str, Any], reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    names = sorted(load_manifest(out)["files"])
    truncated, altered, swapped, deleted, unrecorded = (out / names[i] for i in (1, 3, 5, 7, 9))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    flip_byte(altered)
    shutil.copyfile(out / names[4], swapped)  # another batch's file under this name
    deleted.unlink()
    # A file renamed into place after the last manifest update, holding another batch.
    manifest = load_manifest(out)
    del manifest["files"][unrecorded.name]
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    shutil.copyfile(out / names[8], unrecorded)

    result = run_cli(corpus["kernel"], *write_args(corpus), "-o", out, "--resume")
    assert result.exit_code == 0, result.output
    total = len(names)
    assert f"5 written, {total - 5:,} kept from before, 0 failed" in result.output
    assert "5 kept file(s) were damaged or missing and were written again" in result.output
    assert f"{truncated.name}: " in result.output
    assert f"{deleted.name}: missing" in result.output
    # Byte for byte the uninterrupted run, and verify agrees.
    assert digests(out) == digests(reference)
    assert contents(out) == contents(reference)
    assert verify_directory(out) == []
    assert load_manifest(out)["complete"] is True


def test_resume_summary_names_each_damaged_file(
    corpus: dict[str, Any], reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    names = sorted(load_manifest(out)["files"])
    flip_byte(out / names[2], 0.9)
    summary = write(corpus, "npz", out, resume=True)
    assert summary["written"] == summary["damaged"] == 1
    assert summary["damaged_files"] == {names[2]: "checksum mismatch (the file was altered)"}
    assert summary["kept"] == len(names) - 1
    assert digests(out) == digests(reference)
    # A second resume finds nothing to do.
    again = write(corpus, "npz", out, resume=True)
    assert (again["written"], again["damaged"], again["kept"]) == (0, 0, len(names))


# ---------------------------------------------------------------- reader


def damage(kind: str, directory: Path, names: list[str]) -> Path:
    victim = directory / names[2]
    if kind == "truncated":
        victim.write_bytes(victim.read_bytes()[:-64])
    elif kind == "altered":
        flip_byte(victim, 0.6)
    elif kind == "swapped":
        shutil.copyfile(directory / names[1], victim)
    return victim


@pytest.mark.parametrize("writer", ["npz", "pt", "h5"])
@pytest.mark.parametrize("kind", ["truncated", "altered", "swapped"])
def test_reader_never_serves_a_damaged_file(
    corpus: dict[str, Any], tmp_path: Path, writer: str, kind: str
) -> None:
    if writer == "pt":
        pytest.importorskip("torch")
    if writer == "h5":
        pytest.importorskip("h5py")
    out = tmp_path / writer
    write(corpus, writer, out)
    names = sorted(load_manifest(out)["files"])
    before = [b["input_ids"].copy() for b in laden.BatchReader(out, epoch=0)]
    victim = damage(kind, out, names)
    for prefetch in (0, 2):
        with pytest.raises(laden.DataError, match=rf"{victim.name}: .*laden write --resume"):
            list(laden.BatchReader(out, prefetch=prefetch))
    with pytest.raises(laden.DataError, match=victim.name):
        laden.BatchReader(out, cache_files=0).get(2)
    # The batches before it were served intact.
    served: list[np.ndarray] = []

    def consume() -> None:
        served.extend(batch["input_ids"] for batch in laden.BatchReader(out, prefetch=0))

    with pytest.raises(laden.DataError):
        consume()
    assert len(served) == 2
    assert all(np.array_equal(a, b) for a, b in zip(served, before, strict=False))


def test_reader_checks_identity_without_the_checksum(
    corpus: dict[str, Any], reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    names = sorted(load_manifest(out)["files"])
    # Same size: step 1's file copied over step 2's only when their sizes match, so
    # rewrite the manifest record's size to isolate the identity check.
    shutil.copyfile(out / names[1], out / names[2])
    manifest = load_manifest(out)
    manifest["files"][names[2]]["bytes"] = (out / names[2]).stat().st_size
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(laden.DataError, match=r"holds epoch 0, step 1, rank 0, the manifest says"):
        list(laden.BatchReader(out, verify=False))


def test_reader_opt_out_skips_only_the_checksum(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    names = sorted(load_manifest(out)["files"])
    original = next(iter(laden.BatchReader(out)))["input_ids"].copy()
    # Alter one token of batch 0 in place (same size, same identity).
    path = out / names[0]
    data = bytearray(path.read_bytes())
    at = bytes(data).find(original.tobytes()[:64])
    assert at > 0
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(laden.DataError, match="checksum mismatch"):
        next(iter(laden.BatchReader(out)))
    served = next(iter(laden.BatchReader(out, verify=False)))["input_ids"]
    assert not np.array_equal(served, original)  # the opt-out is real: no checksum
    truncated = out / names[1]
    truncated.write_bytes(truncated.read_bytes()[:-8])
    with pytest.raises(laden.DataError, match="bytes, the manifest says"):
        laden.BatchReader(out, verify=False).get(1)


def test_reader_checks_manifests_without_crc32(reference: Path, tmp_path: Path) -> None:
    """A manifest written before ``crc32`` was recorded falls back to its blake2b."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    manifest = load_manifest(out)
    for record in manifest["files"].values():
        del record["crc32"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert len(list(laden.BatchReader(out))) == len(manifest["files"])
    victim = out / sorted(manifest["files"])[3]
    flip_byte(victim, 0.7)
    with pytest.raises(laden.DataError, match=rf"{victim.name}: checksum mismatch"):
        list(laden.BatchReader(out))


def test_reader_refuses_what_the_directory_does_not_hold(
    corpus: dict[str, Any], reference: Path
) -> None:
    with pytest.raises(laden.DataError, match=r"no batch files of epoch 5 .*holds epoch\(s\) 0, 1"):
        laden.BatchReader(reference, epoch=5)
    with pytest.raises(laden.DataError, match=r"no batch files of rank 3; .*holds rank\(s\) 0"):
        laden.BatchReader(reference, rank=3)
    # A state saved by a reader of another epoch, or past the end, does not fit.
    one = laden.BatchReader(reference, epoch=1)
    next(iter(one))
    every = laden.BatchReader(reference)
    with pytest.raises(laden.DataError, match="does not fit: this reader holds"):
        every.load_state_dict(one.state_dict())
    state = {**every.state_dict(), "position": len(every) + 1}
    with pytest.raises(laden.DataError, match="does not fit"):
        every.load_state_dict(state)


# ------------------------------------------------------------------ lock


def test_two_writes_into_one_directory_cannot_both_proceed(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "laden", *write_args(corpus), "-o", str(out), "--resume"]
    seen: list[subprocess.CompletedProcess[str]] = []

    def progress(done: int, total: int | None) -> None:
        if not seen:  # while this write holds the directory, start a second one
            seen.append(subprocess.run(command, capture_output=True, text=True, timeout=120))

    summary = write(corpus, "npz", out, progress=progress)
    assert summary["written"] == corpus["plan"].total_steps
    second = seen[0]
    assert second.returncode == 1, second.stdout + second.stderr
    message = f"Error: another laden write is running in {out} (pid {os.getpid()})"
    assert message in second.stderr
    assert "Traceback" not in second.stderr
    # The first write finished untouched, and left neither lock nor temporary files.
    assert verify_directory(out) == []
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    # Once it is done, a second run proceeds.
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_lock_dies_with_its_holder(corpus: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from laden.files.manifest import exclusive
                with exclusive(Path({str(out)!r})):
                    print("locked", flush=True)
                    time.sleep(120)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusyError, match=rf"\(pid {holder.pid}\)"):
            write(corpus, "npz", out)
        assert not (out / "manifest.json").exists()  # refused before touching anything
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
    assert (out / LOCK).exists()  # left by kill -9, but no longer locked
    summary = write(corpus, "npz", out)
    assert summary["written"] == corpus["plan"].total_steps
    assert not (out / LOCK).exists()


def test_force_starts_over_only_in_a_batch_directory(
    corpus: dict[str, Any], reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    flip_byte(out / sorted(load_manifest(out)["files"])[0])
    summary = write(corpus, "npz", out, force=True)
    assert summary["written"] == summary["total"]
    assert summary["kept"] == 0
    assert digests(out) == digests(reference)
    flip_byte(out / sorted(load_manifest(out)["files"])[1])
    cli = run_cli(corpus["kernel"], *write_args(corpus), "-o", out, "--force")
    assert cli.exit_code == 0, cli.output
    assert digests(out) == digests(reference)
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(laden.ConfigError, match=r"did not write \(notes.txt\)"):
        write(corpus, "npz", out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing removed


# ------------------------------------------------------- tokenize once


class CountingTokenizer:
    """The bytes tokenizer, counting what it encodes (in this process)."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def encode(self, text: str) -> np.ndarray:
        self.seen[text] += 1
        return np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64)


def used_samples(plan: BatchPlan) -> np.ndarray:
    samples = []
    for _, _, spec in plan.iter_from():
        if plan.pack is None:
            samples.append(spec.indices)
        else:
            for p in spec.indices:
                lo, hi = plan.pack.offsets[p], plan.pack.offsets[p + 1]
                samples.append(plan.pack.order[lo:hi][plan.pack.seg_length[lo:hi] > 0])
    return np.unique(np.concatenate(samples))


def test_each_sample_is_tokenized_once_per_write(
    corpus: dict[str, Any], reference: Path, tmp_path: Path
) -> None:
    plan, table = corpus["plan"], corpus["table"]
    # The corpus's plan splits long samples across packs and has two epochs.
    split = plan.pack.order[plan.pack.seg_start > 0]
    assert split.size > 0
    assert plan.num_epochs == 2
    counting = CountingTokenizer()
    summary = write_batches(
        plan,
        table,
        corpus["source"],
        counting,
        corpus["kernel"].create("writer", "npz"),
        tmp_path / "out",
    )
    assert counting.seen, "the text rows were tokenized"
    assert max(counting.seen.values()) == 1, counting.seen.most_common(3)
    rows = corpus["data"].read_text().splitlines()
    used = used_samples(plan)
    texts = [json.loads(rows[i]).get("text") for i in used.tolist()]
    assert sorted(counting.seen) == sorted(t for t in texts if t is not None)
    assert summary["tokens_tokenized"] == int(table.length[used].sum())
    # The bytes are those of a batch-by-batch collation straight from the dataset.
    assert contents(tmp_path / "out") == expected_contents(corpus) == contents(reference)
    assert digests(tmp_path / "out") == digests(reference)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_tokenize_once_with_workers_and_on_resume(
    corpus: dict[str, Any], reference: Path, tmp_path: Path
) -> None:
    plan, table = corpus["plan"], corpus["table"]
    kernel = corpus["kernel"]
    executor = kernel.create("executor", {"name": "local", "workers": 2})
    out = tmp_path / "out"
    summary = write(corpus, "npz", out, executor=executor)
    assert summary["tokens_tokenized"] == int(table.length[used_samples(plan)].sum())
    assert digests(out) == digests(reference)
    old = write(corpus, "npz", tmp_path / "old", tokenize_once=False)
    assert old["tokens_tokenized"] > 2 * summary["tokens_tokenized"]  # what it cost before
    assert digests(tmp_path / "old") == digests(reference)
    # Resume after losing half the files: the token file is rebuilt for what is left.
    names = sorted(load_manifest(out)["files"])
    for name in names[::2]:
        (out / name).unlink()
    resumed = write(corpus, "npz", out, resume=True, executor=executor)
    assert resumed["written"] == len(names[::2])
    assert 0 < resumed["tokens_tokenized"] < summary["tokens_tokenized"]
    assert digests(out) == digests(reference)


def test_token_file_widens_for_ids_beyond_int32(tmp_path: Path) -> None:
    from laden.files.write import _Context, _SharedTokens, _tokenize_ahead
    from laden.records import LengthTable

    rows = [
        {"input_ids": [1, 2, 3]},
        {"input_ids": [4, 2**40], "loss_mask": [0, 1]},
        {"input_ids": [7]},
    ]

    class Rows:
        def read_at(self, offsets: np.ndarray) -> list[dict[str, Any]]:
            return [rows[int(o)] for o in offsets]

    context = _Context(
        source=Rows(),
        tokenizer=None,
        writer=None,
        backend=None,
        output=str(tmp_path),
        fingerprint="x",
        tokens=".laden-tokens-test",
    )
    table = LengthTable(length=np.array([3, 2, 1]), offset=np.array([0, 1, 2]))
    count = _tokenize_ahead(context, np.array([0, 1, 2]), table, None, None)
    assert count == 6
    shared = _SharedTokens.open(str(tmp_path), ".laden-tokens-test")
    assert shared.ids.dtype == np.int64
    assert shared.ids.tolist() == [1, 2, 3, 4, 2**40, 7]
    assert shared.offsets.tolist() == [0, 3, 5, 6]
    assert shared.masked.tolist() == [False, True, False]
    assert shared.mask[3:5].tolist() == [False, True]


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 10_000),
    packer=st.sampled_from(["best_fit", "first_fit", None]),
    epochs=st.integers(1, 3),
    max_length=st.sampled_from([32, 64, 200]),
)
def test_tokenize_once_never_changes_the_files(
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    packer: str | None,
    epochs: int,
    max_length: int,
) -> None:
    root = tmp_path_factory.mktemp("prop")
    rng = np.random.default_rng(seed)
    data = root / "data.jsonl"
    with data.open("w") as f:
        for i, size in enumerate(rng.integers(0, 150, int(rng.integers(1, 60)))):
            row: dict[str, Any] = {"text": "x" * int(size) + str(i)}
            if i % 5 == 1:
                row["loss_mask"] = [bool(b) for b in rng.integers(0, 2, len(row["text"]))]
            f.write(json.dumps(row) + "\n")
    kernel = laden.Kernel(autoload=False)
    source = kernel.create("source", {"name": "jsonl", "path": str(data)})
    tokenizer = kernel.create("tokenizer", "bytes")
    inline = kernel.create("executor", {"name": "local", "workers": 0})
    table = build_lengths(source, tokenizer, executor=inline)
    sampler = kernel.create("sampler", {"name": "token_budget", "token_budget": 400})
    pack = (
        kernel.create("packer", {"name": packer, "max_length": max_length, "overflow": "split"})
        if packer
        else None
    )
    plan = BatchPlan.build(table, sampler, pack, epochs=epochs, seed=seed)
    writer = kernel.create("writer", "npz")
    once = write_batches(plan, table, source, tokenizer, writer, root / "once")
    again = write_batches(
        plan, table, source, tokenizer, writer, root / "again", tokenize_once=False
    )
    assert digests(root / "once") == digests(root / "again")
    assert once["tokens_tokenized"] == int(table.length[used_samples(plan)].sum())
    assert once["tokens_tokenized"] <= again["tokens_tokenized"]

"""Batch files: writers, manifest, kill -9 and resume, verification, failures, the reader."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import laden
from laden.digest import content_digest
from laden.files.write import load_manifest, verify_directory, write_batches
from laden.testing import record_hooks, registered, run_cli


def write(corpus: dict[str, Any], name: str, out: Path, **kwargs: Any) -> dict[str, Any]:
    kernel = corpus["kernel"]
    return write_batches(
        corpus["plan"],
        corpus["table"],
        corpus["source"],
        corpus["tokenizer"],
        kernel.create("writer", name),
        out,
        **kwargs,
    )


def write_args(corpus: dict[str, Any]) -> list[str]:
    """``laden write`` of the corpus's plan, data and lengths (output and options to add)."""
    root = corpus["root"]
    return [
        "write",
        str(root / "plan"),
        "--dataset",
        str(corpus["data"]),
        "--lengths",
        str(root / "lengths"),
    ]


def contents(directory: Path) -> dict[str, str]:
    return {n: r["content"] for n, r in load_manifest(directory)["files"].items()}


@pytest.mark.parametrize("name", ["npz", "pt", "h5"])
def test_writers_round_trip_through_plain_readers(
    corpus: dict[str, Any], tmp_path: Path, name: str
) -> None:
    if name == "pt":
        torch = pytest.importorskip("torch")
    if name == "h5":
        h5py = pytest.importorskip("h5py")
    out = tmp_path / name
    summary = write(corpus, name, out)
    plan = corpus["plan"]
    assert summary["written"] == summary["total"] == plan.total_steps
    manifest = load_manifest(out)
    assert manifest["complete"] is True
    assert manifest["fingerprint"] == plan.fingerprint
    assert manifest["writer"]["name"] == name
    first = out / f"e0000-s0000000-r000.{name}"
    # Readable by the plain library, with the collated columns and sample ids.
    if name == "npz":
        with np.load(first, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    elif name == "pt":
        arrays = {
            k: v.numpy() if hasattr(v, "numpy") else np.asarray(v)
            for k, v in torch.load(first, weights_only=True).items()
        }
    else:
        with h5py.File(first, "r") as f:
            arrays = {k: f["batch"][k][()] for k in f["batch"]}
            assert f["batch"].attrs["step"] == 0
            assert f["batch"].attrs["fingerprint"] == plan.fingerprint
    for column in ("input_ids", "labels", "position_ids", "segment_ids"):
        assert arrays[column].ndim == 2
    # A packed batch carries no 2D attention_mask (transformers would attend across
    # segments); its real tokens are segment_ids > 0.
    assert "attention_mask" not in arrays or (arrays["segment_ids"].max(axis=1) <= 1).all()
    assert arrays["cu_seqlens"].dtype == np.int32
    assert np.asarray(arrays["max_seqlen"]).shape == ()
    spec = plan.epochs[0][0]
    packs = spec.indices
    expected = np.concatenate(
        [plan.pack.order[plan.pack.offsets[p] : plan.pack.offsets[p + 1]] for p in packs]
    )
    assert arrays["sample_ids"].tolist() == expected.tolist()
    # The tokens are the texts' bytes (or the given ids), as collated.
    rows = Path(corpus["data"]).read_text().splitlines()
    sample = int(arrays["sample_ids"][0])
    row = json.loads(rows[sample])
    want = row.get("input_ids") or list(row["text"].encode())
    start = int(plan.pack.seg_start[plan.pack.offsets[packs[0]]])
    got = arrays["input_ids"][0][: arrays["cu_seqlens"][1]].tolist()
    assert got == want[start : start + len(got)]
    # Every format gives the same content checksums.
    if name != "npz":
        npz = tmp_path / "npz-ref"
        write(corpus, "npz", npz)
        strip = lambda d: {k.rsplit(".", 1)[0]: v for k, v in d.items()}  # noqa: E731
        assert strip(contents(out)) == strip(contents(npz))
    assert verify_directory(out) == []


def test_npz_files_are_byte_identical_across_runs(corpus: dict[str, Any], tmp_path: Path) -> None:
    write(
        corpus,
        "npz",
        tmp_path / "a",
        executor=corpus["kernel"].create("executor", {"name": "local", "workers": 2}),
    )
    write(corpus, "npz", tmp_path / "b")
    a, b = load_manifest(tmp_path / "a"), load_manifest(tmp_path / "b")
    assert {n: r["blake2b"] for n, r in a["files"].items()} == {
        n: r["blake2b"] for n, r in b["files"].items()
    }
    with zipfile.ZipFile(tmp_path / "a" / "e0001-s0000003-r000.npz") as archive:
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in archive.infolist())


def test_verify_names_altered_and_missing_files(corpus: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(corpus, "npz", out)
    kernel = corpus["kernel"]
    ok = run_cli(kernel, "verify", str(out))
    assert ok.exit_code == 0, ok.output
    victim = out / "e0000-s0000002-r000.npz"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    (out / "e0001-s0000001-r000.npz").unlink()
    bad = run_cli(kernel, "verify", str(out))
    assert bad.exit_code == 1
    assert f"{victim}: checksum mismatch" in bad.output
    assert "e0001-s0000001-r000.npz: missing" in bad.output


class FailsOnStep2:
    """A writer plugin that cannot write step 2 of epoch 0."""

    @laden.hookimpl
    def laden_register_writers(self, registry: laden.Registry) -> None:
        import attrs

        from laden.plugins.writers.npz import NpzWriter

        @attrs.frozen(kw_only=True)
        class Flaky(NpzWriter):
            name = "flaky"

            def write(self, file: Any, arrays: Any, meta: Any) -> None:
                if meta["epoch"] == 0 and meta["step"] == 2:
                    raise ValueError("cannot encode this batch")
                super().write(file, arrays, meta)

        registry.add(Flaky)


def test_a_failing_batch_is_recorded_and_the_run_goes_on(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    kernel = laden.Kernel(autoload=False)
    out = tmp_path / "out"
    with registered(kernel, FailsOnStep2()):
        result = run_cli(
            kernel,
            *write_args(corpus),
            "--writer",
            "flaky",
            "-o",
            str(out),
        )
    assert result.exit_code == 1
    total = corpus["plan"].total_steps
    assert f"{total - 1:,} written, 0 kept from before, 1 failed" in result.output
    manifest = load_manifest(out)
    failed = manifest["files"]["e0000-s0000002-r000.npz"]
    assert failed["status"] == "failed"
    assert "ValueError: cannot encode this batch" in failed["error"]
    assert manifest["complete"] is False
    assert not (out / "e0000-s0000002-r000.npz").exists()
    assert any("failed when written" in p for p in verify_directory(out))
    with registered(kernel, FailsOnStep2()), pytest.raises(laden.DataError, match="failed when"):
        laden.BatchReader(out, kernel=kernel)


def test_kill_9_then_resume_gives_the_uninterrupted_result(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    write(corpus, "npz", reference)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "laden",
        *write_args(corpus),
        "-o",
        str(out),
    ]
    total = corpus["plan"].total_steps
    for stop_after in (3, total // 2):
        process = subprocess.Popen([*command, "--resume"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if len(list(out.glob("*.npz"))) >= stop_after:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert not (out / "manifest.json").exists() or not load_manifest(out)["complete"]
    finished = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "kept from before" in finished.stdout
    assert contents(out) == contents(reference)
    assert not list(out.glob(".*.tmp"))
    assert verify_directory(out) == []


def test_disk_full_stops_cleanly_and_resume_finishes(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    # A file-size cap stands in for a full disk: a write past it fails with EFBIG.
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "from laden.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    args = [
        *write_args(corpus),
        "-o",
        str(out),
        "-B",
        "pad_to_multiple_of=128",
    ]
    # Make one batch bigger than the cap: a dense mask is O(L^2) per row.
    full = subprocess.run(
        [sys.executable, "-c", script, *args, "-B", "dense_mask=block"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert full.returncode == 1, full.stdout + full.stderr
    assert "no room to write e0000-s0000000-r000.npz" in full.stderr
    assert not list(out.glob(".*.tmp"))
    # Without the cap the same run resumes and completes.
    done = subprocess.run(
        [sys.executable, "-m", "laden", *args, "-B", "dense_mask=block", "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert verify_directory(out) == []


def test_clear_errors_and_nothing_lost(corpus: dict[str, Any], tmp_path: Path) -> None:
    kernel = corpus["kernel"]
    out = tmp_path / "out"
    base = write_args(corpus)
    unknown = run_cli(kernel, *base, "--writer", "parquet", "-o", str(out))
    assert unknown.exit_code != 0
    assert "parquet" in unknown.output
    assert "npz" in unknown.output  # the known writers are listed
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = run_cli(kernel, *base, "-o", str(blocker / "sub"))
    assert unwritable.exit_code == 2
    assert "cannot write to" in unwritable.output
    first = run_cli(kernel, *base, "-o", str(out))
    assert first.exit_code == 0, first.output
    before = contents(out)
    again = run_cli(kernel, *base, "-o", str(out))
    assert again.exit_code == 2
    assert "pass --resume" in again.output
    assert contents(out) == before
    other = run_cli(kernel, *base, "-o", str(out), "--resume", "-W", "compress=true")
    assert other.exit_code == 2
    assert "cannot resume: the manifest's writer" in other.output
    # A dataset edited after measuring is refused, naming it.
    with open(corpus["data"], "a") as f:
        f.write(json.dumps({"text": "late"}) + "\n")
    changed = run_cli(kernel, *base, "-o", str(tmp_path / "o2"))
    assert changed.exit_code == 1
    assert f"{corpus['data']}: the dataset no longer matches the length table" in changed.output
    assert contents(out) == before


def test_reader_in_plan_order_with_resume(corpus: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(corpus, "npz", out)
    plan = corpus["plan"]
    reader = laden.BatchReader(out, prefetch=2, memory_cap=1)  # the cap: one batch at a time
    batches = list(reader)
    assert [(b["epoch"], b["step"]) for b in batches] == [(e, s) for e, s, _ in plan.iter_from()]
    assert len(reader) == 0
    inline = [(b["epoch"], b["step"]) for b in laden.BatchReader(out, prefetch=0)]
    assert inline == [(b["epoch"], b["step"]) for b in batches]
    only = laden.BatchReader(out, epoch=1)
    assert len(only) == plan.steps[1]
    state_reader = laden.BatchReader(out)
    it = iter(state_reader)
    head = [next(it)["sample_ids"].tolist() for _ in range(5)]
    state = state_reader.state_dict()
    resumed = laden.BatchReader(out)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    tail = [b["sample_ids"].tolist() for b in resumed]
    assert head + tail == [b["sample_ids"].tolist() for b in batches]
    # Random access through the LRU cache gives the same batch.
    cached = laden.BatchReader(out, cache_files=2)
    assert cached.get(4)["input_ids"].tolist() == batches[4]["input_ids"].tolist()
    assert cached.get(4)["input_ids"] is not None
    assert len(cached._cache) == 1


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_reader_backends(corpus: dict[str, Any], tmp_path: Path, backend: str) -> None:
    pytest.importorskip(backend)
    out = tmp_path / "out"
    write(corpus, "npz", out)
    reference = next(iter(laden.BatchReader(out)))
    batch = next(iter(laden.BatchReader(out, backend={"name": backend})))
    converter = laden.Kernel(autoload=False).create("backend", backend)
    assert np.array_equal(converter.as_numpy(batch["input_ids"]), reference["input_ids"])
    assert converter.as_numpy(batch["cu_seqlens"]).dtype == np.int32
    assert batch["max_seqlen"] == reference["max_seqlen"]


def test_reader_errors_name_the_file(corpus: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(corpus, "npz", out)
    victim = out / "e0000-s0000004-r000.npz"
    victim.write_bytes(b"not a zip")
    with pytest.raises(laden.DataError, match=r"e0000-s0000004-r000\.npz"):
        list(laden.BatchReader(out))
    victim.unlink()
    with pytest.raises(laden.DataError, match="missing batch file"):
        list(laden.BatchReader(out))


def test_reader_announces_batches(corpus: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(corpus, "npz", out)
    kernel = laden.Kernel(autoload=False)
    with record_hooks(kernel) as seen:
        count = sum(1 for _ in laden.BatchReader(out, kernel=kernel, epoch=0))
    assert seen.steps == [(0, s) for s in range(count)]


def test_content_digest_ignores_metadata_and_order() -> None:
    a = {"x": np.arange(3), "y": np.ones((2, 2)), "step": np.asarray(1)}
    b = {"y": np.ones((2, 2)), "x": np.arange(3), "step": np.asarray(2)}
    assert content_digest(a) == content_digest(b)
    assert content_digest(a) != content_digest({**a, "x": np.arange(1, 4)})


@pytest.mark.parametrize("compress", [False, True])
def test_npz_reader_half_matches_np_load(tmp_path: Path, compress: bool) -> None:
    from laden.plugins.writers.npz import NpzWriter

    writer = NpzWriter(compress=compress)
    arrays = {
        "input_ids": np.arange(24, dtype=np.int64).reshape(4, 6),
        "cu_seqlens": np.array([0, 3, 9], dtype=np.int32),
        "mask": np.ones((2, 1, 3, 3), dtype=bool),
        "max_seqlen": np.asarray(6),
    }
    path = tmp_path / "b.npz"
    with path.open("wb") as f:
        writer.write(f, arrays, {"epoch": 1, "step": 2, "rank": 0, "padding": False})
    got = writer.read(str(path))
    with np.load(path, allow_pickle=False) as plain:
        assert sorted(plain.files) == sorted(got)
        for key in plain.files:
            assert got[key].dtype == plain[key].dtype
            assert got[key].shape == plain[key].shape
            assert np.array_equal(got[key], plain[key])
    assert int(got["step"]) == 2
    assert got["input_ids"].flags.aligned
    assert got["input_ids"].flags.writeable
    if not compress:  # members start on 64-byte boundaries: the arrays are views
        assert got["input_ids"].base is not None
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                raw = path.read_bytes()
                name_len, extra_len = np.frombuffer(
                    raw[info.header_offset + 26 : info.header_offset + 30], "<u2"
                )
                assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0

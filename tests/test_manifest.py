"""RunManifest on its own (no batches), the format-version check and the digest module."""

from __future__ import annotations

import errno
import json
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import laden
import laden.io
import laden.records
import laden.serde
from laden import digest as digests
from laden.errors import ConfigError, DataError
from laden.files.manifest import (
    LOCK,
    MANIFEST,
    DiskFullError,
    OutputBusyError,
    RunManifest,
    failure,
    file_record,
    load_manifest,
)
from laden.io import atomic_write_bytes, check_format

KIND = "laden.test_run"
POINT = re.compile(r"^point-\d+\.bin$")


@pytest.fixture(autouse=True)
def _test_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kind of run that is not a batch run: nothing batch-specific is needed."""
    monkeypatch.setitem(laden.io.ARTIFACT_KINDS, KIND, "test run directory")


def run(directory: Path, *, seed: int = 0, flush_seconds: float = 3600.0) -> RunManifest:
    return RunManifest(
        directory,
        kind=KIND,
        version=1,
        identity={"seed": seed, "generator": {"name": "g", "size": (2, 3)}},
        owns=lambda name: POINT.match(name) is not None,
        items="points",
        flush_seconds=flush_seconds,
    )


def write_point(manifest: RunManifest, i: int, value: bytes = b"") -> None:
    """What a driver does per item: write its file atomically, then record it."""
    name = f"point-{i}.bin"
    atomic_write_bytes(manifest.directory / name, value or f"point {i}".encode())
    manifest.add(name, {"index": i, "status": "ok", **file_record(manifest.directory / name)})


def on_disk(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST).read_text())


def finished(directory: Path, n: int = 3) -> RunManifest:
    manifest = run(directory)
    with manifest.locked():
        manifest.open()
        with manifest.guard():
            for i in range(n):
                write_point(manifest, i)
        assert manifest.finish(n)
    return manifest


def test_a_finished_run_records_every_item_with_its_checksums(tmp_path: Path) -> None:
    finished(tmp_path / "out")
    meta = on_disk(tmp_path / "out")
    assert meta["kind"] == KIND
    assert meta["format_version"] == 1
    assert meta["seed"] == 0
    assert meta["generator"] == {"name": "g", "size": [2, 3]}  # stored as plain JSON
    assert meta["complete"] is True
    assert sorted(meta["points"]) == ["point-0.bin", "point-1.bin", "point-2.bin"]
    record = meta["points"]["point-1.bin"]
    data = b"point 1"
    assert record["bytes"] == len(data)
    assert record["crc32"] == zlib.crc32(data)
    assert record["blake2b"] == digests.bytes_digest(data)
    assert not (tmp_path / "out" / LOCK).exists()


def test_resume_refuses_another_identity(tmp_path: Path) -> None:
    finished(tmp_path / "out")
    other = run(tmp_path / "out", seed=1)
    with other.locked(), pytest.raises(ConfigError, match="cannot resume: the manifest's seed"):
        other.open(resume=True)
    assert on_disk(tmp_path / "out")["seed"] == 0  # untouched


def test_a_second_run_without_resume_or_force_is_refused(tmp_path: Path) -> None:
    finished(tmp_path / "out")
    again = run(tmp_path / "out")
    with again.locked(), pytest.raises(ConfigError, match="already holds a test run directory"):
        again.open()
    with again.locked(), pytest.raises(ConfigError, match="pass one"):
        again.open(resume=True, force=True)


def test_a_directory_holding_other_things_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    manifest = run(tmp_path / "out")
    with manifest.locked(), pytest.raises(ConfigError, match="not empty"):
        manifest.open(resume=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_force_beside_a_stranger_removes_nothing(tmp_path: Path) -> None:
    finished(tmp_path / "out")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    manifest = run(tmp_path / "out", seed=7)
    with (
        manifest.locked(),
        pytest.raises(ConfigError, match=r"holds files this run did not write \(notes.txt\)"),
    ):
        manifest.open(force=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    assert on_disk(tmp_path / "out")["seed"] == 0  # the run's own files are kept too


def test_force_clears_the_items_and_the_files_the_run_writes(tmp_path: Path) -> None:
    finished(tmp_path / "out")
    (tmp_path / "out" / "index.json").write_text("{}")
    (tmp_path / "out" / ".point-9.bin.tmp").write_text("torn")
    manifest = run(tmp_path / "out", seed=7)
    manifest.writes = lambda name: name == "index.json"
    with manifest.locked():
        manifest.open(force=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST]
    assert on_disk(tmp_path / "out")["seed"] == 7


def test_resume_keeps_ok_items_and_retries_failed_ones(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run(out)
    with first.locked():
        first.open()
        write_point(first, 0)
        first.add("point-1.bin", {"index": 1, **failure(ValueError("boom"))})
        first.finish(2)
    meta = on_disk(out)
    assert meta["points"]["point-1.bin"] == {
        "index": 1,
        "status": "failed",
        "error": "ValueError: boom",
    }
    assert meta["complete"] is False
    again = run(out)
    with again.locked():
        kept = again.open(resume=True)
        assert list(kept) == ["point-0.bin"]  # the failed one is tried again
        write_point(again, 1)
        assert again.finish(2)
    assert again.added == {"ok": 1, "failed": 0}
    assert on_disk(out)["points"]["point-0.bin"] == meta["points"]["point-0.bin"]


def test_add_refuses_an_item_without_a_status(tmp_path: Path) -> None:
    manifest = run(tmp_path / "out")
    with manifest.locked():
        manifest.open()
        with pytest.raises(ValueError, match="'ok' or 'failed'"):
            manifest.add("point-0.bin", {"index": 0})


def test_items_are_flushed_periodically_not_on_every_add(tmp_path: Path) -> None:
    slow = run(tmp_path / "slow", flush_seconds=3600)
    with slow.locked():
        slow.open()
        write_point(slow, 0)
        assert on_disk(tmp_path / "slow")["points"] == {}  # not yet
        slow.flush()
        assert list(on_disk(tmp_path / "slow")["points"]) == ["point-0.bin"]
    eager = run(tmp_path / "eager", flush_seconds=0)
    with eager.locked():
        eager.open()
        write_point(eager, 0)
        assert list(on_disk(tmp_path / "eager")["points"]) == ["point-0.bin"]


def test_recovery_adopts_renamed_but_unrecorded_files_through_the_callback(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    first = run(out)
    with first.locked():
        first.open()
        write_point(first, 0)
        first.flush()
        # Renamed into place after the last flush, then the process died.
        write_point(first, 1)
        write_point(first, 2)
        write_point(first, 3)
    (out / ".point-4.bin.x1y2.tmp").write_bytes(b"half")  # being written when it died
    seen: list[str] = []

    def adopt(path: Path) -> dict[str, Any] | str:
        seen.append(path.name)
        if path.name == "point-2.bin":
            return "holds point 5, its name says point 2"
        if path.name == "point-3.bin":
            raise ValueError("not a point file")
        return {"index": int(path.read_bytes().split()[1])}

    again = run(out)
    with again.locked():
        kept = again.open(resume=True, adopt=adopt)
    assert seen == ["point-1.bin", "point-2.bin", "point-3.bin"]
    assert sorted(kept) == ["point-0.bin", "point-1.bin"]
    assert kept["point-1.bin"] == {"index": 1, "status": "ok", **file_record(out / "point-1.bin")}
    assert again.damaged == {
        "point-2.bin": "holds point 5, its name says point 2",
        "point-3.bin": "unreadable (ValueError)",
    }
    left = sorted(p.name for p in out.iterdir())
    assert left == [MANIFEST, "point-0.bin", "point-1.bin"]  # temporaries swept too
    assert sorted(on_disk(out)["points"]) == ["point-0.bin", "point-1.bin"]


def test_without_adopt_an_unrecorded_file_is_written_again(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run(out)
    with first.locked():
        first.open()
        write_point(first, 0)
    again = run(out)
    with again.locked():
        assert again.open(resume=True) == {}
    assert again.damaged == {"point-0.bin": "not recorded in the manifest"}
    assert not (out / "point-0.bin").exists()


def test_recovery_rechecks_kept_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    finished(out, n=3)
    (out / "point-0.bin").write_bytes(b"point 9")  # same size, altered
    (out / "point-1.bin").write_bytes(b"short")
    (out / "point-2.bin").unlink()
    again = run(out)
    with again.locked():
        assert again.open(resume=True) == {}
    assert again.damaged == {
        "point-0.bin": "checksum mismatch (the file was altered)",
        "point-1.bin": "5 bytes, the manifest says 7",
        "point-2.bin": "missing",
    }
    custom = run(out)
    calls: list[str] = []
    with custom.locked():
        custom.open(resume=True, check=lambda name, record: calls.append(name))
    assert calls == []  # nothing was kept to check


def work(manifest: RunManifest, n: int, stop: BaseException) -> None:
    """Write ``n`` items, then stop with ``stop``, under the manifest's guard."""
    with manifest.guard():
        for i in range(n):
            write_point(manifest, i)
        raise stop


def test_disk_full_stops_the_run_and_keeps_what_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = run(out, flush_seconds=3600)
    with manifest.locked():
        manifest.open()
        with pytest.raises(DiskFullError, match="no room left in"):
            work(manifest, 2, OSError(errno.ENOSPC, "No space left on device"))
    meta = on_disk(out)
    assert sorted(meta["points"]) == ["point-0.bin", "point-1.bin"]
    assert meta["complete"] is False
    assert isinstance(DiskFullError(errno.ENOSPC, "x"), OSError)


def test_an_interrupt_flushes_and_says_how_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = run(out)
    with manifest.locked():
        manifest.open()
        with pytest.raises(KeyboardInterrupt) as caught:
            work(manifest, 1, KeyboardInterrupt())
    assert "rerun with --resume" in "".join(getattr(caught.value, "__notes__", []))
    assert list(on_disk(out)["points"]) == ["point-0.bin"]


def test_the_lock_refuses_a_second_run_and_names_its_pid(tmp_path: Path) -> None:
    import os

    first, second = run(tmp_path / "out"), run(tmp_path / "out")
    with first.locked():
        assert (tmp_path / "out" / LOCK).read_text().strip() == str(os.getpid())
        busy = rf"another laden write is running .*pid {os.getpid()}"
        with pytest.raises(OutputBusyError, match=busy), second.locked():
            pass
    with second.locked():  # released
        pass
    assert not (tmp_path / "out" / LOCK).exists()


def test_an_unwritable_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    manifest = run(tmp_path / "file" / "out")
    with pytest.raises(ConfigError, match="cannot write to"), manifest.locked():
        pass


def test_load_manifest_checks_kind_and_version(tmp_path: Path) -> None:
    finished(tmp_path / "out")
    path = tmp_path / "out" / MANIFEST
    meta = json.loads(path.read_text())
    assert load_manifest(tmp_path / "out", kind=KIND, items="points")["complete"]
    path.write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(DataError, match="format_version 2 is newer than this laden reads"):
        run(tmp_path / "out").load()
    path.write_text(json.dumps({**meta, "kind": "laden.plan"}))
    with pytest.raises(DataError, match=r"manifest\.json: not a test run directory \(kind"):
        run(tmp_path / "out").load()
    path.write_text(json.dumps({"kind": KIND}))
    with pytest.raises(DataError, match="not a laden run manifest"):
        run(tmp_path / "out").load()


# ---------------------------------------------------------- format versions


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ([], "not a batch plan .its metadata is no JSON object"),
        ({"kind": "laden.lengths", "format_version": 1}, "not a batch plan .kind 'laden.lengths'"),
        ({"kind": "laden.plan"}, "not a batch plan .no format_version"),
        ({"kind": "laden.plan", "format_version": "1"}, "format_version '1'"),
        ({"kind": "laden.plan", "format_version": True}, "format_version True"),
        ({"kind": "laden.plan", "format_version": 0}, "format_version 0 is not one laden wrote"),
        ({"kind": "laden.plan", "format_version": 3}, "format_version 3 is newer .* upgrade laden"),
    ],
)
def test_check_format_refuses(meta: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=message) as caught:
        check_format(meta, kind="laden.plan", version=2, file=tmp_path / "meta.json")
    assert str(caught.value).startswith(f"{tmp_path / 'meta.json'}: ")


def test_check_format_accepts_known_versions_and_old_kindless_artifacts() -> None:
    assert (
        check_format({"kind": "laden.plan", "format_version": 2}, kind="laden.plan", version=2) == 2
    )
    assert check_format({"format_version": 1}, kind="laden.lengths", version=1) == 1
    # A kind that always recorded its kind must say it.
    with pytest.raises(DataError, match="no kind"):
        check_format({"format_version": 1}, kind="laden.replay_buffer", version=1)
    with pytest.raises(KeyError):
        check_format({}, kind="laden.nothing", version=1)


# ------------------------------------------------------------------ digests


def test_one_home_for_every_digest() -> None:
    """The old names are the digest module's functions, not copies."""
    assert laden.serde.digest is digests.digest
    assert laden.serde.canonical_json is digests.canonical_json
    assert laden.records.array_digest is digests.array_digest
    assert laden.io.file_digest is digests.file_digest


def test_file_checksums_agree_with_file_digest_and_crc32(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    path = tmp_path / "f"
    path.write_bytes(data)
    chunks: list[int] = []
    assert digests.file_checksums(path, chunk=4096) == (
        len(data),
        digests.file_digest(path, progress=chunks.append),
        zlib.crc32(data),
    )
    assert sum(chunks) == len(data)
    assert digests.bytes_digest(data) == digests.file_digest(path)


def test_digests_are_stable() -> None:
    """Pinned: plan fingerprints and manifests depend on these bytes."""
    assert digests.digest("a", b"bc") == "f14abc19c330e936bb9c8506d69bac9b"
    assert digests.digest("a", "bc") != digests.digest("ab", "c")
    assert digests.array_digest(np.arange(3, dtype="<i4")) == "8ae59610221a74744f940f4e341fc31b"
    assert digests.canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()
    big = np.arange(3, dtype=">i4")
    assert digests.array_digest(big) == digests.array_digest(big.astype("<i4"))
    assert digests.array_digest(None) != digests.array_digest(np.zeros(0))
    arrays = {"input_ids": np.arange(3, dtype=np.int64), "epoch": np.int64(4)}
    assert digests.content_digest(arrays) == "a3612a0bfd4a7b3a965fd2a399f1c361"
    assert digests.content_digest(arrays) == digests.content_digest({**arrays, "epoch": 5})
    assert digests.content_digest(arrays, skip=()) != digests.content_digest(arrays)

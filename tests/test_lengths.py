"""The jsonl source, length caches and their reuse."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import laden
from laden.lengths import build_lengths, load_lengths, save_lengths


def write_jsonl(path: Path, rows: list[object], *, raw_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    for index, text in (raw_lines or {}).items():
        lines.insert(index, text)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


ROWS = [
    {"id": "a", "text": "hello world"},
    {"id": "b", "input_ids": [1, 2, 3, 4, 5]},
    {"id": "c", "text": "héllo"},
    {"id": "d", "text": "", "loss_mask": []},
    {"id": "e", "text": "x" * 300},
]


def source(kernel: laden.Kernel, path: Path, **settings: object) -> object:
    return kernel.create("source", {"name": "jsonl", "path": str(path), **settings})


def inline(kernel: laden.Kernel) -> object:
    return kernel.create("executor", {"name": "local", "workers": 0})


def test_measures_text_and_ids_with_offsets(kernel: laden.Kernel, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    src = source(kernel, path)
    table = build_lengths(src, kernel.create("tokenizer", "bytes"), executor=inline(kernel))
    assert table.length.tolist() == [11, 5, 6, 0, 300]
    assert table.ids.tolist() == ["a", "b", "c", "d", "e"]
    assert table.key is None
    # Offsets read the rows back at random.
    rows = src.read_at(table.offset[[4, 0, 2]])
    assert [r["id"] for r in rows] == ["e", "a", "c"]
    assert table.meta["tokenizer"] == "bytes"
    assert table.meta["dataset_digest"] == laden.io.file_digest(path)


def test_integer_ids_and_keys(kernel: laden.Kernel, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"id": 7, "text": "a b", "key": 2}, {"id": 9, "text": "c", "key": 0}]
    )
    table = build_lengths(
        source(kernel, path), kernel.create("tokenizer", "whitespace"), executor=inline(kernel)
    )
    assert table.ids.dtype == np.int64
    assert table.ids.tolist() == [7, 9]
    assert table.key.tolist() == [2, 0]
    assert table.length.tolist() == [2, 1]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"id": "z"}', "row has neither 'text' (a string) nor 'input_ids'"),
        ('{"input_ids": [1, "2"]}', "'input_ids' must be a list of integers"),
        ('{"text": "a", "key": -1}', "'key' must be a non-negative integer"),
        ('{"text": "a", "loss_mask": [2]}', "'loss_mask' must be a list of 0 and 1"),
    ],
)
def test_malformed_line_names_file_and_line(
    kernel: laden.Kernel, tmp_path: Path, bad: str, reason: str
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS, raw_lines={3: bad})
    with pytest.raises(laden.DataError) as info:
        build_lengths(
            source(kernel, path), kernel.create("tokenizer", "bytes"), executor=inline(kernel)
        )
    assert str(info.value).startswith(f"{path}:4: {reason}")
    assert info.value.line == 4


def test_skip_counts_bad_lines(kernel: laden.Kernel, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS, raw_lines={1: "{oops", 4: "[]"})
    table = build_lengths(
        source(kernel, path, on_error="skip"),
        kernel.create("tokenizer", "bytes"),
        executor=inline(kernel),
    )
    assert len(table) == len(ROWS)
    assert table.meta["skipped"] == 2
    assert table.meta["skipped_lines"] == [2, 5]
    assert list(source(kernel, path, on_error="skip")) == ROWS


def test_mixed_ids_are_an_error(kernel: laden.Kernel, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "x"}, {"text": "y"}])
    with pytest.raises(laden.DataError, match=r"d.jsonl:2: row has no 'id' while others do"):
        build_lengths(
            source(kernel, path), kernel.create("tokenizer", "bytes"), executor=inline(kernel)
        )


def test_parallel_chunks_equal_a_single_pass(kernel: laden.Kernel, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rows = [{"id": f"s{i}", "text": "w " * int(n)} for i, n in enumerate(rng.integers(0, 50, 3000))]
    path = write_jsonl(tmp_path / "d.jsonl", rows, raw_lines={1500: ""})
    tok = kernel.create("tokenizer", "whitespace")
    single = build_lengths(source(kernel, path), tok, executor=inline(kernel))
    chunked_source = source(kernel, path, chunk_bytes=4096)
    assert len(chunked_source.chunks()) > 10
    parallel = build_lengths(
        chunked_source, tok, executor=kernel.create("executor", {"name": "local", "workers": 2})
    )
    assert parallel.digest() == single.digest()
    assert parallel.meta["blank"] == 1


def test_cache_is_saved_reused_and_invalidated(kernel: laden.Kernel, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "cache"
    tok = kernel.create("tokenizer", "bytes")
    first = build_lengths(source(kernel, path), tok, output=out, executor=inline(kernel))
    assert "reused" not in first.meta
    again = build_lengths(source(kernel, path), tok, output=out, executor=inline(kernel))
    assert again.meta["reused"] is True
    assert again.digest() == first.digest()
    # Another tokenizer or another dataset: measured again.
    other = build_lengths(
        source(kernel, path),
        kernel.create("tokenizer", "whitespace"),
        output=out,
        executor=inline(kernel),
    )
    assert "reused" not in other.meta
    write_jsonl(path, [*ROWS, {"id": "f", "text": "new"}])
    changed = build_lengths(
        source(kernel, path),
        kernel.create("tokenizer", "whitespace"),
        output=out,
        executor=inline(kernel),
    )
    assert "reused" not in changed.meta
    assert len(load_lengths(out)) == len(ROWS) + 1


def test_cache_roundtrip_and_corruption_names_the_file(tmp_path: Path) -> None:
    table = laden.LengthTable.from_lengths(
        [3, 1, 4], ids=np.array(["x", "yé", "z"]), meta={"note": "hi"}
    )
    out = save_lengths(table, tmp_path / "c")
    loaded = load_lengths(out)
    assert loaded.digest() == table.digest()
    assert loaded.ids.tolist() == ["x", "yé", "z"]
    assert loaded.meta["note"] == "hi"
    data = bytearray((out / "length.zst").read_bytes())
    (out / "length.zst").write_bytes(bytes(data[:-3]))
    with pytest.raises(laden.DataError, match=r"length\.zst"):
        load_lengths(out)
    (out / "length.zst").unlink()
    with pytest.raises(laden.DataError, match=r"length\.zst: missing file"):
        load_lengths(out)


def test_flipped_byte_is_caught(tmp_path: Path) -> None:
    out = save_lengths(laden.LengthTable.from_lengths(np.arange(1000)), tmp_path / "c")
    meta = json.loads((out / "meta.json").read_text())
    meta["columns"]["length"]["blake2b"] = "0" * 32
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(laden.DataError, match="checksum mismatch"):
        load_lengths(out)


def test_failed_save_keeps_the_previous_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = save_lengths(laden.LengthTable.from_lengths([1, 2]), tmp_path / "c")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(laden.lengths, "write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        save_lengths(laden.LengthTable.from_lengths([5, 6, 7]), out)
    assert load_lengths(out).length.tolist() == [1, 2]
    assert sorted(os.listdir(tmp_path)) == ["c"]  # no temporary left behind


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 10**6), max_size=50), st.booleans())
def test_cache_roundtrip_property(lengths: list[int], with_key: bool) -> None:
    import tempfile

    key = list(range(len(lengths))) if with_key else None
    table = laden.LengthTable.from_lengths(lengths, key=key)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_lengths(save_lengths(table, Path(tmp) / "c"))
    assert loaded.length.tolist() == lengths
    assert (loaded.key is None) == (not with_key)

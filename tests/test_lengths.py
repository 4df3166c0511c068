"""The jsonl source, length caches and their reuse."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import laden
from laden.lengths import build_lengths, load_lengths, save_lengths
from laden.testing import run_cli


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
        # Token data that would be collated wrongly or overflow later (issue 10).
        (
            '{"input_ids": [1, 2, 3], "loss_mask": [1, 1]}',
            "'loss_mask' has 2 values but 'input_ids' has 3 tokens",
        ),
        ('{"text": "abc", "loss_mask": [1, 0]}', "'loss_mask' has 2 values but the text is 3"),
        ('{"input_ids": [1, -2]}', "'input_ids' holds a negative token id, -2 at position 1"),
        (
            '{"input_ids": [5, 2147483648]}',
            "'input_ids' holds token id 2147483648 at position 1, which does not fit int32",
        ),
        (
            '{"input_ids": [99999999999999999999999]}',
            "'input_ids' holds token id 99999999999999999999999 at position 0, which does not",
        ),
        ('{"input_ids": [1, 2.0]}', "'input_ids' must be a list of integers, got 2.0 (a float)"),
        ('{"input_ids": [1.5]}', "'input_ids' must be a list of integers, got 1.5 (a float) at"),
        ('{"input_ids": [true, 1]}', "'input_ids' must be a list of integers, got true (a bool"),
        ('{"input_ids": [[1, 2]]}', "'input_ids' must be a list of integers, got [1, 2] (a list)"),
        ('{"input_ids": ["7"]}', "'input_ids' must be a list of integers, got \"7\" (a string)"),
        ('{"input_ids": "1 2 3"}', "'input_ids' must be a list of integers, got a string"),
        ('{"input_ids": [1], "loss_mask": [[1]]}', "'loss_mask' must be a list of 0 and 1"),
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


def test_skip_counts_bad_token_data_like_other_malformed_lines(
    kernel: laden.Kernel, tmp_path: Path
) -> None:
    bad = {
        1: '{"input_ids": [1, -1]}',
        3: '{"input_ids": [1, 2], "loss_mask": [1]}',
        5: '{"text": "abcd", "loss_mask": [1]}',
        7: '{"input_ids": [0.5]}',
    }
    path = write_jsonl(tmp_path / "d.jsonl", ROWS, raw_lines=bad)
    table = build_lengths(
        source(kernel, path, on_error="skip"),
        kernel.create("tokenizer", "bytes"),
        executor=inline(kernel),
    )
    assert table.ids.tolist() == ["a", "b", "c", "d", "e"]
    assert table.length.tolist() == [11, 5, 6, 0, 300]
    assert table.meta["skipped"] == 4
    assert table.meta["skipped_lines"] == [2, 4, 6, 8]


def test_text_row_mask_mismatch_in_a_later_chunk_names_its_line(
    kernel: laden.Kernel, tmp_path: Path
) -> None:
    rows: list[object] = [{"text": "w" * 50, "loss_mask": [1] * 50} for _ in range(200)]
    rows[150] = {"text": "w" * 50, "loss_mask": [1] * 49}
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    src = source(kernel, path, chunk_bytes=2048)
    assert len(src.chunks()) > 5
    with pytest.raises(laden.DataError) as info:
        build_lengths(src, kernel.create("tokenizer", "bytes"), executor=inline(kernel))
    assert info.value.line == 151
    assert "'loss_mask' has 49 values but the text is 50 tokens" in str(info.value)


def test_declared_vocab_size_bounds_token_ids(kernel: laden.Kernel, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"input_ids": [0, 99]}, {"input_ids": [100, 3]}])
    tok = kernel.create("tokenizer", "bytes")
    with pytest.raises(laden.DataError) as info:
        build_lengths(source(kernel, path, vocab_size=100), tok, executor=inline(kernel))
    assert str(info.value) == (
        f"{path}:2: 'input_ids' holds token id 100 at position 0, not below vocab_size 100"
    )
    table = build_lengths(source(kernel, path, vocab_size=101), tok, executor=inline(kernel))
    assert table.length.tolist() == [2, 2]
    # Beyond int32 is fine once the vocabulary is declared that large.
    big = write_jsonl(tmp_path / "big.jsonl", [{"input_ids": [2**31 + 5]}])
    assert build_lengths(
        source(kernel, big, vocab_size=2**32), tok, executor=inline(kernel)
    ).length.tolist() == [1]
    with pytest.raises(laden.ConfigError, match=r"source\.vocab_size: must be > 0, got 0"):
        kernel.create(
            "source", {"name": "jsonl", "path": str(path), "vocab_size": 0}, path=("source",)
        )


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(
        st.one_of(
            st.integers(-(2**40), 2**40),
            st.integers(0, 300),
            st.booleans(),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=3),
        ),
        max_size=20,
    ),
    vocab=st.one_of(st.none(), st.integers(1, 2**33)),
)
def test_token_ids_accepted_exactly_when_they_are_in_range_integers(
    ids: list[object], vocab: int | None
) -> None:
    from laden.plugins.sources.jsonl import JsonlSource

    src = JsonlSource(path="unused.jsonl", vocab_size=vocab)
    limit = 2**31 if vocab is None else vocab
    valid = all(type(i) is int and 0 <= i < limit for i in ids)
    raw = json.dumps({"input_ids": ids}).encode()
    if valid:
        assert src.parse(raw, 1)["input_ids"] == ids
    else:
        with pytest.raises(laden.DataError) as info:
            src.parse(raw, 1)
        assert info.value.line == 1
        assert info.value.reason.startswith("'input_ids' ")


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst", ".data"])
def test_compressed_input_says_to_decompress(
    kernel: laden.Kernel, tmp_path: Path, suffix: str
) -> None:
    plain = json.dumps({"text": "hello"}).encode() + b"\n"
    if suffix == ".jsonl.zst":
        import zstandard

        data, fmt, command = zstandard.ZstdCompressor().compress(plain), "zstd", "zstd -d"
    else:  # gzip, also when the name does not say so (found by its magic bytes)
        import gzip

        data, fmt, command = gzip.compress(plain), "gzip", "gunzip -k"
    path = tmp_path / f"d{suffix}"
    path.write_bytes(data)
    with pytest.raises(laden.DataError) as info:
        build_lengths(source(kernel, path), kernel.create("tokenizer", "bytes"))
    message = str(info.value)
    assert message.startswith(f"{path}: {fmt}-compressed input is not supported")
    assert f"{command} {path}" in message
    with pytest.raises(laden.DataError, match="compressed input is not supported"):
        list(source(kernel, path))


def test_plain_file_with_a_compressed_name_is_read(kernel: laden.Kernel, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl.gz", ROWS)
    table = build_lengths(source(kernel, path), kernel.create("tokenizer", "bytes"))
    assert len(table) == len(ROWS)


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


# ------------------------------------------------------------- the command


def cli(kernel: laden.Kernel, *args: str) -> Any:
    return run_cli(kernel, "lengths", "build", *args)


def test_cli_source_options_reach_every_setting(kernel: laden.Kernel, tmp_path: Path) -> None:
    rows = [{"uid": "a", "toks": [1, 2, 3]}, {"uid": "b", "toks": [4, 5]}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "cache"
    args = [str(path), "-o", str(out), "-S", "ids_field=toks", "-S", "id_field=uid", "--json"]
    result = cli(kernel, *args)
    assert result.exit_code == 0, result.output
    table = load_lengths(out)
    assert table.length.tolist() == [3, 2]
    assert table.ids.tolist() == ["a", "b"]
    assert table.meta["source"]["ids_field"] == "toks"
    # A declared vocabulary is checked, and the error names file and line.
    bad = cli(kernel, str(path), "-o", str(tmp_path / "c2"), *args[3:5], "-S", "vocab_size=4")
    assert bad.exit_code == 1
    assert bad.output == (
        f"Error: {path}:2: 'toks' holds token id 5 at position 1, not below vocab_size 4\n"
    )
    assert bad.exception is None or isinstance(bad.exception, SystemExit)


def test_cli_source_option_mistakes_are_one_line_errors(
    kernel: laden.Kernel, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out = str(tmp_path / "cache")
    typo = cli(kernel, str(path), "-o", out, "-S", "txt_field=body")
    assert typo.exit_code == 2
    assert typo.output.startswith(
        "Error: source: unknown key 'txt_field' (did you mean 'text_field'?); known keys: "
    )
    assert "Traceback" not in typo.output
    wrong = cli(kernel, str(path), "-o", out, "-S", "path=other.jsonl")
    assert wrong.exit_code == 2
    assert "'path' is not a source option" in wrong.output
    no_pair = cli(kernel, str(path), "-o", out, "-S", "vocab_size")
    assert no_pair.exit_code == 2
    assert "expected KEY=VALUE, got 'vocab_size'" in no_pair.output


def test_cli_flags_and_source_options_agree(kernel: laden.Kernel, tmp_path: Path) -> None:
    rows = [{"body": "abc"}, {"body": "de"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows, raw_lines={1: "{oops"})
    by_flags = cli(
        kernel, str(path), "-o", str(tmp_path / "a"), "--text-field", "body", "--on-error", "skip"
    )
    assert by_flags.exit_code == 0, by_flags.output
    by_options = cli(
        kernel, str(path), "-o", str(tmp_path / "b"), "-S", "text_field=body", "-S", "on_error=skip"
    )
    assert by_options.exit_code == 0, by_options.output
    a, b = load_lengths(tmp_path / "a"), load_lengths(tmp_path / "b")
    assert a.length.tolist() == b.length.tolist() == [3, 2]
    assert a.meta["source"] == b.meta["source"]
    assert a.meta["skipped"] == 1


def test_cli_tokenizer_without_its_required_setting_says_which_flag(
    kernel: laden.Kernel, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    result = cli(kernel, str(path), "-o", str(tmp_path / "c"), "--tokenizer", "hf")
    if "not installed" in result.output:
        pytest.skip("the hf extra is not installed")
    assert result.exit_code == 2
    assert result.output == "Error: tokenizer: missing required key 'path' (pass -T path=...)\n"


def test_cli_compressed_dataset_is_a_one_line_error(kernel: laden.Kernel, tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "x"}\n'))
    result = cli(kernel, str(path), "-o", str(tmp_path / "c"))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {path}: gzip-compressed input is not supported")
    assert result.output.count("\n") == 1
    assert not (tmp_path / "c").exists()

"""The conformance checks of laden.testing, run on every builtin, and shown to catch breakage."""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import attrs
import numpy as np
import pytest

from laden.kinds import IndexedSource, Source
from laden.plugins.executors.local import LocalExecutor
from laden.plugins.sources.jsonl import JsonlSource
from laden.plugins.sources.mock import MockSource
from laden.plugins.tokenizers.bytes import BytesTokenizer
from laden.plugins.tokenizers.whitespace import WhitespaceTokenizer
from laden.plugins.writers.npz import NpzWriter
from laden.seeding import rng_for
from laden.testing import (
    check_executor,
    check_generator,
    check_source,
    check_tokenizer,
    check_writer,
)

ROWS: list[dict[str, Any]] = [
    {"id": "a", "text": "hello world", "key": 1},
    {"id": "b", "input_ids": [5, 6, 7], "loss_mask": [0, 1, 1], "key": 0},
    {"id": "c", "text": "naïve café 🙂", "key": 2},
    {"id": "d", "text": "", "key": 1},
    {"id": "e", "input_ids": [], "key": 3},
]


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]], blank_every: int = 0) -> Path:
    lines = []
    for i, row in enumerate(rows):
        lines.append(json.dumps(row, ensure_ascii=False))
        if blank_every and i % blank_every == blank_every - 1:
            lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- tokenizers


@pytest.mark.parametrize(
    ("cls", "config"),
    [
        (BytesTokenizer, {}),
        (BytesTokenizer, {"errors": "strict"}),
        (WhitespaceTokenizer, {}),
        (WhitespaceTokenizer, {"lowercase": True, "vocab_size": 97}),
    ],
)
def test_builtin_tokenizers_conform(cls: type[Any], config: dict[str, Any]) -> None:
    check_tokenizer(cls, **config, max_examples=40)


def test_hf_tokenizer_conforms(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    from laden.plugins.tokenizers.hf import HFTokenizer

    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["the quick brown fox jumps over the lazy dog", "packing saves padding"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=80, special_tokens=["[UNK]"]))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    check_tokenizer(HFTokenizer, path=str(path), batch_size=3, texts=corpus[:2], max_examples=25)


@attrs.frozen
class Miscounting(BytesTokenizer):
    name: ClassVar[str] = "miscounting"

    def count(self, texts: Any) -> np.ndarray:
        return np.asarray([len(t) for t in texts], dtype=np.int64)  # characters, not bytes


def test_a_count_that_disagrees_with_encode_fails() -> None:
    with pytest.raises(AssertionError, match=r"count\(\) says .* encode\(\) gives"):
        check_tokenizer(Miscounting, max_examples=5)


# -------------------------------------------------------------------- sources


def test_jsonl_is_an_indexed_source(tmp_path: Path) -> None:
    source = JsonlSource(path=str(write_jsonl(tmp_path / "d.jsonl", ROWS)))
    assert isinstance(source, IndexedSource)
    assert not isinstance(MockSource(num_samples=3), IndexedSource)


@pytest.mark.parametrize("chunk_bytes", [1, 40, 16 << 20])
def test_jsonl_conforms(tmp_path: Path, chunk_bytes: int) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS * 7, blank_every=4)
    check_source(JsonlSource, path=str(path), chunk_bytes=chunk_bytes)
    check_source(
        JsonlSource, path=str(path), chunk_bytes=chunk_bytes, tokenizer=WhitespaceTokenizer()
    )


def test_jsonl_conforms_with_its_own_field_names(tmp_path: Path) -> None:
    rows = [
        {"uid": 1, "body": "one two", "tokens": None, "bucket": 4},
        {"uid": 2, "tokens": [1, 2], "mask": [1, 0], "bucket": 5, "input_ids": [9, 9, 9]},
        {"uid": 3, "body": "x", "text": "not this one", "bucket": 6},
    ]
    path = write_jsonl(tmp_path / "renamed.jsonl", rows)
    names = {
        "text_field": "body",
        "ids_field": "tokens",
        "id_field": "uid",
        "key_field": "bucket",
        "loss_mask_field": "mask",
    }
    check_source(JsonlSource, path=str(path), chunk_bytes=30, **names)
    source = JsonlSource(path=str(path), **names)
    samples = list(source)
    assert samples[1] == {"id": 2, "input_ids": [1, 2], "loss_mask": [1, 0], "key": 5}
    assert samples[2] == {"id": 3, "text": "x", "key": 6}
    assert source.field_name("id") == "uid"
    assert source.field_name("reward") == "reward"


def test_jsonl_with_skipped_lines_conforms(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in ROWS] + ["{not json", '{"text": 3}'] + [json.dumps(ROWS[0])]
    path.write_text("\n".join(lines) + "\n")
    check_source(JsonlSource, path=str(path), on_error="skip", chunk_bytes=50)


def test_empty_jsonl_conforms(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    check_source(JsonlSource, path=str(path))


@pytest.mark.parametrize(
    "config",
    [
        {"num_samples": 300, "block_size": 64},
        {"num_samples": 50, "prompt_tokens": 4, "start": 7},
        {"num_samples": None, "seed": 3},  # endless: the first `limit` samples
    ],
)
def test_mock_source_conforms(config: dict[str, Any]) -> None:
    check_source(MockSource, limit=200, **config)


@attrs.frozen(kw_only=True)
class Overlapping(JsonlSource):
    def chunks(self) -> list[tuple[int, int]]:
        return [(max(a - 1, 0), b) for a, b in super().chunks()]


def test_overlapping_chunks_fail(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS * 5)
    with pytest.raises(AssertionError, match="without gap or overlap"):
        check_source(Overlapping, path=str(path), chunk_bytes=40)


@attrs.define
class Drifting:
    name: ClassVar[str] = "drifting"
    calls: int = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.calls += 1
        yield {"input_ids": [self.calls]}


def test_a_source_that_changes_between_iterations_fails() -> None:
    assert isinstance(Drifting(), Source)
    with pytest.raises(AssertionError, match="iterating twice"):
        check_source(Drifting)


# -------------------------------------------------------------------- writers


@pytest.mark.parametrize("compress", [False, True])
def test_npz_writer_conforms(compress: bool) -> None:
    check_writer(NpzWriter, compress=compress)


def test_pt_writer_conforms() -> None:
    pytest.importorskip("torch")
    from laden.plugins.writers.pt import PtWriter

    check_writer(PtWriter)


@pytest.mark.parametrize("compression", ["gzip", "lzf", "none"])
def test_h5_writer_conforms(compression: str) -> None:
    pytest.importorskip("h5py")
    from laden.plugins.writers.h5 import H5Writer

    check_writer(H5Writer, compression=compression, rerun_delay=1.1 if compression == "gzip" else 0)


@attrs.frozen(kw_only=True)
class Stamping(NpzWriter):
    name: ClassVar[str] = "stamping"

    def write(
        self, file: BinaryIO, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None:
        super().write(file, {**arrays, "written_at": np.asarray(time.time_ns())}, meta)

    def read_bytes(self, buffer: np.ndarray, name: str) -> dict[str, np.ndarray]:
        out = super().read_bytes(buffer, name)  # ``read`` comes here too
        out.pop("written_at")
        return out


def test_a_writer_with_a_timestamp_fails() -> None:
    with pytest.raises(AssertionError, match="other bytes"):
        check_writer(Stamping, rerun_delay=0.01)


@attrs.frozen(kw_only=True)
class Pickling(NpzWriter):
    name: ClassVar[str] = "pickling"

    def read(self, path: str) -> dict[str, np.ndarray]:
        with np.load(path, allow_pickle=True) as data:
            pickle.loads(pickle.dumps(1))  # what an allow_pickle load of objects does
            return {k: data[k] for k in data.files}


def test_a_writer_that_unpickles_fails() -> None:
    with pytest.raises(AssertionError, match="called the unpickler"):
        check_writer(Pickling, rerun_delay=0)


# ------------------------------------------------------------------ executors


@pytest.mark.parametrize("workers", [0, 2])
def test_local_executor_conforms(workers: int) -> None:
    check_executor(LocalExecutor, workers=workers)


@attrs.frozen(kw_only=True)
class Eager:
    name: ClassVar[str] = "eager"

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        *,
        total: int | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> Iterator[Any]:
        everything = list(items)  # never returns on an endless input
        for done, item in enumerate(everything, 1):
            yield fn(item)
            if progress is not None:
                progress(done, total)


def test_an_eager_executor_fails() -> None:
    with pytest.raises(AssertionError, match="lazily"):
        check_executor(Eager, ahead=50)


# ----------------------------------------------------------------- generators


@attrs.frozen(kw_only=True)
class GaussianBlob:
    """A tiny generator (no generator plugin ships yet): a noisy Gaussian bump."""

    name: ClassVar[str] = "gaussian_blob"

    size: int = 16

    def generate(self, params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
        rng = rng_for(seed, 0, "gaussian_blob")
        x = np.linspace(-1.0, 1.0, self.size)
        width = float(params.get("width", 0.3))
        signal = np.exp(-(x**2) / (2 * width**2)) + rng.normal(0.0, 0.05, self.size)
        return {"signal": signal.astype(np.float32), "label": np.asarray(int(width * 10))}


def test_a_generator_conforms() -> None:
    check_generator(GaussianBlob, params={"width": 0.2})
    check_generator(GaussianBlob, size=3, seeds=(5, 6))


@attrs.frozen(kw_only=True)
class Seedless(GaussianBlob):
    def generate(self, params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
        return super().generate(params, 0)


def test_a_generator_that_ignores_the_seed_fails() -> None:
    with pytest.raises(AssertionError, match="is the seed used"):
        check_generator(Seedless)


def test_checks_are_exported() -> None:
    import laden.testing

    for kind in laden.KINDS:
        if kind == "backend":
            continue  # check_backend checks a CollatingBackend
        assert hasattr(laden.testing, f"check_{kind}"), kind

"""The ``hf`` tokenizer on a real BPE trained in-process (no download)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import laden
from laden.lengths import build_lengths

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "packing sequences saves padding tokens",
    "token budget batching with length buckets",
] * 50


def test_listed_with_its_extra(kernel: laden.Kernel) -> None:
    entry = kernel.registry("tokenizer").entry("hf")
    assert entry.extra == "hf"
    assert entry.available == (importlib.util.find_spec("tokenizers") is not None)
    if not entry.available:
        with pytest.raises(laden.MissingDependencyError, match=r'pip install "laden\[hf\]"'):
            kernel.create("tokenizer", {"name": "hf", "path": "tokenizer.json"})


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=["[UNK]"]))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_counts_match_encode(kernel: laden.Kernel, tokenizer_file: Path) -> None:
    tok = kernel.create("tokenizer", {"name": "hf", "path": str(tokenizer_file), "batch_size": 2})
    texts = ["the quick brown fox", "", "packing sequences saves padding tokens", "zzz qqq"]
    counts = tok.count(texts)
    assert counts.tolist() == [len(tok.encode(t)) for t in texts]
    assert counts[1] == 0
    assert counts[0] < len("the quick brown fox")  # merges happened
    assert tok.vocab_size <= 120


def test_fingerprint_follows_the_vocabulary_file(
    kernel: laden.Kernel, tokenizer_file: Path, tmp_path: Path
) -> None:
    tok = kernel.create("tokenizer", {"name": "hf", "path": str(tokenizer_file)})
    before = tok.fingerprint()
    copy = tmp_path / "copy.json"
    copy.write_bytes(tokenizer_file.read_bytes())
    assert kernel.create("tokenizer", {"name": "hf", "path": str(copy)}).fingerprint() == before
    data = json.loads(tokenizer_file.read_text())
    data["model"]["vocab"]["zzzz"] = len(data["model"]["vocab"])
    tokenizer_file.write_text(json.dumps(data))
    assert tok.fingerprint() != before
    assert (
        kernel.create(
            "tokenizer", {"name": "hf", "path": str(tokenizer_file), "add_special_tokens": True}
        ).fingerprint()
        != before
    )


def test_builds_a_length_table_in_workers(
    kernel: laden.Kernel, tokenizer_file: Path, tmp_path: Path
) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    tok = kernel.create("tokenizer", {"name": "hf", "path": str(tokenizer_file)})
    src = kernel.create("source", {"name": "jsonl", "path": str(data), "chunk_bytes": 1024})
    table = build_lengths(
        src, tok, executor=kernel.create("executor", {"name": "local", "workers": 2})
    )
    assert table.length.tolist() == tok.count(CORPUS).tolist()


def test_missing_file_is_a_config_error(kernel: laden.Kernel, tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    tok = kernel.create("tokenizer", {"name": "hf", "path": str(tmp_path / "none.json")})
    with pytest.raises(laden.ConfigError, match="cannot read tokenizer file"):
        tok.count(["x"])

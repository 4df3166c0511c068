"""The builtin seeds: tokenizers, the local executor, the numpy backend."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import laden
from laden.progress import Progress


def test_bytes_tokenizer_counts_utf8_bytes(kernel: laden.Kernel) -> None:
    tok = kernel.create("tokenizer", "bytes")
    assert tok.count(["", "abc", "é", "日本", "\U0001f600"]).tolist() == [0, 3, 2, 6, 4]
    assert tok.encode("é").tolist() == [0xC3, 0xA9]
    assert tok.count(["x"]).dtype == np.int64


@given(st.lists(st.text(), max_size=20))
def test_bytes_count_matches_encode(texts: list[str]) -> None:
    tok = laden.Kernel(autoload=False).create("tokenizer", "bytes")
    assert tok.count(texts).tolist() == [len(tok.encode(t)) for t in texts]


def test_whitespace_tokenizer(kernel: laden.Kernel) -> None:
    tok = kernel.create("tokenizer", {"name": "whitespace", "vocab_size": 1000})
    assert tok.count(["", "a b  c\n", "  one\ttwo "]).tolist() == [0, 3, 2]
    ids = tok.encode("the cat the")
    assert ids[0] == ids[2] != ids[1]
    assert ids.max() < 1000
    lower = kernel.create("tokenizer", {"name": "whitespace", "lowercase": True})
    assert lower.encode("The")[0] == lower.encode("the")[0]
    assert tok.encode("The")[0] != tok.encode("the")[0]


def test_tokenizer_fingerprints_are_stable_and_config_sensitive(kernel: laden.Kernel) -> None:
    a = kernel.create("tokenizer", "whitespace").fingerprint()
    assert a == kernel.create("tokenizer", {"name": "whitespace"}).fingerprint()
    assert a != kernel.create("tokenizer", {"name": "whitespace", "lowercase": True}).fingerprint()
    assert a != kernel.create("tokenizer", "bytes").fingerprint()
    # Pinned: a fingerprint must not change between processes or versions.
    assert kernel.create("tokenizer", "bytes").fingerprint() == "d3128fe3be6221c080daa4b03ca5c094"
    assert a == "1648d712928045b819b8ce0f002d8e56"


def _square(x: int) -> int:
    return x * x


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three is bad")
    return x


@pytest.mark.parametrize("workers", [0, 2])
def test_local_executor_maps_in_order_with_progress(kernel: laden.Kernel, workers: int) -> None:
    executor = kernel.create("executor", {"name": "local", "workers": workers})
    seen: list[tuple[int, int | None]] = []
    out = list(executor.map(_square, range(10), progress=lambda d, t: seen.append((d, t))))
    assert out == [x * x for x in range(10)]
    assert seen == [(d, 10) for d in range(1, 11)]


def test_local_executor_consumes_lazily(kernel: laden.Kernel) -> None:
    executor = kernel.create("executor", {"name": "local", "workers": 1, "prefetch": 2})
    pulled = []

    def items():  # type: ignore[no-untyped-def]
        for i in range(1000):
            pulled.append(i)
            yield i

    results = executor.map(_square, items())
    assert next(results) == 0
    assert len(pulled) <= 3
    results.close()


def test_local_executor_raises_the_worker_error(kernel: laden.Kernel) -> None:
    executor = kernel.create("executor", {"name": "local", "workers": 2})
    with pytest.raises(ValueError, match="three is bad"):
        list(executor.map(_fail_on_three, range(8)))


def test_local_executor_defaults_to_cpu_count(kernel: laden.Kernel) -> None:
    assert kernel.create("executor", "local").effective_workers == (os.cpu_count() or 1)
    with pytest.raises(laden.ConfigError, match=r"executor\.start_method: must be one of"):
        kernel.create("executor", {"name": "local", "start_method": "thread"})


def test_numpy_backend_dtypes(kernel: laden.Kernel) -> None:
    backend = kernel.create("backend", "numpy")
    batch = {
        "input_ids": np.array([[1, 2], [3, 4]], dtype=np.int32),
        "attention_mask": np.array([[True, False], [True, True]]),
        "cu_seqlens": np.array([0, 2, 4], dtype=np.int64),
        "weights": np.array([0.5, 1.0], dtype=np.float32),
        "sliced": np.arange(8, dtype=np.int64)[::2],
    }
    out = backend.convert(batch)
    assert out["input_ids"].dtype == np.int32  # int_dtype "auto": int32 holds every vocabulary
    assert out["attention_mask"].dtype == np.bool_
    assert out["cu_seqlens"].dtype == np.int32
    assert out["weights"].dtype == np.float32
    assert out["sliced"].flags.c_contiguous
    assert out["sliced"].tolist() == [0, 2, 4, 6]
    wide = kernel.create("backend", {"name": "numpy", "int_dtype": "int64"}).convert(batch)
    assert wide["input_ids"].dtype == np.int64


class _FakeTTY:
    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


class _Pipe(_FakeTTY):
    def isatty(self) -> bool:
        return False


def test_progress_draws_on_a_tty_only() -> None:
    tty = _FakeTTY()
    with Progress(4, "work", stream=tty) as bar:
        for _ in range(4):
            bar.update()
    assert "work [" in tty.text
    assert "4/4" in tty.text
    pipe = _Pipe()
    with Progress(4, "work", stream=pipe) as bar:
        bar.update(4)
    assert pipe.text == ""

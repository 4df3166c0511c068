"""Collation: segment metadata against a slow reference, backends, and no cross-contamination."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import laden
from laden.collate import IGNORE_INDEX, BatchLayout, Ragged, collate, dense_segment_mask
from laden.plugins.backends.numpy import NumpyBackend
from laden.plugins.packers.best_fit import BestFitPacker
from laden.plugins.packers.sequential import SequentialPacker
from laden.testing import check_backend


def reference_collate(
    layout: BatchLayout,
    tokens: list[np.ndarray],
    masks: list[np.ndarray] | None,
    *,
    shift_labels: bool,
    width: int,
    pad_id: int = 0,
) -> dict[str, Any]:
    """One segment and one token at a time: the obvious version."""
    rows = layout.num_rows
    out = {
        "input_ids": np.full((rows, width), pad_id),
        "attention_mask": np.zeros((rows, width), dtype=int),
        "labels": np.full((rows, width), IGNORE_INDEX),
        "position_ids": np.zeros((rows, width), dtype=int),
        "segment_ids": np.zeros((rows, width), dtype=int),
    }
    cu, samples, fill, number = [0], [], [0] * rows, [0] * rows
    for sample, start, length, row in zip(
        layout.sample, layout.start, layout.length, layout.row, strict=True
    ):
        if length == 0:
            continue
        number[row] += 1
        piece = tokens[sample][start : start + length]
        keep = np.ones(length, bool) if masks is None else masks[sample][start : start + length]
        for t in range(length):
            col = fill[row] + t
            out["input_ids"][row, col] = piece[t]
            out["attention_mask"][row, col] = 1
            out["position_ids"][row, col] = t
            out["segment_ids"][row, col] = number[row]
            if shift_labels and t + 1 < length and keep[t + 1]:
                out["labels"][row, col] = piece[t + 1]
            if not shift_labels and t > 0 and keep[t]:
                out["labels"][row, col] = piece[t]
        fill[row] += length
        cu.append(cu[-1] + length)
        samples.append(sample)
    out["cu_seqlens"] = np.asarray(cu)
    out["sample_ids"] = np.asarray(samples, dtype=int)
    out["max_seqlen"] = int(np.diff(cu).max(initial=0))
    return out


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 30), min_size=1, max_size=15),
    packer=st.sampled_from(["padded", "best_fit", "sequential"]),
    shift_labels=st.booleans(),
    masked=st.booleans(),
    multiple=st.sampled_from([None, 1, 8]),
    extra=st.integers(0, 7),
)
def test_collate_matches_the_per_token_reference(
    lengths: list[int],
    packer: str,
    shift_labels: bool,
    masked: bool,
    multiple: int | None,
    extra: int,
) -> None:
    rng = np.random.default_rng(len(lengths))
    tokens = [rng.integers(1, 50_000, n) for n in lengths]
    masks = [rng.random(n) < 0.6 for n in lengths] if masked else None
    table = laden.LengthTable.from_lengths(np.asarray(lengths))
    row_length = max(max(lengths), 1) + extra
    if packer == "padded":
        layout = BatchLayout.padded(np.arange(len(lengths))[::-1], table.length)
    else:
        cls = BestFitPacker if packer == "best_fit" else SequentialPacker
        plan = cls(max_length=row_length, overflow="split").pack(table)
        layout = BatchLayout.packed(plan, np.arange(len(plan)))
    got = collate(
        layout,
        Ragged.from_sequences(tokens),
        loss_mask=Ragged.from_sequences(masks, dtype=bool) if masks is not None else None,
        shift_labels=shift_labels,
        pad_to_multiple_of=multiple,
        pad_id=7,
    )
    width = layout.row_length if not multiple else -(-layout.row_length // multiple) * multiple
    want = reference_collate(
        layout, tokens, masks, shift_labels=shift_labels, width=width, pad_id=7
    )
    for key, value in want.items():
        assert np.array_equal(got[key], value), key
    assert got["cu_seqlens"].dtype == np.int32
    assert isinstance(got["max_seqlen"], int)
    # The flash-attention varlen layout indexes the unpadded tokens.
    flat = got["input_ids"][got["attention_mask"] == 1]
    assert flat.size == got["cu_seqlens"][-1]


def test_samples_as_mappings_carry_their_loss_masks() -> None:
    samples = {
        10: {"input_ids": [5, 6, 7, 8], "loss_mask": [0, 0, 1, 1]},
        11: {"input_ids": [9, 9]},
    }
    layout = BatchLayout.padded(np.array([10, 11]), np.array([0] * 10 + [4, 2]))
    out = collate(layout, samples)
    assert out["labels"].tolist() == [[-100, -100, 7, 8], [-100, 9, -100, -100]]
    as_arrays = collate(layout, {10: np.array([5, 6, 7, 8]), 11: np.array([9, 9])})
    assert as_arrays["labels"].tolist() == [[-100, 6, 7, 8], [-100, 9, -100, -100]]


def test_the_family_modules_and_the_public_path_name_the_same_objects() -> None:
    import laden.collate
    from laden.collate import backend, layout, tokens
    from laden.records import Ragged as RecordsRagged

    assert laden.collate.Ragged is RecordsRagged
    assert laden.collate.BatchLayout is layout.BatchLayout
    assert laden.collate.collate is tokens.collate
    assert laden.collate.CollatingBackend is backend.CollatingBackend


def test_a_layout_that_does_not_match_the_data_is_named() -> None:
    layout = BatchLayout.padded(np.array([0]), np.array([5]))
    with pytest.raises(ValueError, match="sample 0 has 3 tokens but the layout reads 5"):
        collate(layout, Ragged.from_sequences([[1, 2, 3]]))
    with pytest.raises(ValueError, match="more than row_length=4"):
        BatchLayout(
            sample=np.array([0, 1]),
            start=np.zeros(2),
            length=np.array([3, 2]),
            row=np.zeros(2),
            num_rows=1,
            row_length=4,
        )


def test_dense_mask_is_block_diagonal_and_never_empty() -> None:
    segments = np.array([[1, 1, 2, 2, 2, 0]])
    block = dense_segment_mask(segments)[0, 0]
    causal = dense_segment_mask(segments, causal=True)[0, 0]
    assert block.shape == (6, 6)
    assert block[0].tolist() == [True, True, False, False, False, False]
    assert block[3].tolist() == [False, False, True, True, True, False]
    assert causal[3].tolist() == [False, False, True, True, False, False]
    assert block[5].tolist() == [False] * 5 + [True]  # padding sees itself only
    assert block.any(axis=1).all()
    assert causal.any(axis=1).all()


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"int_dtype": "int32", "dense_mask": "causal"},
        {"int_dtype": "int64", "vocab_size": 50257},
        {"pad_to_multiple_of": 8, "shift_labels": True, "pad_id": 3, "dense_mask": "block"},
    ],
)
@pytest.mark.parametrize("name", ["numpy", "torch", "mlx"])
def test_backends_conform_to_numpy(kernel: laden.Kernel, name: str, config: dict[str, Any]) -> None:
    if name != "numpy":
        pytest.importorskip(name, reason=f"the {name} extra is not installed")
    cls = kernel.registry("backend").get(name)
    check_backend(cls, **config, max_examples=25)


def test_torch_backend_gives_cpu_tensors_without_copies() -> None:
    torch = pytest.importorskip("torch")
    from laden.plugins.backends.torch import TorchBackend

    tokens = Ragged.from_sequences([[1, 2, 3], [4, 5]])
    out = TorchBackend(dense_mask="causal").collate(
        BatchLayout.padded(np.array([0, 1]), tokens.lengths), tokens
    )
    assert out["input_ids"].dtype == torch.int32  # int_dtype auto: narrow token columns
    assert out["labels"].dtype == torch.int64  # what PyTorch's losses take
    assert out["input_ids"].device.type == "cpu"
    assert out["cu_seqlens"].dtype == torch.int32
    assert out["attn_mask"].dtype == torch.bool
    assert out["attn_mask"].shape == (2, 1, 3, 3)


def test_torch_backend_refuses_cuda_without_a_gpu() -> None:
    torch = pytest.importorskip("torch")
    from laden.plugins.backends.torch import TorchBackend

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    backend = TorchBackend(device="cuda")
    tokens = Ragged.from_sequences([[1, 2]])
    with pytest.raises(laden.ConfigError, match=r"device: backend\.device is 'cuda' but"):
        backend.collate(BatchLayout.padded(np.array([0]), tokens.lengths), tokens)
    with pytest.raises(laden.ConfigError, match="device: must be 'cpu', 'cuda'"):
        TorchBackend(device="gpu0")


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_torch_backend_on_cuda_pins_and_copies_asynchronously() -> None:
    import torch

    from laden.plugins.backends.torch import TorchBackend

    check_backend(TorchBackend, device="cuda", max_examples=10)
    tokens = Ragged.from_sequences([[1, 2, 3], [4, 5]])
    out = TorchBackend(device="cuda").collate(
        BatchLayout.padded(np.array([0, 1]), tokens.lengths), tokens
    )
    torch.cuda.synchronize()
    assert out["input_ids"].is_cuda
    assert out["cu_seqlens"].dtype == torch.int32
    assert out["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]


def test_numpy_backend_through_the_kernel(kernel: laden.Kernel) -> None:
    backend = kernel.create("backend", {"name": "numpy", "pad_to_multiple_of": 4})
    assert isinstance(backend, NumpyBackend)
    tokens = Ragged.from_sequences([[1, 2, 3, 4, 5]])
    out = backend.collate(BatchLayout.padded(np.array([0]), tokens.lengths), tokens)
    assert out["input_ids"].shape == (1, 8)
    with pytest.raises(laden.ConfigError, match="pad_to_multiple_of"):
        kernel.create("backend", {"name": "numpy", "pad_to_multiple_of": 0})


def test_source_samples_read_only_the_batch(kernel: laden.Kernel, tmp_path: Any) -> None:
    from laden.collate.samples import SourceSamples
    from laden.lengths import build_lengths

    data = tmp_path / "data.jsonl"
    data.write_text(
        '{"text": "a b c"}\n'
        '{"input_ids": [7, 8, 9, 10], "loss_mask": [0, 0, 1, 1]}\n'
        '{"text": "d e"}\n'
    )
    source = kernel.create("source", {"name": "jsonl", "path": str(data)})
    tokenizer = kernel.create("tokenizer", "whitespace")
    table = build_lengths(
        source, tokenizer, executor=kernel.create("executor", {"name": "local", "workers": 0})
    )
    samples = SourceSamples(source=source, tokenizer=tokenizer, table=table)
    assert len(samples) == 3
    assert samples[1]["input_ids"].tolist() == [7, 8, 9, 10]
    assert samples[2]["input_ids"].tolist() == tokenizer.encode("d e").tolist()
    out = kernel.create("backend", "numpy").collate(
        BatchLayout.padded(np.array([1, 2]), table.length), samples
    )
    assert out["labels"][0].tolist() == [-100, -100, 9, 10]
    assert out["input_ids"][1, :2].tolist() == tokenizer.encode("d e").tolist()
    with pytest.raises(IndexError, match="sample 3 out of range"):
        samples.fetch([3])
    with pytest.raises(ValueError, match="no offset column"):
        SourceSamples(source=source, tokenizer=tokenizer, table=laden.LengthTable.from_lengths([1]))


# ------------------------------------------------------------ token dtypes

TOKEN_COLUMNS = ("input_ids", "labels", "position_ids", "segment_ids", "attention_mask")


def _batch(backend: Any, values: list[list[int]]) -> dict[str, Any]:
    tokens = Ragged.from_sequences(values)
    return dict(backend.collate(BatchLayout.padded(np.arange(len(values)), tokens.lengths), tokens))


def test_token_columns_default_to_int32_and_widen_on_request(kernel: laden.Kernel) -> None:
    narrow = _batch(kernel.create("backend", "numpy"), [[1, 2, 3], [50_000, 5]])
    for key in TOKEN_COLUMNS:
        assert narrow[key].dtype == np.int32, key
    assert narrow["cu_seqlens"].dtype == np.int32
    assert narrow["sample_ids"].dtype == np.int64
    assert narrow["input_ids"].tolist() == [[1, 2, 3], [50_000, 5, 0]]
    wide = _batch(kernel.create("backend", {"name": "numpy", "int_dtype": "int64"}), [[1, 2]])
    for key in TOKEN_COLUMNS:
        assert wide[key].dtype == np.int64, key
    assert wide["cu_seqlens"].dtype == np.int32


def test_auto_follows_the_vocabulary_and_the_special_ids(kernel: laden.Kernel) -> None:
    def dtype_of(**settings: Any) -> np.dtype:
        backend = kernel.create("backend", {"name": "numpy", **settings})
        return backend.token_dtype

    assert dtype_of() == np.int32
    assert dtype_of(vocab_size=256) == np.int32
    assert dtype_of(vocab_size=2**31) == np.int32  # ids 0 .. 2**31 - 1
    assert dtype_of(vocab_size=2**31 + 1) == np.int64
    assert dtype_of(pad_id=2**40) == np.int64
    assert dtype_of(vocab_size=2**40, int_dtype="int32") == np.int32  # asked for explicitly
    big = _batch(kernel.create("backend", {"name": "numpy", "vocab_size": 2**33}), [[2**32 + 7]])
    assert big["input_ids"].dtype == np.int64
    assert big["input_ids"].tolist() == [[2**32 + 7]]


@pytest.mark.parametrize("int_dtype", ["auto", "int32"])
def test_an_id_that_does_not_fit_is_an_error_not_a_wrap(
    kernel: laden.Kernel, int_dtype: str
) -> None:
    backend = kernel.create("backend", {"name": "numpy", "int_dtype": int_dtype})
    with pytest.raises(laden.DataError) as info:
        _batch(backend, [[1, 2**31], [3]])
    assert str(info.value) == (
        "'input_ids' holds 2147483648, which does not fit int32; set the backend's "
        "int_dtype to 'int64' (or its vocab_size to the vocabulary's size)"
    )
    ok = _batch(kernel.create("backend", {"name": "numpy", "int_dtype": "int64"}), [[1, 2**31]])
    assert ok["input_ids"].tolist() == [[1, 2**31]]


def test_convert_narrows_stored_int64_columns_only_when_they_fit(kernel: laden.Kernel) -> None:
    backend = kernel.create("backend", "numpy")
    fits = backend.convert({"input_ids": np.array([[1, 2]], dtype=np.int64), "max_seqlen": 2})
    assert fits["input_ids"].dtype == np.int32
    assert fits["max_seqlen"] == 2
    with pytest.raises(laden.DataError, match="'input_ids' holds -2147483649, which does not fit"):
        backend.convert({"input_ids": np.array([[-(2**31) - 1]], dtype=np.int64)})


def test_special_ids_must_fit_an_explicit_int32(kernel: laden.Kernel) -> None:
    with pytest.raises(
        laden.ConfigError,
        match=r"backend\.pad_id: 4294967296 does not fit int_dtype 'int32'; use int_dtype 'int64'",
    ):
        kernel.create("backend", {"name": "numpy", "int_dtype": "int32", "pad_id": 2**32})
    with pytest.raises(laden.ConfigError, match=r"backend\.int_dtype: must be one of"):
        kernel.create("backend", {"name": "numpy", "int_dtype": "int16"})


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=8), min_size=1, max_size=5
    ),
    int_dtype=st.sampled_from(["auto", "int32", "int64"]),
)
def test_every_int_dtype_gives_the_same_values(values: list[list[int]], int_dtype: str) -> None:
    got = _batch(NumpyBackend(int_dtype=int_dtype), values)
    want = _batch(NumpyBackend(int_dtype="int64"), values)
    for key, expected in want.items():
        if isinstance(expected, int):
            assert got[key] == expected
        else:
            assert np.array_equal(got[key], expected), key


def test_torch_takes_narrow_ids_in_embeddings_and_int64_labels_in_losses() -> None:
    torch = pytest.importorskip("torch")
    from laden.plugins.backends.torch import TorchBackend

    batch = _batch(TorchBackend(), [[1, 2, 3, 4], [5, 6]])
    assert batch["input_ids"].dtype == torch.int32
    assert batch["position_ids"].dtype == torch.int32
    assert batch["labels"].dtype == torch.int64
    embed = torch.nn.Embedding(8, 4)
    logits = torch.nn.Linear(4, 8)(embed(batch["input_ids"]) + embed(batch["position_ids"]))
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 8), batch["labels"].reshape(-1))
    assert torch.isfinite(loss)
    forced = _batch(TorchBackend(int_dtype="int32"), [[1, 2]])
    # Labels handed to torch stay int64 even when int32 is asked for: int32 targets break
    # cross_entropy and the Hugging Face loss (issue 16, trap c).
    assert forced["input_ids"].dtype == torch.int32
    assert forced["labels"].dtype == torch.int64


def test_written_batch_files_hold_int32_token_columns(kernel: laden.Kernel, tmp_path: Any) -> None:
    import json

    from laden.files.write import write_batches
    from laden.lengths import build_lengths
    from laden.plan import BatchPlan

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": "ab" * (i + 1)}) + "\n" for i in range(20)))
    source = kernel.create("source", {"name": "jsonl", "path": str(data)})
    tokenizer = kernel.create("tokenizer", "bytes")
    inline = kernel.create("executor", {"name": "local", "workers": 0})
    table = build_lengths(source, tokenizer, executor=inline)
    sampler = kernel.create("sampler", {"name": "token_budget", "token_budget": 64})
    plan = BatchPlan.build(table, sampler, seed=0)
    write_batches(plan, table, source, tokenizer, kernel.create("writer", "npz"), tmp_path / "out")
    first = np.load(sorted((tmp_path / "out").glob("*.npz"))[0])
    for key in TOKEN_COLUMNS:
        assert first[key].dtype == np.int32, key
    assert first["cu_seqlens"].dtype == np.int32

"""HF datasets in and out: ``laden.hf.pack_dataset``, the ``hf_dataset`` source, LadenTrainer."""

from __future__ import annotations

import importlib.util
import itertools
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

datasets = pytest.importorskip("datasets", reason="needs the datasets extra")
pa = pytest.importorskip("pyarrow", reason="needs the datasets extra")

from laden.errors import DataError  # noqa: E402
from laden.hf import ArrowSamples, arrow_lengths, pack_dataset, pack_table  # noqa: E402
from laden.plugins.sources.hf_dataset import HFDatasetSource  # noqa: E402

HAS_TRL = importlib.util.find_spec("trl") is not None
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def make_dataset(lengths: list[int], *, seed: int = 0, mask: bool = False) -> object:
    """Rows of distinct tokens: row ``i`` holds ``i * 10_000 + 0, 1, ...`` (traceable)."""
    rows = [[i * 10_000 + t for t in range(n)] for i, n in enumerate(lengths)]
    data = {"input_ids": pa.array(rows, type=pa.list_(pa.int64()))}
    if mask:
        rng = np.random.default_rng(seed)
        masks = [rng.integers(0, 2, n).tolist() for n in lengths]
        data["attention_mask"] = pa.array(masks, type=pa.list_(pa.int8()))
    return datasets.Dataset(pa.table(data))


def check_packed(packed: object, lengths: list[int], max_length: int) -> None:
    """No token lost or repeated, rows within max_length, segments contiguous runs of one sample."""
    ids = packed["input_ids"]
    seqs = packed["seq_lengths"]
    positions = packed["position_ids"]
    tokens = [t for row in ids for t in row]
    want = sorted(i * 10_000 + t for i, n in enumerate(lengths) for t in range(n))
    assert sorted(tokens) == want
    for row, seq, pos in zip(ids, seqs, positions, strict=True):
        assert 0 < len(row) <= max_length
        assert sum(seq) == len(row)
        assert all(s > 0 for s in seq)
        assert pos == [p for s in seq for p in range(s)]
        start = 0
        for s in seq:
            piece = row[start : start + s]
            assert len({t // 10_000 for t in piece}) == 1  # one sample per segment
            assert piece == list(range(piece[0], piece[0] + s))  # in order, contiguous
            start += s


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(0, 40), min_size=0, max_size=30),
    max_length=st.integers(1, 24),
    strategy=st.sampled_from(["bfd", "bfd_split", "wrapped"]),
)
def test_pack_dataset_loses_no_token(lengths: list[int], max_length: int, strategy: str) -> None:
    report: dict[str, object] = {}
    packed = pack_dataset(make_dataset(lengths), max_length, strategy, report=report)
    check_packed(packed, lengths, max_length)
    assert report["tokens_lost"] == 0
    assert report["empty_rows"] == sum(1 for n in lengths if n == 0)
    assert report["split_samples"] == (
        sum(1 for n in lengths if n > max_length) if strategy != "wrapped" else 0
    )


def test_every_list_column_follows_the_same_segments() -> None:
    ds = make_dataset([5, 2, 3, 1, 9, 4], mask=True)
    by_token = {
        t: m
        for row, mrow in zip(ds["input_ids"], ds["attention_mask"], strict=True)
        for t, m in zip(row, mrow, strict=True)
    }
    packed = pack_dataset(ds, 4)
    for row, mrow in zip(packed["input_ids"], packed["attention_mask"], strict=True):
        assert mrow == [by_token[t] for t in row]


def test_columns_that_are_not_numbers_follow_the_same_segments() -> None:
    lengths = [5, 2, 3, 1, 9, 4]
    ids = [[i * 10_000 + t for t in range(n)] for i, n in enumerate(lengths)]
    table = pa.table(
        {
            "input_ids": pa.array(ids, type=pa.list_(pa.int32())),
            "odd": pa.array([[t % 2 == 1 for t in row] for row in ids], type=pa.list_(pa.bool_())),
            "name": pa.array([[str(t) for t in row] for row in ids], type=pa.list_(pa.string())),
        }
    )
    packed, _ = pack_table(table, 4)
    for row, odd, name in zip(
        *(packed.column(n).to_pylist() for n in ("input_ids", "odd", "name")), strict=True
    ):
        assert odd == [t % 2 == 1 for t in row]
        assert name == [str(t) for t in row]


def test_truncate_counts_what_it_cuts() -> None:
    report: dict[str, object] = {}
    packed = pack_dataset(make_dataset([10, 3, 7]), 4, overflow="truncate", report=report)
    assert sum(len(r) for r in packed["input_ids"]) == 4 + 3 + 4
    assert report["truncated_tokens"] == 6 + 3
    assert report["tokens_lost"] == 9


def test_bad_columns_are_named() -> None:
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3]], "label": [0, 1]})
    with pytest.raises(ValueError, match="column 'label' is int64, not a list column"):
        pack_dataset(ds, 4)
    assert len(pack_dataset(ds, 4, columns=("input_ids",))) == 1
    ragged = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3]], "labels": [[1, 2], [3, 4]]})
    with pytest.raises(ValueError, match="'labels' has another length than 'input_ids' in row 1"):
        pack_dataset(ragged, 4)
    with pytest.raises(ValueError, match="num_threads must be a positive integer or None"):
        pack_dataset(ds, 4, columns=("input_ids",), num_threads=0)
    nulls = pa.table({"input_ids": pa.array([[1, 2], None, [3]], type=pa.list_(pa.int32()))})
    with pytest.raises(DataError, match="row 1 is null"):
        pack_table(nulls, 4)


def test_selected_and_dict_datasets() -> None:
    ds = make_dataset([3, 1, 4, 1, 5, 9, 2, 6])
    picked = ds.select([7, 2, 0])
    packed = pack_dataset(picked, 8)
    check_packed_ids = sorted(t for row in packed["input_ids"] for t in row)
    assert check_packed_ids == sorted(t for row in picked["input_ids"] for t in row)
    both = pack_dataset(datasets.DatasetDict({"train": ds, "test": picked}), 8)
    assert set(both) == {"train", "test"}
    assert len(both["test"]) == len(packed)


@pytest.mark.skipif(not HAS_TRL, reason="needs trl to compare with")
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=60), max_length=st.integers(8, 32))
def test_equal_to_trl_where_trl_is_lossless(lengths: list[int], max_length: int) -> None:
    from trl import pack_dataset as trl_pack

    datasets.disable_progress_bars()
    ds = make_dataset(lengths)
    ours = pack_dataset(ds, max_length)
    theirs = trl_pack(ds, max_length, "bfd_split")
    # Best-fit decreasing is the same algorithm: bins of equal room are interchangeable,
    # so the rows and their lengths agree; which of two rows with equal room takes the
    # next item (TRL: the older, laden: the newer) may differ, and with it their segments.
    assert len(ours) == len(theirs)
    assert sorted(map(len, ours["input_ids"])) == sorted(map(len, theirs["input_ids"]))
    assert sorted(t for s in ours["seq_lengths"] for t in s) == sorted(
        t for s in theirs["seq_lengths"] for t in s
    )
    assert sorted(t for r in ours["input_ids"] for t in r) == sorted(
        t for r in theirs["input_ids"] for t in r
    )
    if max(lengths) <= max_length:  # TRL's default bfd loses nothing here either
        plain = trl_pack(ds, max_length, "bfd")
        assert sorted(map(len, plain["input_ids"])) == sorted(map(len, ours["input_ids"]))


@pytest.mark.skipif(not HAS_TRL, reason="needs trl to compare with")
def test_trl_bfd_truncates_where_laden_splits() -> None:
    from trl import pack_dataset as trl_pack

    datasets.disable_progress_bars()
    ds = make_dataset([50, 3, 4])
    theirs = trl_pack(ds, 16, "bfd")
    assert sum(len(r) for r in theirs["input_ids"]) == 16 + 3 + 4  # 34 tokens gone, silently
    report: dict[str, object] = {}
    ours = pack_dataset(ds, 16, report=report)
    assert sum(len(r) for r in ours["input_ids"]) == 57
    assert report["split_samples"] == 1
    assert report["tokens_lost"] == 0


def rows_of(table: object) -> dict[str, list[object]]:
    return {name: table.column(name).to_pylist() for name in table.column_names}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=30),
    max_length=st.integers(1, 24),
    strategy=st.sampled_from(["bfd", "wrapped"]),
    cuts=st.lists(st.integers(0, 30), max_size=4),
    skip=st.integers(0, 3),
    block=st.integers(1, 50),
    large=st.booleans(),
    threads=st.sampled_from([1, 2, 5]),
)
def test_chunked_sliced_and_blocked_tables_pack_like_one_chunk(
    lengths: list[int],
    max_length: int,
    strategy: str,
    cuts: list[int],
    skip: int,
    block: int,
    large: bool,
    threads: int,
) -> None:
    """Chunks, a slice, small blocks and output chunks, int64 views, threads: the same rows."""
    import laden.hf as hf

    base = make_dataset(lengths, mask=True).data.table
    if large:
        base = base.cast(
            pa.schema(
                [
                    pa.field("input_ids", pa.large_list(pa.int64())),
                    pa.field("attention_mask", pa.large_list(pa.int8())),
                ]
            )
        )
    skip = min(skip, len(lengths) - 1)
    plain = base.slice(skip).combine_chunks()
    bounds = sorted({min(c, plain.num_rows) for c in cuts} | {0, plain.num_rows})
    # a slice of a table whose chunks are themselves slices of their record batches
    chunked = pa.concat_tables(
        [base.slice(0, skip)]
        + [plain.slice(a, b - a) for a, b in itertools.pairwise(bounds) if b > a]
    ).slice(skip)
    want, report = pack_table(plain, max_length, strategy=strategy)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf, "POSITION_BLOCK_TOKENS", block)
        # small Arrow chunks, or one chunk per thread
        mp.setattr(hf, "ARROW_CHUNK_TOKENS", block if block < 25 else 2**30)
        mp.setattr(hf, "PARALLEL_CHUNK_TOKENS", 1)
        mp.setattr(hf, "INT32_VIEW_TOKENS", 0)
        got, again = pack_table(chunked, max_length, strategy=strategy, num_threads=threads)
    assert got.schema == want.schema
    assert rows_of(got) == rows_of(want)
    assert again == report
    check_packed(datasets.Dataset(got), [0] * skip + lengths[skip:], max_length)
    if large:
        assert got.schema.field("input_ids").type == pa.large_list(pa.int64())


def test_schema_keeps_the_token_types() -> None:
    table = pa.table(
        {
            "input_ids": pa.array([[1, 2, 3], [4]], type=pa.list_(pa.int32())),
            "attention_mask": pa.array([[1, 1, 0], [1]], type=pa.list_(pa.int8())),
            "labels": pa.array([[-100, 2, 3], [4]], type=pa.list_(pa.int64())),
        }
    )
    packed = pack_dataset(datasets.Dataset(table), 8)
    assert dict(packed.features) == {
        "input_ids": datasets.List(datasets.Value("int32")),
        "attention_mask": datasets.List(datasets.Value("int8")),
        "labels": datasets.List(datasets.Value("int64")),
        "seq_lengths": datasets.List(datasets.Value("int32")),
        "position_ids": datasets.List(datasets.Value("int32")),
    }
    assert packed[0] == {
        "input_ids": [1, 2, 3, 4],
        "attention_mask": [1, 1, 0, 1],
        "labels": [-100, 2, 3, 4],
        "seq_lengths": [3, 1],
        "position_ids": [0, 1, 2, 0],
    }


def test_position_ids_and_seq_lengths_of_the_input_are_made_anew() -> None:
    ds = make_dataset([5, 2, 3]).add_column("position_ids", [[9] * 5, [9] * 2, [9] * 3])
    packed = pack_dataset(ds, 4)
    assert packed.column_names == ["input_ids", "seq_lengths", "position_ids"]
    check_packed(packed, [5, 2, 3], 4)
    with pytest.raises(ValueError, match="'position_ids' is made by packing"):
        pack_dataset(ds, 4, columns=("input_ids", "position_ids"))
    kept = pack_dataset(ds, 4, columns=("input_ids", "position_ids"), position_ids=False)
    assert kept.column_names == ["input_ids", "position_ids", "seq_lengths"]
    assert sorted(t for row in kept["position_ids"] for t in row) == [9] * 10


@pytest.mark.skipif(not HAS_TRL, reason="needs trl to compare with")
@pytest.mark.parametrize(
    "id_type", [pa.list_(pa.int32()), pa.list_(pa.int64()), pa.large_list(pa.int32())]
)
def test_schema_equals_trls_where_they_overlap(id_type: object) -> None:
    from trl import pack_dataset as trl_pack

    datasets.disable_progress_bars()
    lengths = [5, 2, 3, 1, 9, 4, 7]
    large = pa.types.is_large_list(id_type)
    mask_type = pa.large_list(pa.int8()) if large else pa.list_(pa.int8())
    table = pa.table(
        {
            "input_ids": pa.array(
                [list(range(i * 100, i * 100 + n)) for i, n in enumerate(lengths)],
                type=id_type,
            ),
            "attention_mask": pa.array([[1] * n for n in lengths], type=mask_type),
        }
    )
    ds = datasets.Dataset(table)
    theirs = trl_pack(ds, 10, "bfd")
    ours = pack_dataset(ds, 10)
    assert set(theirs.features) <= set(ours.features)
    assert {k: ours.features[k] for k in theirs.features} == dict(theirs.features)
    assert set(ours.features) - set(theirs.features) == {"position_ids"}
    # all samples fit, so TRL loses nothing either: the same tokens in rows of the same lengths
    assert sorted(map(len, ours["input_ids"])) == sorted(map(len, theirs["input_ids"]))
    assert sorted(t for r in ours["input_ids"] for t in r) == sorted(
        t for r in theirs["input_ids"] for t in r
    )
    assert ours.format["type"] == theirs.format["type"]


# ------------------------------------------------------------------ source


def reference_lengths(ds: object) -> list[int]:
    return [len(row) for row in ds["input_ids"]]


@pytest.fixture
def saved(tmp_path: object) -> tuple[str, object]:
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 50, 3000).tolist()
    ds = make_dataset(lengths).add_column("key", [i % 3 for i in range(3000)])
    path = os.path.join(str(tmp_path), "saved")
    ds.save_to_disk(path, max_shard_size="100KB")  # several files, several chunks
    return path, ds


def test_source_lengths_equal_a_python_reference(saved: tuple[str, object]) -> None:
    path, ds = saved
    source = HFDatasetSource(path=path)
    table = source.lengths()
    assert table.length.tolist() == reference_lengths(ds)
    assert table.key is not None
    assert table.key.tolist() == [i % 3 for i in range(3000)]
    rows = source.read_at([2999, 0, 17])
    assert [r["input_ids"] for r in rows] == [
        ds[2999]["input_ids"],
        ds[0]["input_ids"],
        ds[17]["input_ids"],
    ]
    assert [r["key"] for r in rows] == [2999 % 3, 0, 17 % 3]
    assert next(iter(source))["input_ids"] == ds[0]["input_ids"]
    assert len(list(source)) == 3000


def test_source_reads_parquet_and_arrow_folders(tmp_path: object) -> None:
    ds = make_dataset([4, 0, 7, 2, 11])
    folder = os.path.join(str(tmp_path), "pq")
    os.makedirs(folder)
    ds.select(range(3)).to_parquet(os.path.join(folder, "a.parquet"))
    ds.select(range(3, 5)).to_parquet(os.path.join(folder, "b.parquet"))
    assert HFDatasetSource(path=folder).lengths().length.tolist() == [4, 0, 7, 2, 11]
    single = os.path.join(str(tmp_path), "one.parquet")
    ds.to_parquet(single)
    assert HFDatasetSource(path=single).lengths().length.tolist() == [4, 0, 7, 2, 11]


def test_source_errors_name_the_place(tmp_path: object) -> None:
    ds = datasets.Dataset.from_dict({"tokens": [[1, 2], [3]]})
    path = os.path.join(str(tmp_path), "d")
    ds.save_to_disk(path)
    with pytest.raises(DataError, match=r"no column 'input_ids' .*set the source's ids_field"):
        HFDatasetSource(path=path).lengths()
    assert HFDatasetSource(path=path, ids_field="tokens").lengths().length.tolist() == [2, 1]
    with pytest.raises(DataError, match="row 0: 'tokens' holds token id 2, not >= 0 and below"):
        HFDatasetSource(path=path, ids_field="tokens", vocab_size=2).lengths()
    both = os.path.join(str(tmp_path), "dd")
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(both)
    with pytest.raises(DataError, match="set the source's split"):
        HFDatasetSource(path=both, ids_field="tokens").lengths()
    assert len(HFDatasetSource(path=both, split="test", ids_field="tokens")) == 2
    with pytest.raises(DataError, match="no such file or folder"):
        HFDatasetSource(path=os.path.join(str(tmp_path), "nope")).lengths()


def test_source_keeps_the_source_contract(saved: tuple[str, object]) -> None:
    from laden.testing import check_source

    check_source(HFDatasetSource, path=saved[0], limit=200)


def test_arrow_samples_collate_like_a_ragged(saved: tuple[str, object]) -> None:
    from laden.collate import BatchLayout, Ragged, collate

    path, ds = saved
    source = HFDatasetSource(path=path)
    samples = ArrowSamples(source.table().column("input_ids"))
    assert samples.lengths.tolist() == reference_lengths(ds)
    assert arrow_lengths(source.table().column("input_ids")).tolist() == reference_lengths(ds)
    ragged = Ragged.from_sequences(ds["input_ids"])
    units = np.array([5, 9, 2999, 40], dtype=np.int64)
    layout = BatchLayout.padded(units, samples.lengths)
    got, want = collate(layout, samples), collate(layout, ragged)
    for key in ("input_ids", "labels", "position_ids"):
        np.testing.assert_array_equal(got[key], want[key])


# ------------------------------------------------------------------ trainer


def tiny_llama() -> object:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


def packed_plan(n: int = 64) -> tuple[object, object]:
    from laden.plan import BatchPlan
    from laden.plugins.packers.best_fit import BestFitPacker
    from laden.plugins.samplers.fixed import FixedSampler

    rng = np.random.default_rng(5)
    rows = [rng.integers(1, 128, int(k)).tolist() for k in rng.integers(3, 40, n)]
    ds = datasets.Dataset.from_dict({"input_ids": rows})
    table = ArrowSamples(ds)
    from laden.records import LengthTable

    plan = BatchPlan.build(
        LengthTable(length=table.lengths),
        FixedSampler(batch_size=2),
        BestFitPacker(max_length=64, overflow="split"),
        epochs=2,
        seed=1,
    )
    return ds, plan


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs transformers")
def test_laden_trainer_runs_a_few_steps(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import TrainingArguments

    from laden.hf import LadenTrainer

    ds, plan = packed_plan()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=1,
        learning_rate=1e-3,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = LadenTrainer(model=tiny_llama(), args=args, train_dataset=ds, laden_plan=plan)
    loader = trainer.get_train_dataloader()
    batch = next(iter(loader))
    assert batch["input_ids"].shape[1] <= 64
    assert "attention_mask" not in batch or batch["attention_mask"].dim() != 2
    result = trainer.train()
    assert result.global_step == 4
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 4
    assert all(np.isfinite(losses))


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs transformers")
def test_laden_trainer_shards_disjointly(tmp_path: object) -> None:
    from transformers import TrainingArguments

    from laden.hf import LadenTrainer

    ds, plan = packed_plan(90)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = LadenTrainer(model=tiny_llama(), args=args, train_dataset=ds, laden_plan=plan)
    world = 3
    seen = []
    for rank in range(world):
        sampler = trainer.laden_sampler(rank, world)
        sampler.set_epoch(1)
        seen.append([(b.padding, tuple(b)) for b in sampler])
    assert len({len(s) for s in seen}) == 1  # the same number of steps on every rank
    real = [units for s in seen for pad, units in s if not pad]
    flat = [u for units in real for u in units]
    assert len(flat) == len(set(flat))  # disjoint
    assert sorted(flat) == list(range(len(plan.pack)))  # and together the whole epoch
    loader = trainer.get_train_dataloader()
    with pytest.raises(ValueError, match="the laden plan has 2 epochs"):
        loader.set_epoch(2)

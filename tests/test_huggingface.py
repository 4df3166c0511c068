"""Packed batches that Hugging Face transformers models use correctly (issue 16).

Tiny random-init causal LMs built locally (no download): every segment of a
packed batch must give the logits of its sample run alone, and the mean loss
the token-weighted mean over the samples alone, with the model's default
``use_cache``.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np
import pytest

import laden
from laden.collate import BatchLayout, Ragged
from laden.collate.hf import MASK_MIN
from laden.errors import ConfigError
from laden.plan import BatchPlan
from laden.plugins.packers.best_fit import BestFitPacker

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
transformers = pytest.importorskip("transformers", reason="the hf-models extra is not installed")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from laden.plugins.backends.torch import TorchBackend  # noqa: E402
from laden.torch import PlanDataset, PlanLoader  # noqa: E402

VOCAB = 256
SMALL = {"vocab_size": VOCAB, "num_hidden_layers": 2, "max_position_embeddings": 256}


def make_model(arch: str, attn: str) -> Any:
    """A tiny random-init causal LM (2 layers, hidden 64, vocab 256), in eval mode."""
    torch.manual_seed(0)
    if arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_layer=2, n_embd=64, n_head=4, n_positions=256
        )
    else:
        kind = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[arch]
        config = kind(
            **SMALL,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    config._attn_implementation = attn
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def sample_set(n: int = 24, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, int(k)) for k in rng.integers(2, 40, n)]


def packed_layout(sequences: list[np.ndarray], width: int = 96) -> BatchLayout:
    lengths = np.array([s.size for s in sequences])
    plan = BestFitPacker(max_length=width).pack(laden.LengthTable.from_lengths(lengths))
    assert (np.diff(plan.offsets) > 1).any()  # rows really hold several samples
    return BatchLayout.packed(plan, np.arange(len(plan)))


def alone(model: Any, sample: np.ndarray) -> Any:
    with torch.no_grad():
        return model(torch.as_tensor(sample)[None]).logits[0]


def token_weighted_loss(model: Any, sequences: list[np.ndarray]) -> float:
    """The mean next-token loss over all targets of the samples, each run alone."""
    total, count = 0.0, 0
    for s in sequences:
        ids = torch.as_tensor(s)[None]
        with torch.no_grad():
            loss = model(ids, labels=ids).loss.item()
        total += loss * (s.size - 1)
        count += s.size - 1
    return total / count


def segment_logits(layout: BatchLayout, logits: Any) -> list[Any]:
    """The logits of each segment of a packed or padded batch, in layout order."""
    used = np.bincount(layout.row, weights=layout.length, minlength=layout.num_rows)
    real = torch.as_tensor(np.arange(logits.shape[1])[None, :] < used[:, None])
    flat = logits[real]
    bounds = np.concatenate([[0], np.cumsum(layout.length[layout.length > 0])])
    return [flat[a:b] for a, b in itertools.pairwise(bounds)]


def layout_order(layout: BatchLayout) -> list[int]:
    return layout.sample[layout.length > 0].tolist()


def check_segments(model: Any, batch: dict[str, Any], layout: BatchLayout, seqs: list) -> None:
    """Each segment's logits equal its sample's alone; the loss is the token-weighted mean."""
    inputs = {k: v for k, v in batch.items() if k not in ("sample_ids",)}
    with torch.no_grad():
        out = model(**inputs)
    parts = segment_logits(layout, out.logits)
    order = layout_order(layout)
    assert len(parts) == len(order)
    worst = max(
        (part - alone(model, seqs[s])).abs().max().item()
        for part, s in zip(parts, order, strict=True)
    )
    assert worst <= 1e-4, f"max |diff| {worst}"
    assert out.loss.item() == pytest.approx(token_weighted_loss(model, seqs), abs=1e-4)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_hf_profile_packed_rows_equal_each_sample_alone(arch: str, attn: str) -> None:
    model = make_model(arch, attn)
    assert model.config.use_cache in (True, None) or arch == "gpt2"  # the default, untouched
    seqs = sample_set()
    layout = packed_layout(seqs)
    batch = dict(
        TorchBackend(profile="hf", attn_implementation=attn).collate(
            layout, Ragged.from_sequences(seqs)
        )
    )
    assert batch["attention_mask"].ndim == 4
    assert "use_cache" not in batch  # the profile does not depend on the cache being off
    check_segments(model, batch, layout, seqs)
    # The check can fail: the old 2D all-ones mask lets attention cross segments.
    leaky = {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}
    with torch.no_grad():
        wrong = model(**leaky).logits
    assert not torch.allclose(wrong, model(**batch).logits, atol=1e-3)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_default_torch_batches_are_safe_for_model_call(arch: str, attn: str) -> None:
    """``model(**batch)`` with the default torch backend is correct, cache on by default."""
    model = make_model(arch, attn)
    seqs = sample_set(seed=3)
    layout = packed_layout(seqs)
    batch = dict(TorchBackend().collate(layout, Ragged.from_sequences(seqs)))
    assert "attention_mask" not in batch  # no 2D mask claiming the whole row attends
    assert batch["use_cache"] is False
    check_segments(model, batch, layout, seqs)


def test_padded_batches_keep_the_2d_mask() -> None:
    seqs = sample_set(6)
    layout = BatchLayout.padded(np.arange(6), np.array([s.size for s in seqs]))
    tokens = Ragged.from_sequences(seqs)
    for backend in (TorchBackend(), TorchBackend(profile="hf", attn_implementation="eager")):
        batch = backend.collate(layout, tokens)
        assert batch["attention_mask"].ndim == 2
        assert "use_cache" not in batch
    model = make_model("llama", "sdpa")
    check_segments(model, dict(TorchBackend(profile="hf").collate(layout, tokens)), layout, seqs)


def test_eager_gets_an_additive_mask_in_the_model_dtype() -> None:
    seqs = sample_set(8)
    layout = packed_layout(seqs, width=64)
    tokens = Ragged.from_sequences(seqs)
    sdpa = TorchBackend(profile="hf").collate(layout, tokens)["attention_mask"]
    assert sdpa.dtype == torch.bool
    for dtype, torch_dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        mask = TorchBackend(profile="hf", attn_implementation="eager", mask_dtype=dtype).collate(
            layout, tokens
        )["attention_mask"]
        assert mask.dtype == torch_dtype
        assert set(mask.float().unique().tolist()) == {0.0, float(torch.finfo(torch_dtype).min)}
        assert torch.equal(mask == 0, sdpa)
    assert MASK_MIN["bfloat16"] == float(torch.finfo(torch.bfloat16).min)
    # Trap (b): a boolean mask handed to eager is added to the scores and masks nothing.
    model = make_model("llama", "eager")
    batch = dict(TorchBackend(profile="hf", attn_implementation="eager").collate(layout, tokens))
    with torch.no_grad():
        right = model(**batch).logits
        wrong = model(**{**batch, "attention_mask": sdpa}).logits
    assert not torch.allclose(right, wrong, atol=1e-3)
    # And a bfloat16 model runs on the bfloat16 mask.
    bf16 = make_model("llama", "eager").to(torch.bfloat16)
    mask = TorchBackend(profile="hf", attn_implementation="eager", mask_dtype="bfloat16")
    with torch.no_grad():
        assert torch.isfinite(bf16(**dict(mask.collate(layout, tokens))).logits).all()


def flattening_reference(seqs: list[np.ndarray], layout: BatchLayout) -> dict[str, Any]:
    collator = transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=True)
    return collator([{"input_ids": seqs[s].tolist()} for s in layout_order(layout)])


def test_flash_layout_is_datacollatorwithflattening_exactly() -> None:
    seqs = sample_set(20, seed=5)
    layout = packed_layout(seqs)
    tokens = Ragged.from_sequences(seqs)
    batch = dict(
        TorchBackend(profile="hf", attn_implementation="flash_attention_2").collate(layout, tokens)
    )
    want = flattening_reference(seqs, layout)
    assert set(batch) == set(want)
    for key, value in want.items():
        if isinstance(value, int):
            assert isinstance(batch[key], int), key
            assert batch[key] == value, key
        else:
            assert batch[key].dtype == value.dtype, key
            assert torch.equal(batch[key], value), key
    assert batch["input_ids"].shape[0] == 1  # one flat row, whatever the rows were
    # transformers' own flattened path (sdpa, no cache) gives per-segment-correct logits
    model = make_model("qwen2", "sdpa")
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits[0]
    cu = batch["cu_seq_lens_q"].tolist()
    for i, s in enumerate(layout_order(layout)):
        assert (logits[cu[i] : cu[i + 1]] - alone(model, seqs[s])).abs().max().item() <= 1e-4


def test_labels_reach_torch_as_int64() -> None:
    seqs = sample_set(8)
    layout = packed_layout(seqs, width=64)
    tokens = Ragged.from_sequences(seqs)
    for backend in (TorchBackend(int_dtype="int32"), TorchBackend(), TorchBackend(profile="hf")):
        batch = dict(backend.collate(layout, tokens))
        assert batch["labels"].dtype == torch.int64
    model = make_model("llama", "sdpa")
    batch = dict(TorchBackend(int_dtype="int32").collate(layout, tokens))
    assert batch["input_ids"].dtype == torch.int32
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_shift_labels_reach_hf_as_shift_labels() -> None:
    seqs = sample_set(10, seed=7)
    layout = packed_layout(seqs, width=64)
    tokens = Ragged.from_sequences(seqs)
    mask = Ragged(
        values=np.random.default_rng(1).random(tokens.values.size) < 0.8, offsets=tokens.offsets
    )
    for attn in ("sdpa", "flash_attention_2"):
        plain = dict(TorchBackend(profile="hf", attn_implementation=attn).collate(layout, tokens))
        shifted = dict(
            TorchBackend(profile="hf", attn_implementation=attn, shift_labels=True).collate(
                layout, tokens
            )
        )
        assert torch.equal(shifted["labels"], plain["labels"])  # HF convention, unshifted
        assert shifted["shift_labels"].dtype == torch.int64
    # shift_labels equals laden's own shifted targets (loss mask included).
    hf = TorchBackend(profile="hf", shift_labels=True).collate(layout, tokens, loss_mask=mask)
    ours = TorchBackend(shift_labels=True).collate(layout, tokens, loss_mask=mask)
    assert torch.equal(hf["shift_labels"], ours["labels"])
    # The model's loss from shift_labels equals its loss from labels: no double shift.
    model = make_model("llama", "sdpa")
    batch = dict(TorchBackend(profile="hf", shift_labels=True).collate(layout, tokens))
    with torch.no_grad():
        both = model(**batch).loss
        only_labels = model(**{k: v for k, v in batch.items() if k != "shift_labels"}).loss
        twice = model(**{**batch, "labels": batch["shift_labels"]}).loss  # the trap, shown
        twice_wrong = model(
            **{k: v for k, v in batch.items() if k != "shift_labels"}
            | {"labels": batch["shift_labels"]}
        ).loss
    assert both.item() == pytest.approx(only_labels.item(), abs=1e-5)
    assert twice.item() == pytest.approx(both.item(), abs=1e-5)  # shift_labels wins
    # shift_labels under the key ``labels`` are shifted a second time: another loss.
    assert abs(twice_wrong.item() - both.item()) > 1e-4


def test_hf_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="attn_implementation"):
        TorchBackend(attn_implementation="eager")
    with pytest.raises(ConfigError, match="int_dtype"):
        TorchBackend(profile="hf", int_dtype="int32")
    with pytest.raises(ConfigError, match="profile"):
        laden.Kernel(autoload=False).create("backend", {"name": "torch", "profile": "tf"})


def test_plan_dataset_batches_go_to_the_model_as_they_are() -> None:
    """A PlanLoader batch (with its epoch/step/padding keys) goes to ``model(**batch)``."""
    seqs = sample_set(30, seed=11)
    table = laden.LengthTable.from_lengths(np.array([s.size for s in seqs]))
    kernel = laden.Kernel(autoload=False)
    plan = BatchPlan.build(
        table,
        kernel.create("sampler", {"name": "fixed", "batch_size": 2}),
        kernel.create("packer", {"name": "best_fit", "max_length": 96}),
        seed=0,
    )
    model = make_model("llama", "sdpa")
    dataset = PlanDataset.for_plan(
        plan, Ragged.from_sequences(seqs), table, backend=TorchBackend(profile="hf")
    )
    for batch in PlanLoader(plan, dataset):
        with torch.no_grad():
            assert torch.isfinite(model(**batch).loss)


def test_set_epoch_after_load_state_dict_composes_or_refuses() -> None:
    seqs = sample_set(60, seed=2)
    table = laden.LengthTable.from_lengths(np.array([s.size for s in seqs]))
    kernel = laden.Kernel(autoload=False)
    sampler = kernel.create("sampler", {"name": "fixed", "batch_size": 4})
    plan = BatchPlan.build(table, sampler, epochs=3, seed=0)
    dataset = PlanDataset.for_plan(plan, Ragged.from_sequences(seqs), table)

    def steps(loader: PlanLoader) -> list[tuple[int, int]]:
        return [(b["epoch"], b["step"]) for b in loader]

    running = PlanLoader(plan, dataset)
    running.set_epoch(1)
    it = iter(running)
    for _ in range(5):
        next(it)
    state = running.state_dict()
    # The DistributedSampler idiom after a resume: continue, never restart the epoch.
    resumed = PlanLoader(plan, dataset)
    resumed.load_state_dict(state)
    seen = []
    for epoch in range(1, 3):
        resumed.set_epoch(epoch)
        seen += steps(resumed)
    n1, n2 = len(plan.epochs[1]), len(plan.epochs[2])
    assert seen == [(1, s) for s in range(5, n1)] + [(2, s) for s in range(n2)]
    # Another epoch would repeat or skip batches: refused loudly, unless asked for.
    wrong = PlanLoader(plan, dataset)
    wrong.load_state_dict(state)
    with pytest.raises(ValueError, match=r"continues epoch 1 at step 5.*set_epoch\(1\)"):
        wrong.set_epoch(0)
    with pytest.raises(ValueError, match="continues epoch 1"):
        wrong.set_epoch(2)
    wrong.set_epoch(2, start=0)
    assert steps(wrong) == [(2, s) for s in range(n2)]
    # A state saved at the end of an epoch continues with the next one.
    done = PlanLoader(plan, dataset)
    done.load_state_dict({**state, "epoch": 1, "step": n1})
    done.set_epoch(2)
    assert steps(done) == [(2, s) for s in range(n2)]

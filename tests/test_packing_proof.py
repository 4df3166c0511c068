"""Proof that packed rows do not contaminate each other: a real torch attention layer.

Each segment of a packed batch, run through attention with the segment mask and
the restarting position ids, gives the outputs (and the loss) it gives alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import laden
from laden.collate import BatchLayout, Ragged

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
F = torch.nn.functional


class TinyCausalLM(torch.nn.Module):
    def __init__(self, vocab: int = 97, dim: int = 32, heads: int = 4, max_pos: int = 64) -> None:
        super().__init__()
        self.heads = heads
        self.embed = torch.nn.Embedding(vocab, dim)
        self.pos = torch.nn.Embedding(max_pos, dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, input_ids: Any, position_ids: Any, attn_mask: Any | None) -> Any:
        x = self.embed(input_ids) + self.pos(position_ids)
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.out(y.transpose(1, 2).reshape(b, n, d))
        return self.head(x)


def causal_lm_loss(logits: Any, labels: Any) -> Any:
    """The Hugging Face loss: logits at t predict labels at t + 1; -100 is skipped."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
    )


@pytest.fixture
def packed() -> tuple[list[np.ndarray], dict[str, Any]]:
    rng = np.random.default_rng(7)
    sequences = [rng.integers(1, 97, n) for n in rng.integers(2, 30, 24)]
    table = laden.LengthTable.from_lengths([s.size for s in sequences])
    plan = (
        laden.Kernel(autoload=False)
        .create("packer", {"name": "best_fit", "max_length": 64})
        .pack(table)
    )
    assert (np.diff(plan.offsets) > 1).any()  # some rows really hold several sequences
    backend = laden.Kernel(autoload=False).create(
        "backend", {"name": "torch", "dense_mask": "causal"}
    )
    batch = backend.collate(
        BatchLayout.packed(plan, np.arange(len(plan))), Ragged.from_sequences(sequences)
    )
    return sequences, dict(batch)


def test_each_segment_attends_as_if_alone(packed: tuple[list[np.ndarray], dict[str, Any]]) -> None:
    sequences, batch = packed
    torch.manual_seed(0)
    model = TinyCausalLM().eval()
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["position_ids"], batch["attn_mask"])
        real = logits[batch["segment_ids"] > 0]  # the unpadded token stream
        cu = batch["cu_seqlens"].tolist()
        for i, sample in enumerate(batch["sample_ids"].tolist()):
            alone_ids = torch.as_tensor(sequences[sample])[None]
            positions = torch.arange(alone_ids.shape[1])[None]
            alone = model(alone_ids, positions, None)[0]
            torch.testing.assert_close(real[cu[i] : cu[i + 1]], alone, atol=1e-5, rtol=1e-5)
        # The check can fail: a plain causal mask over the packed row leaks across segments.
        leaky = model(batch["input_ids"], batch["position_ids"], None)
        leaky = leaky[batch["segment_ids"] > 0]
        assert not torch.allclose(leaky, real, atol=1e-3)


def test_packed_loss_equals_the_sum_of_losses_alone(
    packed: tuple[list[np.ndarray], dict[str, Any]],
) -> None:
    sequences, batch = packed
    torch.manual_seed(1)
    model = TinyCausalLM().eval()
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["position_ids"], batch["attn_mask"])
        packed_loss = causal_lm_loss(logits, batch["labels"])
        alone_loss = sum(
            causal_lm_loss(
                model(torch.as_tensor(s)[None], torch.arange(s.size)[None], None),
                torch.as_tensor(s)[None],
            )
            for s in sequences
        )
    torch.testing.assert_close(packed_loss, alone_loss, atol=1e-3, rtol=1e-5)
    # Targets counted: every token but the first of each sequence.
    assert int((batch["labels"] != -100).sum()) == sum(s.size - 1 for s in sequences)

"""Text adapter: learned RoBERTa positions (trained), a fixed sin-cos table (not trained, not saved) or none."""

from __future__ import annotations

import pytest
import torch

from modalities.text.model.adapter import EMBED_STD, TextAdapter, TextAdapterConfig
from unimim.nn.pos_embed import sincos_1d


def test_sincos_positions_are_fixed_and_scaled_to_the_token_embeddings():
    torch.manual_seed(0)
    adapter = TextAdapter(TextAdapterConfig(vocab_size=64, max_positions=16, positions="sincos", dropout=0.0), dim=8)
    assert "pos_embed" not in dict(adapter.named_parameters()) and "pos_embed" not in adapter.state_dict()
    # hand check of two entries: position 3, channel 0 = sin(3 * 1) and channel 4 = cos(3 * 1), times 0.02 * sqrt 2
    assert adapter.pos_embed[3, 0].item() == pytest.approx(0.02 * 2**0.5 * torch.sin(torch.tensor(3.0)).item())
    assert adapter.pos_embed[3, 4].item() == pytest.approx(0.02 * 2**0.5 * torch.cos(torch.tensor(3.0)).item())
    assert torch.allclose(adapter.pos_embed, sincos_1d(8, torch.arange(16)) * EMBED_STD * 2**0.5)
    ids = torch.randint(5, 64, (2, 10))
    tok = adapter.embed(ids)
    expect = torch.nn.functional.layer_norm(adapter.tokens(ids) + adapter.pos_embed[:10], (8,),
                                            adapter.norm.weight, adapter.norm.bias, adapter.norm.eps)
    assert torch.allclose(tok.x, expect)
    tok.x.sum().backward()
    assert adapter.tokens.weight.grad is not None  # tokens train, positions do not (a buffer)


def test_learned_positions_train_and_unknown_kind_is_refused():
    adapter = TextAdapter(TextAdapterConfig(vocab_size=64, max_positions=16, dropout=0.0), dim=8)
    assert "pos_embed" in dict(adapter.named_parameters())
    with pytest.raises(ValueError, match="adapter.positions must be 'learned', 'sincos' or 'none'"):
        TextAdapterConfig(positions="rotary")


def test_no_positions_makes_the_embedding_order_free():
    torch.manual_seed(0)
    adapter = TextAdapter(TextAdapterConfig(vocab_size=64, max_positions=16, positions="none", dropout=0.0), dim=8)
    assert adapter.pos_embed is None and not any("pos" in k for k in adapter.state_dict())
    ids = torch.randint(5, 64, (2, 10))
    perm = torch.randperm(10)
    x = adapter.embed(ids).x  # (2, 10, 8)
    assert torch.equal(adapter.embed(ids[:, perm]).x, x[:, perm])  # each token's vector depends on its id alone
    expect = torch.nn.functional.layer_norm(adapter.tokens(ids), (8,), adapter.norm.weight, adapter.norm.bias,
                                            adapter.norm.eps)
    assert torch.allclose(x, expect)

"""Numerical parity of the unimim text backbone with HF ``Data2VecTextModel`` (via ``convert_hf``), both directions.

A tiny randomly initialised HF model (biases and LayerNorm affines perturbed so that layout bugs show), fp32, eval
mode, right-padded batch; every hidden state (embeddings + each layer) is compared at the real tokens.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modalities.text.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from modalities.text.interop.convert_hf import (
    from_hf_data2vec_text,
    hf_config_to_unimim,
    to_hf_data2vec_text,
    unimim_to_hf_config_kwargs,
)
from modalities.text.model.adapter import TextAdapter
from unimim.nn.encoder import TransformerEncoder

transformers = pytest.importorskip("transformers")

ATOL = 1e-4


def _hf_model(**overrides) -> nn.Module:
    kw = dict(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=24 + PAD_ID + 1, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=PAD_ID,
              bos_token_id=BOS_ID, eos_token_id=EOS_ID, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    cfg = transformers.Data2VecTextConfig(**(kw | overrides))
    torch.manual_seed(0)
    model = transformers.Data2VecTextModel(cfg, add_pooling_layer=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "token_type" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _backbone(adapter_cfg, encoder_cfg) -> nn.ModuleDict:
    return nn.ModuleDict({"adapter": TextAdapter(adapter_cfg, dim=encoder_cfg.dim, norm_eps=encoder_cfg.norm_eps),
                          "encoder": TransformerEncoder(encoder_cfg)}).eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 97, (3, 24), generator=g)
    ids[:, 0] = BOS_ID
    lengths = torch.tensor([24, 17, 9])
    for i, n in enumerate(lengths):
        ids[i, n - 1] = EOS_ID
        ids[i, n:] = PAD_ID
    real = torch.arange(24)[None] < lengths[:, None]  # (B, T)
    return ids, real


def _ours(backbone, ids, real):
    tokens = backbone["adapter"].embed(ids, padding_mask=~real)
    out = backbone["encoder"](tokens)
    return [tokens.x, *out.layers]


def _hf(model, ids, real):
    with torch.no_grad():
        return list(model(input_ids=ids, attention_mask=real.long(), output_hidden_states=True).hidden_states)


def _assert_close(ours, theirs, real):
    assert len(ours) == len(theirs) == 4
    for i, (a, b) in enumerate(zip(ours, theirs)):
        err = (a - b)[real].abs().max().item()
        assert err < ATOL, f"hidden state {i}: max |diff| {err:.2e}"


@torch.no_grad()
def test_hf_to_unimim_every_hidden_state():
    hf = _hf_model()
    adapter_cfg, encoder_cfg = hf_config_to_unimim(hf.config)
    assert encoder_cfg.norm_eps == 1e-5 and adapter_cfg.max_positions == 24 and not encoder_cfg.norm_first
    ours = _backbone(adapter_cfg, encoder_cfg)
    ours.load_state_dict(from_hf_data2vec_text(hf.state_dict()), strict=True)
    ids, real = _batch()
    _assert_close(_ours(ours, ids, real), _hf(hf, ids, real), real)
    # the pre-residual FFN outputs (data2vec text targets) are HF's output.dense outputs
    ffn = []
    hooks = [layer.output.dense.register_forward_hook(lambda m, i, o: ffn.append(o)) for layer in hf.encoder.layer]
    _hf(hf, ids, real)
    for h in hooks:
        h.remove()
    out = ours["encoder"](ours["adapter"].embed(ids, padding_mask=~real))
    for a, b in zip(out.ffn, ffn):
        assert (a - b)[real].abs().max().item() < ATOL


@torch.no_grad()
def test_unimim_to_hf_every_hidden_state():
    adapter_cfg, encoder_cfg = hf_config_to_unimim(_hf_model().config)
    torch.manual_seed(3)
    ours = _backbone(adapter_cfg, encoder_cfg)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = transformers.Data2VecTextConfig(**unimim_to_hf_config_kwargs(adapter_cfg, encoder_cfg))
    hf = transformers.Data2VecTextModel(cfg, add_pooling_layer=False).eval()
    missing, unexpected = hf.load_state_dict(to_hf_data2vec_text(ours.state_dict()), strict=False)
    assert not unexpected and all("position_ids" in k or "token_type_ids" in k for k in missing)
    ids, real = _batch()
    _assert_close(_ours(ours, ids, real), _hf(hf, ids, real), real)


def test_eps_matters_and_bad_layouts():
    hf = _hf_model(layer_norm_eps=1e-12)  # HF's default, not data2vec's 1e-5: the converter must carry it over
    adapter_cfg, encoder_cfg = hf_config_to_unimim(hf.config)
    assert encoder_cfg.norm_eps == 1e-12
    with pytest.raises(ValueError, match="pad"):
        from_hf_data2vec_text(hf.state_dict(), pad_token_id=0)
    state = from_hf_data2vec_text(hf.state_dict())
    state["encoder.norm.weight"] = torch.ones(32)
    with pytest.raises(ValueError, match="final LayerNorm"):
        to_hf_data2vec_text(state)
    state = from_hf_data2vec_text(hf.state_dict())
    del state["adapter.pos_embed"]  # an encoder trained with adapter.positions: sincos or none
    with pytest.raises(ValueError, match="learned absolute positions"):
        to_hf_data2vec_text(state)

"""Numerical parity of the unimim speech backbone with HF ``Data2VecAudioModel`` (via ``convert_hf``), both ways.

Tiny random HF config, every parameter perturbed (HF zero-initialises biases and sets norms to 1, which would hide
layout bugs), fp32, eval mode, a padded batch. Every hidden state must match within 1e-4 on the real frames.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modalities.speech.interop.convert_hf import (
    from_hf_data2vec_audio,
    hf_config_to_unimim,
    to_hf_data2vec_audio,
    unimim_to_hf_config_kwargs,
)
from modalities.speech.model.adapter import SpeechAdapter
from unimim.nn.encoder import TransformerEncoder

transformers = pytest.importorskip("transformers")

ATOL = 1e-4


def _hf_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.Data2VecAudioConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
        conv_dim=[32, 32, 48], conv_kernel=[10, 3, 2], conv_stride=[5, 2, 2], conv_bias=False,
        num_conv_pos_embeddings=2, conv_pos_kernel_size=5, num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.05, attn_implementation="eager",
    )
    model = transformers.Data2VecAudioModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _backbone(hf: nn.Module) -> nn.ModuleDict:
    adapter_cfg, encoder_cfg = hf_config_to_unimim(hf.config)
    adapter = SpeechAdapter(adapter_cfg, dim=encoder_cfg.dim, norm_eps=encoder_cfg.norm_eps)
    return nn.ModuleDict({"adapter": adapter, "encoder": TransformerEncoder(encoder_cfg)}).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    wave = torch.randn(2, 1600, generator=g)
    padding = torch.zeros(2, 1600, dtype=torch.bool)
    padding[1, 1100:] = True
    return wave.masked_fill(padding, 0.0), padding


def _compare(hf: nn.Module, ours: nn.ModuleDict) -> float:
    wave, padding = _batch()
    with torch.no_grad():
        out = hf(wave, attention_mask=(~padding).long(), output_hidden_states=True)
        tokens = ours["adapter"].embed(wave, padding_mask=padding)
        enc = ours["encoder"](tokens)
    ours_states = [tokens.x] + enc.layers
    assert len(ours_states) == len(out.hidden_states) == hf.config.num_hidden_layers + 1
    keep = ~tokens.padding_mask  # (B, N) real frames
    assert keep.shape == out.last_hidden_state.shape[:2]
    assert keep[0].all() and not keep[1].all()  # the padded row has padded frames, compared only where real
    worst = 0.0
    for a, b in zip(ours_states, out.hidden_states):
        worst = max(worst, float((a - b)[keep].abs().max()))
    assert torch.allclose(enc.x[keep], out.last_hidden_state[keep], atol=ATOL)
    return worst


def test_hf_to_unimim_every_hidden_state():
    hf = _hf_model()
    ours = _backbone(hf)
    ours.load_state_dict(from_hf_data2vec_audio(hf.state_dict()), strict=True)
    assert _compare(hf, ours) < ATOL


def test_unimim_to_hf_every_hidden_state():
    hf_ref = _hf_model()
    ours = _backbone(hf_ref)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    a_cfg, e_cfg = hf_config_to_unimim(hf_ref.config)
    cfg = transformers.Data2VecAudioConfig(**unimim_to_hf_config_kwargs(a_cfg, e_cfg), attn_implementation="eager")
    hf = transformers.Data2VecAudioModel(cfg).eval()
    hf.load_state_dict(to_hf_data2vec_audio(ours.state_dict()), strict=True)
    assert _compare(hf, ours) < ATOL


def test_round_trip_is_exact_and_prefix_is_handled():
    hf = _hf_model()
    state = hf.state_dict()
    back = to_hf_data2vec_audio(from_hf_data2vec_audio(state))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    prefixed = {f"data2vec_audio.{k}": v for k, v in state.items()} | {"lm_head.weight": torch.zeros(3, 64)}
    assert set(from_hf_data2vec_audio(prefixed, prefix="data2vec_audio.")) == set(from_hf_data2vec_audio(state))


def test_unknown_keys_are_errors():
    with pytest.raises(KeyError, match="no unimim counterpart"):
        from_hf_data2vec_audio({"encoder.something_new.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="no HF Data2VecAudio counterpart"):
        to_hf_data2vec_audio({"encoder.blocks.0.ls1.gamma": torch.zeros(1)})

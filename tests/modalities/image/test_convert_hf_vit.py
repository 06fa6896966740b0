"""The 5.x ViT / BEiT layout converters against a real ``ViTModel`` / ``BeitModel`` state dict (random weights),
and the timm Beit reader's refusals."""

from __future__ import annotations

import pytest
import torch

from modalities.image.interop.convert_hf_vit import from_hf_vit_layout, to_hf_vit_layout
from modalities.image.interop.convert_timm import from_timm_beit

transformers = pytest.importorskip("transformers")

KW = dict(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
          intermediate_size=64)


@pytest.mark.parametrize("kind", ["vit", "beit"])
def test_hf_state_round_trips_exactly_through_the_unimim_names(kind):
    torch.manual_seed(0)
    if kind == "vit":
        model = transformers.ViTModel(transformers.ViTConfig(**KW), add_pooling_layer=False)
    else:
        model = transformers.BeitModel(transformers.BeitConfig(**KW, use_shared_relative_position_bias=True,
                                                               use_mask_token=True, use_mean_pooling=False,
                                                               layer_scale_init_value=0.1), add_pooling_layer=False)
    hf = {k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()}
    ours = from_hf_vit_layout(hf, depth=2)
    assert ours["encoder.blocks.1.attn.qkv.weight"].shape == (96, 32)
    assert ("encoder.blocks.0.attn.qkv.bias" in ours) == (kind == "vit")  # BEiT: q / v biases only
    back = to_hf_vit_layout(ours, depth=2, key_bias=kind == "vit", mask_token=kind == "beit")
    assert set(back) == set(hf)
    assert all(torch.equal(back[k], hf[k]) for k in hf)
    missing, unexpected = model.load_state_dict(back, strict=False)
    assert not missing and not unexpected


def test_to_hf_refuses_unknown_entries_and_wrong_depth():
    ours = from_hf_vit_layout(transformers.ViTModel(transformers.ViTConfig(**KW)).state_dict(), depth=2)
    with pytest.raises(ValueError, match="depth=3"):
        to_hf_vit_layout(ours, depth=3)
    with pytest.raises(ValueError, match="unconverted unimim entries"):
        to_hf_vit_layout({**ours, "adapter.norm.weight": torch.ones(32)}, depth=2)


def test_timm_beit_reader_refuses_per_layer_tables_and_absolute_positions():
    with pytest.raises(ValueError, match="per-layer relative position tables"):
        from_timm_beit({"blocks.0.attn.relative_position_bias_table": torch.zeros(3, 2)}, depth=1)
    with pytest.raises(ValueError, match="use_abs_pos_emb"):
        from_timm_beit({"pos_embed": torch.zeros(1, 5, 4)}, depth=1)

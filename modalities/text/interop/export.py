"""What a text backbone exports as: ``transformers.Data2VecTextModel`` (config kwargs and state dict).

Fixed sin-cos positions (``adapter.positions: sincos``) are exported as the learned table that reproduces them, and
``positions: none`` as a zero table: both exact. Nothing here imports ``transformers``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from modalities.export_checks import pick_hf_class, refuse_settings
from modalities.text.interop.convert_hf import to_hf_data2vec_text, unimim_to_hf_config_kwargs

HF_CLASSES = ("Data2VecTextModel",)


def materialise_positions(adapter: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Put the positions a text adapter adds into ``state`` as ``adapter.pos_embed`` (T_max, D): its fixed sin-cos
    buffer, or zeros for ``positions: none``. Returns ``state`` (changed in place)."""
    if "adapter.pos_embed" not in state:
        table = adapter.pos_embed
        if table is None:
            table = torch.zeros(adapter.cfg.max_positions, adapter.tokens.weight.shape[1])
        state["adapter.pos_embed"] = table.detach().clone()  # (T_max, D)
    return state


def hf_export(objective: nn.Module, backbone: nn.ModuleDict, cfg: Any,
              hf_class: str | None = None) -> tuple[str, str, dict[str, Any], dict[str, Tensor]]:
    """(class name, config class name, config kwargs, state dict) of the text ``backbone`` as
    ``Data2VecTextModel``; ``ValueError`` naming a setting the class has no equivalent of."""
    hf_class = pick_hf_class(hf_class, HF_CLASSES[0], HF_CLASSES, "text")
    e = cfg.encoder
    refuse_settings(hf_class, (
        (e.norm_first, "encoder.norm_first: true (pre-LN blocks)"),
        (e.final_norm, "encoder.final_norm: true"),
        (e.qkv_bias is not True, f"encoder.qkv_bias: {e.qkv_bias}"),
        (bool(e.layer_scale_init), f"encoder.layer_scale_init: {e.layer_scale_init}"),
    ), "RoBERTa's post-LN, biased q/k/v layout without a final LayerNorm or layer scale")
    state = materialise_positions(backbone["adapter"], dict(backbone.state_dict()))
    kwargs = unimim_to_hf_config_kwargs(cfg.adapter, e)
    return hf_class, "Data2VecTextConfig", kwargs, to_hf_data2vec_text(state)

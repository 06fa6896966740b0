"""What a speech backbone exports as: ``transformers.Data2VecAudioModel`` (config kwargs and state dict).

The HF class is the data2vec speech layout (data2vec.md §6.2); settings it cannot represent are refused by name.
Nothing here imports ``transformers``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from modalities.export_checks import pick_hf_class, refuse_settings
from modalities.speech.interop.convert_hf import to_hf_data2vec_audio, unimim_to_hf_config_kwargs

HF_CLASSES = ("Data2VecAudioModel",)


def hf_export(objective: nn.Module, backbone: nn.ModuleDict, cfg: Any,
              hf_class: str | None = None) -> tuple[str, str, dict[str, Any], dict[str, Tensor]]:
    """(class name, config class name, config kwargs, state dict) of the speech ``backbone`` as
    ``Data2VecAudioModel``; ``ValueError`` naming a setting the class has no equivalent of."""
    hf_class = pick_hf_class(hf_class, HF_CLASSES[0], HF_CLASSES, "speech")
    a, e = cfg.adapter, cfg.encoder
    refuse_settings(hf_class, (
        (a.conv_norm != "layer", f"adapter.conv_norm: {a.conv_norm}"),
        (e.norm_first, "encoder.norm_first: true (pre-LN blocks)"),
        (e.final_norm, "encoder.final_norm: true"),
        (e.qkv_bias is not True, f"encoder.qkv_bias: {e.qkv_bias}"),
        (bool(e.layer_scale_init), f"encoder.layer_scale_init: {e.layer_scale_init}"),
    ), "it is the layer-norm conv, post-LN, biased q/k/v layout without layer scale")
    kwargs = unimim_to_hf_config_kwargs(a, e) | dict(mask_time_prob=0.05)  # 0.05: HF's default, keeps the mask emb
    return hf_class, "Data2VecAudioConfig", kwargs, to_hf_data2vec_audio(backbone.state_dict())

"""Load a Hugging Face ``transformers.BeitForMaskedImageModeling`` state dict into the unimim BEiT objective.

``BeitForMaskedImageModeling`` = ``beit`` (a ``BeitModel`` with a mask token) + ``layernorm`` + ``lm_head``
(Linear(D, vocab)); its logits are ``lm_head(layernorm(beit(x, bool_masked_pos))[:, 1:])``. ``BeitModel`` has the
same parameter layout as ``Data2VecVisionModel``, so the backbone goes through
:func:`modalities.image.convert_hf.from_hf_data2vec_vision` (prefix ``beit.``); the MIM ``layernorm`` becomes the
encoder's final norm and ``lm_head`` the objective's ``head``:

    beit.*                     <-> backbone.adapter.* / backbone.encoder.*   (see convert_hf)
    layernorm.{weight,bias}    <-> backbone.encoder.norm.{weight,bias}
    lm_head.{weight,bias}      <-> head.{weight,bias}

The HF config must use ``use_mean_pooling=True`` (the default), which makes ``beit.layernorm`` an identity;
otherwise the HF model normalises twice and has no unimim equivalent. Build the unimim side with
:func:`beit_config_to_unimim`. This module needs no ``transformers`` import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from modalities.image.adapter import ImageAdapterConfig
from modalities.image.convert_hf import from_hf_data2vec_vision, hf_config_to_unimim
from unimim.nn.encoder import EncoderConfig


def from_hf_beit_mim(hf_state: Mapping[str, Tensor], *, depth: int) -> dict[str, Tensor]:
    """``BeitForMaskedImageModeling`` state dict -> state dict of :class:`modalities.image.objectives.beit.BEiT`
    (keys ``backbone.adapter.*``, ``backbone.encoder.*``, ``head.*``), loadable with ``strict=True``."""
    if any(k.startswith("beit.layernorm.") for k in hf_state):
        raise ValueError("beit.layernorm present (use_mean_pooling=False): the HF model applies two final "
                         "LayerNorms, which the unimim encoder does not")
    for key in ("layernorm.weight", "layernorm.bias", "lm_head.weight", "lm_head.bias"):
        if key not in hf_state:
            raise KeyError(f"HF state dict lacks {key!r}; is it a BeitForMaskedImageModeling state dict?")
    extra = sorted(k for k in hf_state if not k.startswith(("beit.", "layernorm.", "lm_head.")))
    if extra:
        raise ValueError(f"unexpected HF entries: {extra[:8]}")
    backbone = from_hf_data2vec_vision(hf_state, depth=depth, prefix="beit.")
    out = {f"backbone.{k}": v for k, v in backbone.items()}
    out["backbone.encoder.norm.weight"] = hf_state["layernorm.weight"]
    out["backbone.encoder.norm.bias"] = hf_state["layernorm.bias"]
    out["head.weight"] = hf_state["lm_head.weight"]
    out["head.bias"] = hf_state["lm_head.bias"]
    return out


def beit_config_to_unimim(hf_config: Any) -> tuple[ImageAdapterConfig, EncoderConfig, int]:
    """(adapter config, encoder config with a final norm, vocabulary size K) equivalent to a ``BeitConfig``."""
    if not getattr(hf_config, "use_mean_pooling", True):
        raise ValueError("use_mean_pooling=False: BeitForMaskedImageModeling then normalises twice (unsupported)")
    adapter, encoder = hf_config_to_unimim(hf_config)
    encoder.final_norm = True  # the MIM head's layernorm
    return adapter, encoder, int(hf_config.vocab_size)

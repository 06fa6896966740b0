"""The transformer blocks of a timm ViT behind unimim's encoder interface (``encoder.backend: timm``).

Design: the modality adapter embeds, timm's blocks encode. Of ``timm.create_model(encoder.timm_model,
pretrained=False, **kwargs)`` (a ``timm.models.vision_transformer.VisionTransformer``) the encoder keeps what
timm's ``forward_features`` runs after the embedding: ``norm_pre`` -> ``blocks`` -> ``norm``. timm's embedding
(``patch_embed``, ``cls_token``, ``pos_embed``, ``pos_drop``, ``patch_drop``) and head (``fc_norm``, ``head``,
``attn_pool``) are dropped: the adapter's patch embedding, cls token, positions (learned, sin-cos or the relative
bias, passed to timm's attention as its additive mask) and mask token take their place, so that nothing sits
unused in the optimizer or the teacher. Register tokens, part of timm's embedding, are refused.

The settings are those of :class:`~unimim.nn.encoder.EncoderConfig` (``cfg`` below), whose ``__post_init__`` calls
:func:`check_timm_config`; this module does not import it, so that ``unimim.nn.encoder`` can dispatch to it.

The parameter names are those of :class:`~unimim.nn.encoder.TransformerEncoder` (``blocks.{i}.norm1``,
``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls1.gamma``, ``ls2.gamma``, ``norm``): where the
architectures agree (pre-LN ViT, exact GELU, no q/k norm) a state dict of one loads into the other, and both
compute the same function.

What is checked when the config loads (:func:`check_timm_config`, on a model built on the ``meta`` device):

* the model is a timm ``VisionTransformer`` whose blocks are timm's pre-LN ``Block`` with timm's ``Attention`` and
  ``Mlp``: their sub-modules are run one by one here to return the FFN output before the residual, which is
  therefore exact for data2vec's ``target_source: ffn`` as well as ``block``; other block types are refused;
* ``encoder.dim`` / ``depth`` / ``num_heads`` equal timm's width / number of blocks / heads (``timm_size: model``),
  or are passed to timm (``timm_size: encoder``, which tiny runs and size sweeps use);
* the other architecture fields describe the timm model: ``mlp_ratio`` (hidden width), ``qkv_bias`` (true / false;
  BEiT's ``qv`` has no timm ``Attention`` form), ``norm_first: true``, ``final_norm`` (``norm`` is a LayerNorm),
  ``layer_scale_init`` (timm ``init_values``), ``norm_eps``; ``init_std`` stays 0.02 (timm initialises its own
  blocks, truncated normal 0.02 by default; change that with ``timm_kwargs.weight_init``);
* regularisation comes from the encoder config: ``drop_path`` -> ``drop_path_rate`` (the same linear rule per block),
  ``dropout`` -> ``proj_drop_rate`` (timm's MLP also drops after its activation with it, so ``act_dropout`` must be
  null or equal), ``attn_dropout`` -> ``attn_drop_rate``; ``timm_kwargs`` may not set these, nor the rates of the
  dropped embedding and head, nor anything that loads weights (``pretrained``, ``checkpoint_path``,
  ``pretrained_cfg``): weights enter through the converters (``modalities/image/interop/convert_timm.py``).
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from unimim.nn.encoder_output import EncoderOutput
from unimim.nn.tokens import Tokens

# timm_kwargs that the encoder config owns, or that act on parts of the timm model that are dropped
_RESERVED = {
    "pretrained": "weights are never loaded here; convert them (modalities/image/interop/convert_timm.py)",
    "checkpoint_path": "weights are never loaded from a file here; convert them (modalities/image/interop)",
    "pretrained_cfg": "weights are never loaded here",
    "pretrained_cfg_overlay": "weights are never loaded here",
    "drop_path_rate": "set encoder.drop_path",
    "proj_drop_rate": "set encoder.dropout",
    "attn_drop_rate": "set encoder.attn_dropout",
    "drop_rate": "it acts on timm's embedding and head, which the adapter replaces",
    "pos_drop_rate": "it acts on timm's embedding, which the adapter replaces",
    "patch_drop_rate": "it acts on timm's embedding, which the adapter replaces",
}
_SIZE = {"embed_dim": "dim", "depth": "depth", "num_heads": "num_heads"}  # timm argument -> encoder field


def create_timm_vit(cfg: Any, device: str | torch.device | None = None) -> nn.Module:
    """``timm.create_model(cfg.timm_model, pretrained=False, ...)`` with the encoder's regularisation (and, with
    ``timm_size: encoder``, its size), on ``device`` (``"meta"``: no memory, for checks). Bad names and arguments
    are a one-line ValueError."""
    import timm

    name = cfg.timm_model
    if not name:
        raise ValueError("encoder.backend: timm needs encoder.timm_model (e.g. vit_small_patch16_224)")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models("vit_*"), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"encoder.timm_model={name!r} is not a timm model{hint}")
    kwargs = dict(cfg.timm_kwargs)
    for key in kwargs:
        if key in _RESERVED:
            raise ValueError(f"encoder.timm_kwargs.{key} is not accepted: {_RESERVED[key]}")
        if cfg.timm_size == "encoder" and key in _SIZE:
            raise ValueError(f"encoder.timm_kwargs.{key} is not accepted with encoder.timm_size: encoder "
                             f"(set encoder.{_SIZE[key]})")
    if cfg.timm_size == "encoder":
        kwargs.update(embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads)
    kwargs.update(drop_path_rate=cfg.drop_path, proj_drop_rate=cfg.dropout, attn_drop_rate=cfg.attn_dropout)
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise ValueError(f"timm.create_model({name!r}, **encoder.timm_kwargs) failed with timm_kwargs="
                         f"{cfg.timm_kwargs}: {type(e).__name__}: {e}") from None


def check_timm_model(model: nn.Module, cfg: Any) -> None:
    """ValueError naming every encoder setting that does not describe ``model`` (built by :func:`create_timm_vit`),
    or the part of it this backend cannot run exactly."""
    from timm.layers import Attention, LayerScale, Mlp
    from timm.models.vision_transformer import Block, VisionTransformer

    name = cfg.timm_model
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"encoder.timm_model={name!r} builds a timm {type(model).__name__}; encoder.backend: timm "
                         "takes the blocks of a timm VisionTransformer (vit_*, deit_*)")
    if getattr(model, "num_reg_tokens", 0):
        raise ValueError(f"encoder.timm_model={name!r} has register tokens, which belong to timm's embedding; the "
                         "adapter replaces that embedding and has none (use a model without reg_tokens)")
    for i, block in enumerate(model.blocks):
        parts = ((block, Block, "block"), (getattr(block, "attn", None), Attention, "attention"),
                 (getattr(block, "mlp", None), Mlp, "MLP"))
        for module, kind, what in parts:
            if type(module) is not kind:
                raise ValueError(f"encoder.timm_model={name!r}: block {i} has a {type(module).__name__} {what}; "
                                 f"encoder.backend: timm runs timm's {kind.__name__} (pre-LN ViT block, Attention, "
                                 "Mlp), whose FFN output it can return exactly")
    block = model.blocks[0]
    width, heads = int(model.embed_dim), int(block.attn.num_heads)
    hidden = int(block.mlp.fc1.out_features)
    ls = block.ls1.init_values if isinstance(block.ls1, LayerScale) else None
    eps = getattr(block.norm1, "eps", None)
    wrong = []
    for field, ours, theirs, what in (
        ("dim", cfg.dim, width, "embed_dim"),
        ("depth", cfg.depth, len(model.blocks), "blocks"),
        ("num_heads", cfg.num_heads, heads, "heads"),
    ):
        if ours != theirs:
            wrong.append(f"encoder.{field}={ours} but the timm model has {what}={theirs}")
    size_wrong = bool(wrong)
    if int(block.attn.attn_dim) != width:
        wrong.append(f"the timm model's attention width {block.attn.attn_dim} differs from its width {width} "
                     "(attn_head_dim); unimim's encoder has heads x head width = dim")
    if int(width * cfg.mlp_ratio) != hidden:
        wrong.append(f"encoder.mlp_ratio={cfg.mlp_ratio} but the timm model's MLP is {hidden} wide "
                     f"(mlp_ratio={hidden / width:g}; timm_kwargs.mlp_ratio sets timm's)")
    if cfg.qkv_bias not in (True, False) or cfg.qkv_bias != (block.attn.qkv.bias is not None):
        wrong.append(f"encoder.qkv_bias={cfg.qkv_bias!r} but the timm model has qkv_bias="
                     f"{block.attn.qkv.bias is not None} (timm_kwargs.qkv_bias; timm's Attention has no q/v-only bias)")
    if not cfg.norm_first:
        wrong.append("encoder.norm_first=false but timm's Block is pre-LN")
    if cfg.final_norm != (not isinstance(model.norm, nn.Identity)):
        wrong.append(f"encoder.final_norm={cfg.final_norm} but the timm model "
                     f"{'has no' if isinstance(model.norm, nn.Identity) else 'has a'} final norm "
                     "(timm_kwargs.global_pool: avg moves it to the head)")
    if cfg.layer_scale_init != ls:
        wrong.append(f"encoder.layer_scale_init={cfg.layer_scale_init} but the timm model has init_values={ls} "
                     "(timm_kwargs.init_values sets timm's layer scale)")
    if eps is not None and abs(cfg.norm_eps - eps) > 1e-12:
        wrong.append(f"encoder.norm_eps={cfg.norm_eps} but the timm model's norms have eps={eps}")
    if cfg.init_std != 0.02:
        wrong.append(f"encoder.init_std={cfg.init_std}: timm initialises its own blocks (timm_kwargs.weight_init); "
                     "leave init_std at 0.02")
    if cfg.act_dropout is not None and cfg.act_dropout != cfg.dropout:
        wrong.append(f"encoder.act_dropout={cfg.act_dropout}: timm's Mlp drops after its activation with "
                     f"encoder.dropout={cfg.dropout}; leave act_dropout null")
    if wrong:
        how = "make the encoder settings and timm's agree"
        if size_wrong and cfg.timm_size == "model":
            how += " (or encoder.timm_size: encoder to size the timm model from encoder.dim / depth / num_heads)"
        raise ValueError(f"encoder.backend: timm ({name}): " + "; ".join(wrong) + f"; {how}")


def check_timm_config(cfg: Any) -> None:
    """The config-load check of ``encoder.backend: timm``: the model is built on the ``meta`` device (no memory, no
    weights) and compared with the encoder settings (:func:`check_timm_model`)."""
    check_timm_model(create_timm_vit(cfg, device="meta"), cfg)


def attention_mask(tokens: Tokens, dtype: torch.dtype) -> Tensor | None:
    """The padding mask and additive bias of ``tokens`` as the ``attn_mask`` of timm's Attention (SDPA semantics):
    None; (B, 1, 1, T) bool, True = attend; or (1 | B, H, T, T) additive in ``dtype`` (bias, -inf at padding)."""
    pad, bias = tokens.padding_mask, tokens.attn_bias
    if bias is None:
        return None if pad is None else ~pad[:, None, None, :]  # (B, T) -> (B, 1, 1, T)
    mask = bias.to(dtype)
    if pad is not None:
        fill = torch.zeros(pad.shape, dtype=dtype, device=pad.device).masked_fill(pad, float("-inf"))  # (B, T)
        mask = mask + fill[:, None, None, :]  # (1 | B, H, T, T) + (B, 1, 1, T) -> (B, H, T, T)
    return mask


# timm's attention calls SDPA itself: on the CPU its math kernel (which casts bf16 to fp32) beats the fused one up to
# ~128 tokens (benchmarks/attention_cpu.py, before unimim.nn.attention got its explicit bf16 path)
TIMM_CPU_MATH_MAX_TOKENS = 128


def run_block(block: nn.Module, x: Tensor, attn_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """timm's ``Block.forward`` step by step, to keep the FFN output: x (B, T, D) -> (block output (B, T, D),
    FFN output before layer scale and residual (B, T, D)), as :class:`unimim.nn.block.Block` returns them."""
    short_on_cpu = x.device.type == "cpu" and x.shape[1] <= TIMM_CPU_MATH_MAX_TOKENS
    with sdpa_kernel(SDPBackend.MATH) if short_on_cpu else contextlib.nullcontext():
        x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x), attn_mask=attn_mask)))
    ffn = block.mlp(block.norm2(x))
    x = x + block.drop_path2(block.ls2(ffn))
    return x, ffn


class TimmEncoder(nn.Module):
    """timm ViT blocks over :class:`Tokens`, with the interface of :class:`~unimim.nn.encoder.TransformerEncoder`:
    ``forward(tokens) -> EncoderOutput`` (final output after timm's final norm, every block output, every FFN
    output), on full sequences (mask tokens substituted) or the visible subset (``tokens.select``); padding and the
    additive bias become timm's attention mask; drop path and dropout are timm's, at the encoder config's rates;
    ``grad_checkpointing`` recomputes each block in the backward pass."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        model = create_timm_vit(cfg)
        check_timm_model(model, cfg)
        self.norm_pre = model.norm_pre
        self.blocks = model.blocks
        self.norm = model.norm

    def forward(self, tokens: Tokens) -> EncoderOutput:
        """tokens.x: (B, T, D) -> EncoderOutput with x (B, T, D) and L per-layer tensors (B, T, D)."""
        x = tokens.x
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        mask = attention_mask(tokens, dtype)
        x = self.norm_pre(x)
        layers, ffn = [], []
        recompute = self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # only the block inputs are kept; the RNG state is replayed (dropout, drop path)
                x, f = checkpoint(run_block, block, x, mask, use_reentrant=False)
            else:
                x, f = run_block(block, x, mask)
            layers.append(x)
            ffn.append(f)
        return EncoderOutput(x=self.norm(x), layers=layers, ffn=ffn)


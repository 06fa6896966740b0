"""Speech adapter: raw 16 kHz waveform -> frame tokens for the transformer (wav2vec 2.0 / data2vec speech layout).

waveform (B, S) -> conv feature encoder (B, C, N) -> LayerNorm(C) -> Linear(C, D)       (``local``: once per example)
-> learned mask embedding at masked frames (zeros when the student drops them) -> padded frames zeroed
-> + convolutional positions -> LayerNorm(D) -> Tokens (B, N, D)                       (``embed_features``).

The last LayerNorm is the one the post-LN data2vec speech encoder applies before its first block (fairseq
``encoder.layer_norm``, HF ``encoder.layer_norm``); it lives here so that the core encoder stays a plain stack of
blocks. Ref: Baevski et al. 2022 (data2vec) §4.2 and fairseq examples/data2vec/models/data2vec_audio.py@3d262bb
``forward``; HF ``Data2VecAudioModel`` (data2vec.md §6.2). Teacher/student sharing: the recipes list the feature
encoder, its norm, the projection and the positional conv in ``method.ema.copy`` (copied, not averaged), which
reproduces the reference's shared CNN and copied positional conv (data2vec.md §2, "What is EMA'd").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from modalities.base import Tokens
from modalities.speech.model.feature_encoder import WAV2VEC2_CONV, ConvFeatureEncoder, frame_padding_mask
from modalities.speech.model.pos_conv import PositionalConv

# the parameters the reference shares between student and teacher or copies into the teacher (method.ema.copy)
SHARED_WITH_TEACHER: tuple[str, ...] = (
    "adapter.feature_encoder.", "adapter.feature_norm.", "adapter.projection.", "adapter.pos_conv.",
)


@dataclass
class SpeechAdapterConfig:
    conv_layers: list[tuple[int, int, int]] = field(default_factory=lambda: [list(c) for c in WAV2VEC2_CONV])
    conv_norm: Literal["layer", "group"] = "layer"  # layer: data2vec; group: wav2vec 2.0 base
    conv_bias: bool = False
    pos_conv_depth: int = 5     # data2vec: 5 layers
    pos_conv_kernel: int = 19   # data2vec: 19 (95 / 5)
    pos_conv_groups: int = 16

    def __post_init__(self) -> None:
        self.conv_layers = [tuple(int(v) for v in c) for c in self.conv_layers]  # type: ignore[misc]
        if not self.conv_layers or any(len(c) != 3 or min(c) < 1 for c in self.conv_layers):
            raise ValueError("adapter.conv_layers must be a non-empty list of [channels, kernel, stride] triples of "
                             f"positive integers, got {self.conv_layers}")

    @property
    def frame_stride(self) -> int:
        """Samples between consecutive frames (320 for wav2vec 2.0)."""
        stride = 1
        for _, _, s in self.conv_layers:
            stride *= s
        return stride


class SpeechAdapter(nn.Module):
    """(B, S) waveforms -> Tokens with x (B, N, D) and the frame padding mask (B, N); no prefix tokens."""

    num_prefix_tokens = 0

    def __init__(self, cfg: SpeechAdapterConfig, *, dim: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_encoder = ConvFeatureEncoder(cfg.conv_layers, norm=cfg.conv_norm, bias=cfg.conv_bias)
        channels = self.feature_encoder.out_channels
        self.feature_norm = nn.LayerNorm(channels, eps=norm_eps)
        self.projection = nn.Linear(channels, dim)
        self.mask_emb = nn.Parameter(torch.empty(dim).uniform_())
        self.pos_conv = PositionalConv(dim, depth=cfg.pos_conv_depth, kernel=cfg.pos_conv_kernel,
                                       groups=cfg.pos_conv_groups)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def frames(self, inputs: Tensor) -> Tensor:
        """Local features before masking: (B, S) -> (B, N, D)."""
        feats = self.feature_encoder(inputs).transpose(1, 2)  # (B, C, N) -> (B, N, C)
        return self.projection(self.feature_norm(feats))  # (B, N, D)

    def local(self, inputs: Tensor, padding_mask: Tensor | None = None) -> Tokens:
        """The local encoder (conv feature encoder, norm, projection), run once per example: inputs (B, S) float
        waveforms, padding_mask (B, S) bool (True = padded sample, right padding) -> Tokens(x (B, N, D), frame
        padding mask (B, N) | None). Each frame sees only its own receptive field of the waveform."""
        if padding_mask is not None and padding_mask.shape != inputs.shape:
            raise ValueError(f"padding_mask {tuple(padding_mask.shape)} must match the waveforms "
                             f"{tuple(inputs.shape)}")
        x = self.frames(inputs)  # (B, N, D)
        pad = None
        if padding_mask is not None:
            pad = frame_padding_mask(padding_mask, x.shape[1], self.cfg.conv_layers)  # (B, S) -> (B, N)
        return Tokens(x=x, padding_mask=pad)

    def embed_features(self, local: Tokens, mask: Tensor | None = None, *, drop_masked: bool = False) -> Tokens:
        """Local features (B, N, D) -> Tokens for the encoder: masked frames replaced by the mask embedding, or,
        with ``drop_masked`` (the student will see only the visible frames), zeroed *before* the positional conv,
        so that no visible frame carries the content of a masked one (the reference's ``encoder_zero_mask``,
        fairseq examples/data2vec/models/modalities/base.py ``apply_mask`` before ``relative_positional_encoder``);
        padded frames zeroed; + positional conv; LayerNorm."""
        x, pad = local.x, local.padding_mask
        if mask is not None:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match the {tuple(x.shape[:2])} frames of "
                                 "the waveforms")
            fill = x.new_zeros(()) if drop_masked else self.mask_emb.to(x.dtype)
            x = torch.where(mask.unsqueeze(-1), fill, x)  # (B, N, D)
        if pad is not None:
            x = x.masked_fill(pad.unsqueeze(-1), 0.0)  # padded frames do not leak into the positional conv
        x = self.norm(x + self.pos_conv(x))
        return Tokens(x=x, padding_mask=pad)

    def embed(self, inputs: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None) -> Tokens:
        """inputs: (B, S) float waveforms; mask: (B, N) bool, True = frame replaced by the mask embedding;
        padding_mask: (B, S) bool, True = padded sample (right padding). Returns Tokens(x (B, N, D),
        padding_mask (B, N) | None). = ``embed_features(local(inputs, padding_mask), mask)``."""
        return self.embed_features(self.local(inputs, padding_mask), mask)

"""The wav2vec 2.0 convolutional waveform encoder and the frame geometry it implies.

Baevski, Zhou, Mohamed, Auli. "wav2vec 2.0", NeurIPS 2020, §2 (feature encoder): temporal convolutions over raw
16 kHz audio, (channels, kernel, stride) = (512, 10, 5), (512, 3, 2) x 4, (512, 2, 2) x 2 -> one 512-d frame every
320 samples (20 ms), receptive field 400 samples (25 ms). data2vec speech (Baevski et al. 2022, §4.2) uses the
"layer" mode: a LayerNorm over channels after every convolution, no conv bias. wav2vec 2.0 base uses the "group"
mode: one GroupNorm (a group per channel, i.e. a per-channel norm over time) after the first convolution only.
Ref: fairseq fairseq/models/wav2vec/wav2vec2.py@3d262bb ``ConvFeatureExtractionModel`` and
``_get_feat_extract_output_lengths``; shared/reference/data2vec.md §2 (speech column), §6.2 (HF layout).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ConvSpec = Sequence[Sequence[int]]  # ((channels, kernel, stride), ...)

WAV2VEC2_CONV: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


def conv_output_lengths(lengths: Tensor, conv_layers: ConvSpec) -> Tensor:
    """Frames produced from ``lengths`` samples by unpadded strided convolutions: L <- floor((L - k) / s) + 1 per
    layer (0 when the input is shorter than the receptive field). lengths: (B,) long -> (B,) long."""
    out = lengths.long()
    for _, k, s in conv_layers:
        out = torch.div(out - k, s, rounding_mode="floor") + 1
        out = out.clamp_min(0)
    return out


def receptive_field(conv_layers: ConvSpec) -> int:
    """Samples needed for one output frame (400 for wav2vec 2.0)."""
    field, jump = 1, 1
    for _, k, s in conv_layers:
        field += (k - 1) * jump
        jump *= s
    return field


def frame_padding_mask(padding_mask: Tensor, num_frames: int, conv_layers: ConvSpec) -> Tensor:
    """Frame-level padding from the sample-level one, exactly: frame t is padding iff t >= frames(valid samples).

    padding_mask: (B, S) bool, True = padding, padding at the end of each row only. Returns (B, N) bool.
    """
    if padding_mask.dim() != 2 or padding_mask.dtype != torch.bool:
        raise ValueError(f"padding_mask must be a (B, S) bool tensor, got {tuple(padding_mask.shape)} "
                         f"{padding_mask.dtype}")
    valid = (~padding_mask).sum(dim=1)  # (B,)
    positions = torch.arange(padding_mask.shape[1], device=padding_mask.device)
    if not bool(torch.equal(padding_mask, positions[None, :] >= valid[:, None])):
        raise ValueError("padding_mask must mark a suffix of each row (right padding); got padding before real "
                         "samples")
    frames = conv_output_lengths(valid, conv_layers)  # (B,)
    if bool((frames == 0).any()):
        rows = torch.nonzero(frames == 0).flatten().tolist()
        raise ValueError(f"rows {rows} have fewer real samples than the feature encoder's receptive field "
                         f"({receptive_field(conv_layers)} samples)")
    return torch.arange(num_frames, device=padding_mask.device)[None, :] >= frames[:, None]  # (B, N)


class ConvLayer(nn.Module):
    """Conv1d (no bias by default) -> optional norm -> GELU. (B, C_in, S) -> (B, C_out, S')."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, *, norm: Literal["layer", "group", "none"],
                 bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.norm_kind = norm
        if norm == "layer":
            self.norm: nn.Module = nn.LayerNorm(c_out, elementwise_affine=True)  # over channels, per frame
        elif norm == "group":
            self.norm = nn.GroupNorm(c_out, c_out, affine=True)  # per channel over time
        else:
            self.norm = nn.Identity()
        nn.init.kaiming_normal_(self.conv.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm_kind == "layer":
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)  # (B, C, S') -> (B, S', C) -> (B, C, S')
        else:
            x = self.norm(x)
        return F.gelu(x)


class ConvFeatureEncoder(nn.Module):
    """Raw waveform (B, S) -> features (B, C, N), N = conv_output_lengths(S).

    ``norm="layer"``: LayerNorm after every conv (data2vec); ``norm="group"``: GroupNorm after the first conv only
    (wav2vec 2.0 base).
    """

    def __init__(self, conv_layers: ConvSpec, *, norm: Literal["layer", "group"] = "layer",
                 bias: bool = False) -> None:
        super().__init__()
        if norm not in ("layer", "group"):
            raise ValueError(f"adapter.conv_norm must be 'layer' or 'group', got {norm!r}")
        self.conv_layers = tuple(tuple(int(v) for v in spec) for spec in conv_layers)
        layers = []
        c_in = 1
        for i, (c, k, s) in enumerate(self.conv_layers):
            layer_norm = "layer" if norm == "layer" else ("group" if i == 0 else "none")
            layers.append(ConvLayer(c_in, c, k, s, norm=layer_norm, bias=bias))
            c_in = c
        self.layers = nn.ModuleList(layers)
        self.out_channels = c_in
        self.receptive_field = receptive_field(self.conv_layers)

    def forward(self, wave: Tensor) -> Tensor:
        if wave.dim() != 2:
            raise ValueError(f"expected a batch of mono waveforms (B, S), got shape {tuple(wave.shape)}")
        if wave.shape[1] < self.receptive_field:
            raise ValueError(f"waveforms of {wave.shape[1]} samples are shorter than the feature encoder's "
                             f"receptive field ({self.receptive_field} samples)")
        x = wave.unsqueeze(1)  # (B, S) -> (B, 1, S)
        for layer in self.layers:
            x = layer(x)
        return x  # (B, C, N)

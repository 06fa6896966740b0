"""The raw-input baseline of speech: log-mel features of the waveform, mean and std pooled over the valid frames.

Features: torchaudio's ``MelSpectrogram`` (power spectrum of a periodic Hann window of 25 ms, hop 10 ms, FFT size
= window, no centring: frame ``t`` covers samples ``[t * hop, t * hop + win)``; 80 triangular HTK-scale mel filters
from 0 Hz to Nyquist, unnormalised), then ``log(mel + 1e-6)``. A row's valid frames are those that lie wholly
inside its real samples (``1 + (length - win) // hop``, at least one: a clip shorter than a window is zero-padded
to one window), so right padding of the batch never changes a row's features. Pooled: ``cat([mean, std])`` of the
valid frames (population std) -> (B, 2 * 80) = (B, 160).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor

from modalities.speech.data.manifest import TARGET_RATE
from unimim.core.batch import Batch

LOG_EPS = 1e-6


class LogMelFeatures:
    """Pooled log-mel: a batch's (B, S) waveforms with their (B, S) sample padding mask -> (B, 2 * n_mels) float32
    (the mean over valid frames of each mel bin, then their std). Needs no fitting; dense (standardised by the
    baseline)."""

    dense = True

    def __init__(self, sample_rate: int = TARGET_RATE, n_mels: int = 80, window_ms: float = 25.0,
                 hop_ms: float = 10.0) -> None:
        if sample_rate < 1 or n_mels < 1 or not 0 < hop_ms <= window_ms:
            raise ValueError(f"log-mel needs sample_rate >= 1, n_mels >= 1 and 0 < hop <= window, got "
                             f"{sample_rate}, {n_mels}, {hop_ms} ms, {window_ms} ms")
        self.sample_rate, self.n_mels = sample_rate, n_mels
        self.win = round(sample_rate * window_ms / 1000)
        self.hop = round(sample_rate * hop_ms / 1000)
        self.name = f"log-mel, {n_mels} bins, mean + std pooled"
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=self.win, win_length=self.win, hop_length=self.hop, f_min=0.0,
            f_max=sample_rate / 2, n_mels=n_mels, power=2.0, center=False, norm=None, mel_scale="htk")

    def fit(self, batches: Iterable[Batch]) -> None:
        del batches  # nothing to learn

    def valid_frames(self, lengths: Tensor) -> Tensor:
        """(B,) real sample counts -> (B,) frames lying wholly inside them (at least 1)."""
        return (1 + (lengths - self.win).clamp_min(0) // self.hop).clamp_min(1)

    @torch.no_grad()
    def transform(self, batch: Batch) -> Tensor:
        x = batch.inputs
        if x is None or x.dim() != 2:
            raise ValueError(f"log-mel features need (B, S) waveforms, got {None if x is None else tuple(x.shape)}")
        x = x.float()
        b, s = x.shape
        if batch.padding_mask is not None:
            pad = batch.padding_mask.bool()  # (B, S), right padding
            x = x.masked_fill(pad, 0.0)
            lengths = (~pad).sum(dim=1)  # (B,)
        else:
            lengths = torch.full((b,), s, device=x.device)
        if s < self.win:
            x = F.pad(x, (0, self.win - s))  # (B, S) -> (B, win)
        self.mel = self.mel.to(x.device)
        logmel = torch.log(self.mel(x) + LOG_EPS)  # (B, n_mels, T)
        t = logmel.shape[-1]
        keep = torch.arange(t, device=x.device)[None, :] < self.valid_frames(lengths)[:, None]  # (B, T)
        w = keep.to(logmel.dtype).unsqueeze(1)  # (B, 1, T)
        n = w.sum(dim=-1)  # (B, 1)
        mean = (logmel * w).sum(dim=-1) / n  # (B, n_mels)
        var = (((logmel - mean.unsqueeze(-1)) ** 2) * w).sum(dim=-1) / n  # (B, n_mels)
        return torch.cat([mean, var.sqrt()], dim=1)  # (B, 2 * n_mels)


def logmel_baseline(cfg: Any) -> LogMelFeatures:
    """The speech modality's ``ModalitySpec.raw_baseline``: 80-bin log-mel at the data's 16 kHz."""
    del cfg
    return LogMelFeatures(sample_rate=TARGET_RATE)

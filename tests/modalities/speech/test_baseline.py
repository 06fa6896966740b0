"""The speech raw-input baseline: log-mel pooled over the valid frames (padding changes nothing; a tone peaks in
its mel bin, from the hand-computed HTK mel scale)."""

from __future__ import annotations

import math

import pytest
import torch

from modalities.speech import SPEECH
from modalities.speech.baseline import LogMelFeatures
from modalities.speech.data.labelled import LabelledCollate
from unimim.core.batch import Batch

RATE = 16_000
CONV = ((16, 10, 5), (16, 3, 2))


def _collate(waves: list[torch.Tensor]) -> Batch:
    return LabelledCollate("classification", CONV)([(w, 0) for w in waves])


def test_a_padded_clip_has_the_features_of_the_clip_alone():
    g = torch.Generator().manual_seed(0)
    extractor = SPEECH.raw_baseline(None)
    for n in (7_003, 300):  # a clip of many frames, and one shorter than a window
        clip = torch.randn(n, generator=g)
        batch = _collate([clip, torch.randn(12_000, generator=g)])
        assert batch.padding_mask is not None and bool(batch.padding_mask[0].any())
        padded = extractor.transform(batch)  # (2, 160)
        alone = extractor.transform(Batch(inputs=clip[None]))  # (1, 160)
        assert padded.shape == (2, 160)
        torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=0)


def test_valid_frames_are_the_whole_windows():
    extractor = LogMelFeatures()
    assert (extractor.win, extractor.hop) == (400, 160)  # 25 ms / 10 ms at 16 kHz
    frames = extractor.valid_frames(torch.tensor([16_000, 400, 559, 560, 10]))
    assert frames.tolist() == [1 + (16_000 - 400) // 160, 1, 1, 2, 1]
    # the mean of a batch without padding is over every frame torchaudio makes
    x = torch.randn(1, 16_000, generator=torch.Generator().manual_seed(1))
    logmel = torch.log(extractor.mel(x) + 1e-6)  # (1, 80, T)
    assert logmel.shape[-1] == 98
    torch.testing.assert_close(extractor.transform(Batch(inputs=x))[0, :80], logmel[0].mean(dim=-1))


def _mel_centre(k: int, n_mels: int = 80) -> float:
    """Centre frequency (Hz) of mel bin k: HTK mel = 2595 log10(1 + f / 700), n_mels + 2 equally spaced points from
    0 to 8 kHz."""
    top = 2595.0 * math.log10(1.0 + 8000.0 / 700.0)
    m = (k + 1) * top / (n_mels + 1)
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@pytest.mark.parametrize("k", [20, 40, 65])
def test_a_pure_tone_peaks_in_its_mel_bin(k):
    f = _mel_centre(k)
    t = torch.arange(RATE) / RATE
    tone = torch.sin(2 * math.pi * f * t)[None]  # (1, S)
    mean = LogMelFeatures().transform(Batch(inputs=tone))[0, :80]
    assert int(mean.argmax()) == k

"""Tiny on-the-fly speech data: tones and noise bursts written as wav/flac/ogg files, so smoke runs and tests need
no prepared data (``make data-speech``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from modalities.speech.data.manifest import build_manifest, write_manifest

WORDS = ("low", "mid", "high")
FREQS = {"low": 300.0, "mid": 900.0, "high": 2200.0}


def tone(freq: float, seconds: float, rate: int, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * (1 + 0.05 * rng.standard_normal()) * t)
    wave = wave + 0.05 * rng.standard_normal(t.shape)
    return np.stack([wave] * channels, axis=1).astype(np.float32) if channels > 1 else wave.astype(np.float32)


def write_tiny_speech(root: Path) -> dict[str, Path]:
    """Unlabeled pretraining files (mixed rates, channels, formats, lengths) and a labeled 3-word keyword set split
    by 'voice' (random pitch jitter per voice). Returns the manifest paths."""
    root = Path(root)
    unl = root / "unlabeled"
    unl.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(24):
        rate = (16_000, 44_100, 8_000)[i % 3]
        ext = ("wav", "flac", "ogg")[i % 3]
        seconds = float(rng.uniform(0.6, 1.6))
        wave = tone(float(rng.uniform(200, 3000)), seconds, rate, seed=i, channels=1 + i % 2)
        sf.write(unl / f"utt{i:02d}.{ext}", wave, rate)
    pre = root / "pretrain.tsv"
    write_manifest(build_manifest(unl), pre)
    out = {"pretrain": pre}
    for split, voices in (("train", range(8)), ("test", range(8, 11))):
        wav = root / "kw" / split
        for v in voices:
            for w in WORDS:
                d = wav / w
                d.mkdir(parents=True, exist_ok=True)
                sf.write(d / f"voice{v}.wav", tone(FREQS[w], 0.5 + 0.05 * v, 16_000, seed=100 + v), 16_000)
        path = root / f"{split}.tsv"
        write_manifest(build_manifest(wav, labels_from_parent=True), path)
        out[split] = path
    return out


def tiny_data(directory: Path) -> list[str]:
    """Write the tiny data set into ``directory`` (once) and return the overrides that point a speech recipe at it."""
    directory = Path(directory)
    paths = {"pretrain": directory / "pretrain.tsv", "train": directory / "train.tsv", "test": directory / "test.tsv"}
    if not all(p.is_file() for p in paths.values()):
        paths = write_tiny_speech(directory)
    return [f"data.manifest={paths['pretrain']}", f"data.eval_train_manifest={paths['train']}",
            f"data.eval_test_manifest={paths['test']}"]

"""Manifests, audio loading (resampling, mix-down, normalisation), bad-file policy, batches and their masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from modalities.speech.data.dataset import AudioDataset, KeywordDataset, SpeechDataConfig, fit_clip, load_audio
from modalities.speech.data.manifest import Manifest, build_manifest, read_manifest, write_manifest
from modalities.speech.data.source import BatchSpec, SpeechPretrainSource
from modalities.speech.masking import SpeechMaskConfig
from unimim.train.data import make_loader

CONV = ((8, 10, 5), (8, 3, 2), (8, 2, 2))  # 20 samples per frame, receptive field 25


def test_manifest_round_trip_and_errors(tmp_path):
    m = Manifest(root=tmp_path, paths=["a.wav", "b/c.flac"], lengths=[16000, 800], labels=["yes", "no"])
    write_manifest(m, tmp_path / "x.tsv")
    assert (tmp_path / "x.tsv").read_text().splitlines() == [str(tmp_path), "a.wav\t16000", "b/c.flac\t800"]
    back = read_manifest(tmp_path / "x.tsv", labels=True)
    assert back.paths == m.paths and back.lengths == m.lengths and back.labels == m.labels
    (tmp_path / "bad.tsv").write_text(f"{tmp_path}\na.wav 16000\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2: expected 'relative_path<TAB>num_samples'"):
        read_manifest(tmp_path / "bad.tsv")
    with pytest.raises(FileNotFoundError, match="make data-speech"):
        read_manifest(tmp_path / "none.tsv", hint=" (make data-speech)")


def test_resampled_mixed_down_normalised(tmp_path):
    rate = 44_100
    t = np.arange(rate // 2) / rate
    left = np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, 0.5 * left], axis=1).astype(np.float32)
    sf.write(tmp_path / "s.ogg", stereo, rate)
    wave = load_audio(tmp_path / "s.ogg")
    assert wave.dtype == np.float32 and abs(wave.shape[0] - 8000) <= 1  # 0.5 s at 16 kHz
    assert abs(wave.mean()) < 1e-3 and abs(wave.std() - 1) < 1e-3
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16_000 / wave.shape[0] - 440) < 4  # the tone survives at its frequency
    sf.write(tmp_path / "n.wav", stereo[:, 0], 8_000)  # an 8 kHz file is resampled, not read as 16 kHz
    assert abs(load_audio(tmp_path / "n.wav", normalize=False).shape[0] - 2 * stereo.shape[0]) <= 1


def test_bad_files_are_skipped_and_counted(tmp_path, caplog):
    sf.write(tmp_path / "good.wav", np.random.default_rng(0).standard_normal(4000).astype(np.float32), 16_000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    sf.write(tmp_path / "nan.wav", np.full(4000, np.nan, dtype=np.float32), 16_000, subtype="FLOAT")
    built = build_manifest(tmp_path)  # the builder already drops unreadable and empty files
    assert built.paths == ["good.wav", "nan.wav"]
    manifest = Manifest(root=tmp_path, paths=["corrupt.wav", "empty.wav", "nan.wav", "good.wav"],
                        lengths=[4000] * 4)
    ds = AudioDataset(manifest, min_readable=25)
    wave, j = ds.read(0)
    assert j == 3 and wave.shape == (4000,)
    assert ds.num_skipped == 3 and len(ds.bad_paths) == 3
    assert "skipping unreadable audio" in caplog.text


def test_length_filter_and_limit(tmp_path):
    m = Manifest(root=tmp_path, paths=["a", "b", "c"], lengths=[100, 20000, 30000])
    assert AudioDataset(m, min_samples=16000).paths == ["b", "c"]
    assert AudioDataset(m, min_samples=16000, limit=1).paths == ["b"]
    with pytest.raises(ValueError, match="at least 50000 samples"):
        AudioDataset(m, min_samples=50000)


def test_fit_clip_centres():
    w = np.arange(1, 5, dtype=np.float32)
    assert fit_clip(w, 8).tolist() == [0, 0, 1, 2, 3, 4, 0, 0]
    assert fit_clip(np.arange(10, dtype=np.float32), 4).tolist() == [3, 4, 5, 6]


def test_keyword_sets_share_classes(tiny_speech):
    train = KeywordDataset(read_manifest(tiny_speech["train"], labels=True), clip_samples=12000)
    test = KeywordDataset(read_manifest(tiny_speech["test"], labels=True), clip_samples=12000,
                          classes=train.classes)
    assert train.classes == ["high", "low", "mid"] and len(train) == 24 and len(test) == 9
    x, y = test[0]
    assert x.shape == (12000,) and train.classes[y] == read_manifest(tiny_speech["test"], labels=True).labels[0]
    with pytest.raises(ValueError, match="do not occur in the training split"):
        KeywordDataset(read_manifest(tiny_speech["test"], labels=True), clip_samples=12000, classes=["high"])


def _source(tiny_speech, mode: str, masking: SpeechMaskConfig | None = None) -> SpeechPretrainSource:
    ds = AudioDataset(read_manifest(tiny_speech["pretrain"]), min_samples=4000, min_readable=25)
    spec = BatchSpec(mode=mode, conv_layers=CONV, masking=masking or SpeechMaskConfig())
    return SpeechPretrainSource(ds, spec, max_samples=20000)


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_batches(tiny_speech, mode):
    src = _source(tiny_speech, mode)
    examples = [src.example(i, np.random.default_rng(i)) for i in range(6)]
    assert max(e["inputs"].shape[0] for e in examples) <= 20000
    batch = src.collate(examples)
    assert batch.mask.shape[1] == 1  # one mask per example
    mask = batch.mask[:, 0]  # (B, N)
    counts = mask.sum(dim=1)
    assert (counts == counts[0]).all() and counts[0] > 0  # require_same_masks
    n = mask.shape[1]
    assert n == BatchSpec(mode, CONV, SpeechMaskConfig()).num_frames(batch.inputs.shape[1])
    if mode == "crop":
        assert batch.padding_mask is None
        assert 0.3 < mask.float().mean() < 0.6
    else:
        pad = batch.padding_mask
        lengths = (~pad).sum(dim=1)
        assert torch.equal(pad, torch.arange(pad.shape[1])[None] >= lengths[:, None])  # right padding
        frames = torch.tensor([BatchSpec(mode, CONV, SpeechMaskConfig()).num_frames(int(v)) for v in lengths])
        padded_frames = torch.arange(n)[None] >= frames[:, None]
        assert not (mask & padded_frames).any()  # padded frames are never masked


def test_loader_is_deterministic_and_masks_come_from_workers(tiny_speech):
    src = _source(tiny_speech, "pad", SpeechMaskConfig(kind="block", prob=0.5, length=5, num_masks=2))

    def first(workers):
        it = iter(make_loader(src, batch_size=4, seed=3, num_workers=workers, collate_fn=src.collate))
        return [next(it) for _ in range(2)]

    a, b = first(0), first(2)
    for x, y in zip(a, b):
        assert x.mask.shape[1] == 2 and torch.equal(x.mask, y.mask)
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.padding_mask, y.padding_mask)


def test_config_errors():
    with pytest.raises(ValueError, match="batch_mode"):
        SpeechDataConfig(batch_mode="bucket")
    with pytest.raises(ValueError, match="min_samples"):
        SpeechDataConfig(min_samples=10, max_samples=5)


def test_path_is_named_when_data_is_missing(tmp_path):
    from modalities.speech.data.source import build_pretrain_source
    from modalities.speech.model.adapter import SpeechAdapterConfig

    cfg = SpeechDataConfig(manifest=str(tmp_path / "nope.tsv"))
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/nope.tsv does not exist.*make data-speech"):
        build_pretrain_source(cfg, SpeechMaskConfig(), SpeechAdapterConfig())
    assert Path(cfg.manifest).name == "nope.tsv"


def _noise(path: Path, samples: int, rate: int = 16_000, channels: int = 1, scale: float = 0.1,
           subtype: str | None = None) -> Path:
    wave = scale * np.random.default_rng(samples).standard_normal((samples, channels))
    sf.write(path, wave.astype(np.float32) if channels > 1 else wave[:, 0].astype(np.float32), rate, subtype=subtype)
    return path


def test_stale_manifest_is_refused_with_the_line_named(tmp_path):
    _noise(tmp_path / "ok.wav", 16_000)
    _noise(tmp_path / "short.wav", 500)  # listed as 16,000: it would pass min_samples and shrink every crop batch
    _noise(tmp_path / "fast.wav", 4_000, rate=8_000)  # 8,000 samples at 16 kHz, listed as 4,000 (file-rate frames)
    (tmp_path / "x.tsv").write_text(f"{tmp_path}\nok.wav\t16000\nshort.wav\t16000\nfast.wav\t4000\n")
    with pytest.raises(ValueError, match=r"x\.tsv:3: short\.wav is listed with 16000 samples but the file has 500 "
                                         r".*2 of 3 entries disagree.*stale.*build_manifest"):
        AudioDataset(read_manifest(tmp_path / "x.tsv"), min_samples=400)
    write_manifest(build_manifest(tmp_path), tmp_path / "x.tsv")  # rebuilt: accepted
    ds = AudioDataset(read_manifest(tmp_path / "x.tsv"), min_samples=400)
    assert sorted(ds.paths) == ["fast.wav", "ok.wav", "short.wav"]


def test_absurd_rates_channels_and_lengths_are_bounded_before_decoding(tmp_path, caplog):
    _noise(tmp_path / "ok.wav", 4_000)
    _noise(tmp_path / "one_hz.wav", 500, rate=1)  # 500 frames at 1 Hz: 8 M samples at 16 kHz
    _noise(tmp_path / "many.wav", 400, channels=33)
    _noise(tmp_path / "long.wav", 32_000)  # 2 s
    built = build_manifest(tmp_path)  # the builder leaves out what it cannot read
    assert built.paths == ["long.wav", "ok.wav"]
    from modalities.speech.data.manifest import AudioHeader, header_problem

    assert header_problem(AudioHeader(frames=100, rate=383_999, channels=1)) is not None  # huge resampling filter
    assert header_problem(AudioHeader(frames=100, rate=44_100, channels=2)) is None
    with pytest.raises(ValueError, match="over the 1 s limit"):
        load_audio(tmp_path / "long.wav", max_seconds=1.0)
    manifest = Manifest(root=tmp_path, paths=["one_hz.wav", "many.wav", "long.wav", "ok.wav"],
                        lengths=[500, 400, 32_000, 4_000])  # lengths a 16 kHz manifest would hold
    assert AudioDataset(manifest, min_readable=25, max_seconds=1.0).paths == ["one_hz.wav", "many.wav", "ok.wav"]
    ds = AudioDataset(manifest, min_readable=25)
    wave, j = ds.read(0)
    assert j == 2 and wave.shape == (32_000,) and ds.num_skipped == 2
    assert "sample rate 1 Hz outside [1000, 384000] Hz" in caplog.text and "33 channels" in caplog.text
    with pytest.raises(ValueError, match="max_file_seconds"):
        SpeechDataConfig(max_file_seconds=0.1)  # under min_samples
    from modalities.speech.data.source import build_pretrain_source
    from modalities.speech.model.adapter import SpeechAdapterConfig

    (tmp_path / "m.tsv").write_text(f"{tmp_path}\nlong.wav\t32000\nok.wav\t4000\n")
    cfg = SpeechDataConfig(manifest=str(tmp_path / "m.tsv"), min_samples=1000, max_samples=4000,
                           max_file_seconds=1.0)
    src = build_pretrain_source(cfg, SpeechMaskConfig(), SpeechAdapterConfig())
    assert src.dataset.paths == ["ok.wav"] and src.dataset.max_seconds == 1.0


@pytest.mark.parametrize("rate", [16_000, 44_100])
def test_loud_audio_is_normalised_not_zeroed(tmp_path, rate):
    path = _noise(tmp_path / "loud.wav", rate // 2, rate=rate, scale=1e30, subtype="FLOAT")
    wave = load_audio(path)
    assert np.isfinite(wave).all() and abs(wave.std() - 1) < 1e-3 and abs(wave.mean()) < 1e-3
    quiet = load_audio(_noise(tmp_path / "quiet.wav", rate // 2, rate=rate, scale=1.0, subtype="FLOAT"))
    np.testing.assert_allclose(wave, quiet, atol=1e-4)  # the same noise, only louder: the same normalised wave


def test_skipped_count_depends_on_the_data_not_the_workers(tmp_path):
    names = [f"u{i}.wav" for i in range(7)]
    for i, name in enumerate(names):
        if i in (2, 3, 5):  # two neighbours: the first is replaced by the next readable entry, past both
            (tmp_path / name).write_bytes(b"RIFF\x00\x00garbage" * 10)
        else:
            _noise(tmp_path / name, 2_000 + 100 * i)
    manifest = Manifest(root=tmp_path, paths=names, lengths=[2_000 + 100 * i for i in range(7)])
    src = SpeechPretrainSource(AudioDataset(manifest, min_readable=25),
                               BatchSpec(mode="crop", conv_layers=CONV, masking=SpeechMaskConfig()), max_samples=20000)

    def total(workers: int) -> int:
        it = iter(make_loader(src, batch_size=7, seed=0, num_workers=workers, collate_fn=src.collate))
        return sum(next(it).skipped for _ in range(3))  # three epochs of 7

    assert total(0) == total(2) == 3 * 3  # one per bad file and epoch

"""The speech fine-tuning tasks: keywords from a class folder and from a manifest, CTC from fairseq's tsv + ltr / wrd
layout; the collate (padding, masks only in training, LABEL_PAD), token padding = conv output lengths, clear errors,
and encode with a mask."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from modalities.speech import SPEECH
from modalities.speech.data.dataset import SpeechDataConfig
from modalities.speech.model.adapter import SpeechAdapterConfig
from modalities.speech.model.feature_encoder import conv_output_lengths
from modalities.speech.task import SpeechTaskConfig, build_task, ctc_min_frames, samples_for_frames
from unimim.core.batch import LABEL_PAD
from unimim.eval.ctc import LetterVocab

SMALL = [[16, 10, 5], [16, 3, 2], [24, 2, 2]]  # stride 20, receptive field 30 samples
RATE = 16_000


def _cfg(**data) -> SimpleNamespace:
    return SimpleNamespace(data=SpeechDataConfig(min_samples=100, **data),
                           adapter=SpeechAdapterConfig(conv_layers=SMALL))


def _wave(samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / RATE
    return (0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.01 * rng.standard_normal(samples)).astype(
        np.float32)


def _class_folder(root: Path, splits=("train", "test"), classes=("no", "yes")) -> Path:
    k = 0
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for j in range(3):
                k += 1
                sf.write(d / f"u{j}.wav", _wave(800 + 370 * k, k), RATE)
    return root


def _fairseq_layout(root: Path, name: str, sentences: list[str], lengths: list[int]) -> Path:
    """name.tsv (root line + path<TAB>samples), name.wrd (words), name.ltr (letters, '|' after every word)."""
    wav = root / "wav"
    wav.mkdir(parents=True, exist_ok=True)
    lines = [str(wav)]
    for i, n in enumerate(lengths):
        sf.write(wav / f"{name}{i}.flac", _wave(n, 100 + i), RATE)
        lines.append(f"{name}{i}.flac\t{n}")
    tsv = root / f"{name}.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    (root / f"{name}.wrd").write_text("".join(s + "\n" for s in sentences))
    (root / f"{name}.ltr").write_text("".join(" ".join(" ".join(w) + " |" for w in s.split()) + "\n"
                                              for s in sentences))
    return tsv


@pytest.fixture
def asr(tmp_path) -> dict[str, Path]:
    train = _fairseq_layout(tmp_path, "train", ["HELLO WORLD", "A B", "DON'T GO", "SEE ALL"], [4000, 2600, 3300, 2000])
    test = _fairseq_layout(tmp_path, "test", ["GOOD DAY", "NO"], [3000, 1500])
    return {"train": train, "test": test}


def test_the_speech_spec_declares_the_task():
    assert SPEECH.task_config is SpeechTaskConfig and SPEECH.build_task is build_task


def test_keywords_from_a_class_folder(tmp_path):
    root = _class_folder(tmp_path / "kw")
    task = build_task(SpeechTaskConfig(format="folder", root=str(root)), _cfg(), True)
    assert task.kind == "classification" and task.name == "keywords" and list(task.classes) == ["no", "yes"]
    assert len(task.train) == 6 and len(task.test) == 6
    items = [task.train[i] for i in range(len(task.train))]
    assert [y for _, y in items] == [0, 0, 0, 1, 1, 1]  # sorted by class then path
    lengths = [w.shape[0] for w, _ in items]
    assert lengths == [800 + 370 * k for k in range(1, 7)]  # clips keep their own length
    batch = task.collate(items)
    assert batch.inputs.shape == (6, max(lengths)) and batch.mask is None  # keywords train without masks
    assert batch.labels.dtype == torch.long and batch.labels.tolist() == [0, 0, 0, 1, 1, 1]
    expected = torch.arange(max(lengths))[None, :] >= torch.tensor(lengths)[:, None]
    assert torch.equal(batch.padding_mask, expected)
    for i, n in enumerate(lengths):  # right padding with zeros, the audio itself untouched
        assert torch.equal(batch.inputs[i, :n], items[i][0]) and not batch.inputs[i, n:].any()


def test_token_padding_is_the_conv_output_lengths(tmp_path):
    root = _class_folder(tmp_path / "kw")
    task = build_task(SpeechTaskConfig(format="folder", root=str(root)), _cfg(), False)
    items = [task.test[i] for i in range(4)]
    batch = task.eval_collate(items)
    lengths = torch.tensor([w.shape[0] for w, _ in items])
    n = int(conv_output_lengths(lengths.max()[None], SMALL)[0])
    frames = task.token_padding(batch.padding_mask, n)
    assert frames.shape == (4, n)
    assert torch.equal((~frames).sum(1), conv_output_lengths(lengths, SMALL))  # real frames per row
    # the adapter's own frame count and padding agree
    from modalities.speech.model.adapter import SpeechAdapter
    tokens = SpeechAdapter(SpeechAdapterConfig(conv_layers=SMALL, pos_conv_depth=1, pos_conv_kernel=3,
                                               pos_conv_groups=4), dim=16).local(batch.inputs, batch.padding_mask)
    assert tokens.x.shape[1] == n and torch.equal(tokens.padding_mask, frames)
    assert task.token_padding(None, n) is None


def test_a_missing_split_names_the_folders_found(tmp_path):
    root = _class_folder(tmp_path / "kw", splits=("train", "val"))
    with pytest.raises(FileNotFoundError, match=r"no split folder 'test' \(found: train, val\)"):
        build_task(SpeechTaskConfig(format="folder", root=str(root)), _cfg(), True)
    task = build_task(SpeechTaskConfig(format="folder", root=str(root), test_split="val"), _cfg(), True)
    assert len(task.test) == 6
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_task(SpeechTaskConfig(format="folder", root=str(tmp_path / "nope")), _cfg(), True)


def test_folder_errors_empty_class_and_unknown_test_class(tmp_path):
    root = _class_folder(tmp_path / "a")
    (root / "train" / "maybe").mkdir()
    with pytest.raises(ValueError, match="maybe holds no audio"):
        build_task(SpeechTaskConfig(format="folder", root=str(root)), _cfg(), True)
    root = _class_folder(tmp_path / "b")
    d = root / "test" / "stop"
    d.mkdir()
    sf.write(d / "x.wav", _wave(900, 0), RATE)
    with pytest.raises(ValueError, match=r"labels \['stop'\] of the test split"):
        build_task(SpeechTaskConfig(format="folder", root=str(root)), _cfg(), True)


def test_keywords_from_the_probe_manifests_and_crop(tiny_speech):
    # by default the task is the data section's probe set, cropped to data.eval_clip_samples
    cfg = _cfg(eval_train_manifest=str(tiny_speech["train"]), eval_test_manifest=str(tiny_speech["test"]),
               eval_clip_samples=4000)
    task = build_task(SpeechTaskConfig(), cfg, True)
    assert list(task.classes) == ["high", "low", "mid"] and len(task.train) == 24 and len(task.test) == 9
    wave, label = task.test[0]
    assert wave.shape == (4000,) and isinstance(label, int)  # 0.9 s clips centre-cropped to 4000 samples
    assert torch.equal(task.test[0][0], wave)  # the evaluation crop is deterministic
    full = task.test.audio.read(0)[0]
    start = (full.shape[0] - 4000) // 2
    assert torch.equal(wave, torch.from_numpy(full[start : start + 4000]))
    # the task's own manifests and crop win over the data section's
    own = SpeechTaskConfig(train_manifest=str(tiny_speech["train"]), test_manifest=str(tiny_speech["test"]),
                           max_samples=3000)
    other = build_task(own, _cfg(eval_train_manifest="/nope.tsv"), False)
    assert other.test[0][0].shape == (3000,)


def test_ctc_from_the_fairseq_layout(asr):
    task = build_task(SpeechTaskConfig(kind="ctc", train_manifest=str(asr["train"]),
                                       test_manifest=str(asr["test"])), _cfg(), True)
    vocab = LetterVocab()
    assert task.kind == "ctc" and tuple(task.classes) == vocab.symbols and task.classes[0] == "<blank>"
    items = [task.train[i] for i in range(4)]
    assert vocab.decode(items[2][1].tolist()) == "DON'T GO"
    assert items[1][1].tolist() == vocab.encode_letters("A | B |".split())
    batch = task.collate(items)
    widths = [len(t) for _, t in items]
    assert batch.labels.shape == (4, max(widths))
    for i, w in enumerate(widths):  # right-padded with LABEL_PAD; target lengths recoverable
        assert batch.labels[i, :w].tolist() == items[i][1].tolist() and (batch.labels[i, w:] == LABEL_PAD).all()
    assert torch.equal((batch.labels != LABEL_PAD).sum(-1), torch.tensor(widths))
    # training masks: one per row, on the row's own frames only, equal counts (require_same_masks)
    lengths = torch.tensor([w.shape[0] for w, _ in items])
    frames = conv_output_lengths(lengths, SMALL)
    assert batch.mask.shape == (4, 1, int(frames.max()))
    m = batch.mask[:, 0]
    counts = m.sum(1)
    assert (counts > 0).all() and (counts == counts[0]).all()
    for i, f in enumerate(frames.tolist()):
        assert not m[i, f:].any()
    # evaluation: no mask, same inputs and labels
    ev = task.eval_collate(items)
    assert ev.mask is None and torch.equal(ev.inputs, batch.inputs) and torch.equal(ev.labels, batch.labels)
    # probes (no augmentation): no mask in either collate
    probe = build_task(SpeechTaskConfig(kind="ctc", train_manifest=str(asr["train"]),
                                        test_manifest=str(asr["test"])), _cfg(), False)
    assert probe.collate(items).mask is None


def test_ctc_mask_probability_of_the_reference():
    ctc = dict(kind="ctc", train_manifest="a.tsv", test_manifest="b.tsv")
    assert SpeechTaskConfig(**ctc).time_mask_prob == 0.65 and SpeechTaskConfig().time_mask_prob == 0.0
    m = SpeechTaskConfig(**ctc).masking()
    assert (m.kind, m.prob, m.length, m.min_masks) == ("span", 0.65, 10, 1)
    assert SpeechTaskConfig(mask_prob=0.0, **ctc).masking() is None
    assert SpeechTaskConfig().frozen == ["adapter.feature_encoder."]


def test_ctc_masks_follow_torch_seed(asr):
    task = build_task(SpeechTaskConfig(kind="ctc", train_manifest=str(asr["train"]),
                                       test_manifest=str(asr["test"])), _cfg(), True)
    items = [task.train[i] for i in range(4)]
    torch.manual_seed(3)
    a = task.collate(items).mask
    torch.manual_seed(3)
    assert torch.equal(a, task.collate(items).mask)


def test_wrd_transcripts_give_the_same_targets(asr):
    common = dict(kind="ctc", train_manifest=str(asr["train"]), test_manifest=str(asr["test"]))
    ltr = build_task(SpeechTaskConfig(**common), _cfg(), False)
    wrd = build_task(SpeechTaskConfig(transcripts="wrd", **common), _cfg(), False)
    for i in range(len(ltr.train)):
        assert torch.equal(ltr.train[i][1], wrd.train[i][1])


def test_ctc_leaves_out_utterances_too_short_for_their_transcript(tmp_path, caplog):
    # 'SEE |' needs 5 frames (S E blank E |); 90 samples give 4 frames (by hand: 90 -> 17 -> 8 -> 4; 89 -> 3)
    assert ctc_min_frames(list("SEE|")) == 5 and samples_for_frames(4, SMALL) == 90
    assert samples_for_frames(1, SMALL) == 30  # the receptive field
    train = _fairseq_layout(tmp_path, "train", ["SEE", "SEE"], [90, 3000])
    task = build_task(SpeechTaskConfig(kind="ctc", mask_prob=0.0, train_manifest=str(train),
                                       test_manifest=str(train)), _cfg(), False)
    assert len(task.train) == 1 and "1 of 2 utterances have fewer frames" in caplog.text


def test_fairseq_layout_errors(asr, tmp_path):
    common = dict(kind="ctc", train_manifest=str(asr["train"]), test_manifest=str(asr["test"]))
    ltr = asr["train"].with_suffix(".ltr")
    lines = ltr.read_text().splitlines()
    ltr.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"train.ltr has 3 lines for the 4 entries"):
        build_task(SpeechTaskConfig(**common), _cfg(), True)
    ltr.write_text("\n".join(lines[:-1] + ["S E E | 4 |"]) + "\n")
    with pytest.raises(ValueError, match=r"train.ltr:4: tokens \['4'\]"):
        build_task(SpeechTaskConfig(**common), _cfg(), True)
    ltr.unlink()
    with pytest.raises(FileNotFoundError, match=r"train.ltr .*train.wrd exists: set task.transcripts: wrd"):
        build_task(SpeechTaskConfig(**common), _cfg(), True)
    bad = tmp_path / "bad.tsv"
    bad.write_text(f"{tmp_path}\nfile.wav 100\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2: expected 'relative_path<TAB>num_samples'"):
        build_task(SpeechTaskConfig(kind="ctc", train_manifest=str(bad), test_manifest=str(bad)), _cfg(), True)
    with pytest.raises(FileNotFoundError, match="make data-speech"):
        build_task(SpeechTaskConfig(kind="ctc", train_manifest=str(tmp_path / "none.tsv"),
                                    test_manifest=str(tmp_path / "none.tsv")), _cfg(), True)


def test_task_config_errors():
    with pytest.raises(ValueError, match="needs task.root"):
        SpeechTaskConfig(format="folder")
    with pytest.raises(ValueError, match="ctc reads a fairseq manifest"):
        SpeechTaskConfig(kind="ctc", format="folder", root="x")
    with pytest.raises(ValueError, match="mask_prob"):
        SpeechTaskConfig(mask_prob=1.0)
    with pytest.raises(ValueError, match="test_split"):
        SpeechTaskConfig(test_split="train")
    with pytest.raises(ValueError, match="ctc needs task.train_manifest and task.test_manifest"):
        SpeechTaskConfig(kind="ctc", train_manifest="a.tsv")


def _objective():
    from unimim.nn.encoder import EncoderConfig, TransformerEncoder
    from unimim.objectives.base import Objective

    torch.manual_seed(0)
    adapter = SPEECH.build_adapter(SpeechAdapterConfig(conv_layers=SMALL, pos_conv_depth=1, pos_conv_kernel=3,
                                                       pos_conv_groups=4), EncoderConfig(dim=16, num_heads=2))
    return Objective(adapter, TransformerEncoder(EncoderConfig(dim=16, depth=1, num_heads=2, norm_first=False,
                                                               final_norm=False))).eval()


def test_encode_with_a_mask_changes_exactly_the_masked_positions_input(asr):
    model = _objective()
    task = build_task(SpeechTaskConfig(kind="ctc", train_manifest=str(asr["train"]),
                                       test_manifest=str(asr["test"])), _cfg(), True)
    batch = task.collate([task.train[i] for i in range(4)])
    mask = batch.mask[:, 0]  # (B, N), the core's call: encode(inputs, padding_mask, mask=batch.mask[:, 0])
    seen = []
    hook = model.adapter.pos_conv.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        plain = model.encode(batch.inputs, batch.padding_mask)
        masked = model.encode(batch.inputs, batch.padding_mask, mask=mask)
    hook.remove()
    before, after = seen  # (B, N, D) frame features entering the positional conv
    assert torch.equal((before != after).any(-1), mask)  # exactly the masked frames changed
    assert torch.equal(after[mask], model.adapter.mask_emb.detach().expand(int(mask.sum()), -1))
    assert masked.shape == plain.shape == (4, mask.shape[1], 16) and not torch.equal(plain, masked)
    with torch.no_grad():  # mask=None is the encode of before
        assert torch.equal(model.encode(batch.inputs, batch.padding_mask, mask=None), plain)
    with pytest.raises(ValueError, match=r"\(B, N\) bool mask"):
        model.encode(batch.inputs, batch.padding_mask, mask=mask.float())
    with pytest.raises(ValueError, match="does not match"):
        model.encode(batch.inputs, batch.padding_mask, mask=mask[:, :-1])


def test_backbones_without_a_mask_embedding_refuse_a_mask():
    from unimim.objectives.base import refuse_mask

    refuse_mask("x", None)
    with pytest.raises(ValueError, match="the dVAE tokenizer cannot encode a masked input"):
        refuse_mask("the dVAE tokenizer", torch.zeros(1, 4, dtype=torch.bool))


def test_every_training_batch_admits_a_ctc_alignment(asr):
    """With the frame lengths of token_padding, torch's CTC loss (no zero_infinity) is finite for the whole split:
    no utterance kept is shorter than its transcript needs; and it trains through a masked encode."""
    model = _objective().train()
    task = build_task(SpeechTaskConfig(kind="ctc", train_manifest=str(asr["train"]),
                                       test_manifest=str(asr["test"])), _cfg(), True)
    head = torch.nn.Linear(16, len(task.classes))
    batch = task.collate([task.train[i] for i in range(len(task.train))])
    x = model.encode(batch.inputs, batch.padding_mask, mask=batch.mask[:, 0])  # (B, N, D)
    pad = task.token_padding(batch.padding_mask, x.shape[1])
    lengths = (~pad).sum(1) if pad is not None else torch.full((x.shape[0],), x.shape[1])
    log_probs = head(x).log_softmax(-1).transpose(0, 1)  # (B, N, V) -> (N, B, V)
    targets = batch.labels
    loss = torch.nn.functional.ctc_loss(log_probs, targets.clamp(min=0), lengths, (targets != LABEL_PAD).sum(-1),
                                        blank=0, zero_infinity=False)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.adapter.mask_emb.grad is not None and model.adapter.mask_emb.grad.abs().sum() > 0


def test_keyword_masks_when_asked(tmp_path):
    root = _class_folder(tmp_path / "kw")
    task = build_task(SpeechTaskConfig(format="folder", root=str(root), mask_prob=0.5, mask_length=3), _cfg(), True)
    items = [task.train[i] for i in range(6)]
    m = task.collate(items).mask[:, 0]
    assert (m.sum(1) == m.sum(1)[0]).all() and m.sum() > 0 and task.eval_collate(items).mask is None


def test_the_config_check_refuses_a_crop_below_the_receptive_field():
    from modalities.speech.data.source import check_experiment

    cfg = _cfg()
    cfg.task = SpeechTaskConfig(max_samples=29)  # SMALL's receptive field is 30 samples
    with pytest.raises(ValueError, match="task.max_samples=29 is below"):
        check_experiment(cfg)
    cfg.task = SpeechTaskConfig(max_samples=30)
    check_experiment(cfg)

"""The synthesised transcribed corpus: sentence selection and normalisation, and a tiny end-to-end synthesis in
fairseq's layout that the CTC task reads back (split by voice and by sentence)."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from modalities.speech.data.dataset import SpeechDataConfig
from modalities.speech.data.synth_transcribed import letters_line, main, pick_voices, plain_sentence
from modalities.speech.model.adapter import SpeechAdapterConfig
from modalities.speech.task import SpeechTaskConfig, build_task
from unimim.eval.ctc import LetterVocab


def test_plain_sentences_are_kept_and_normalised():
    assert plain_sentence("The act of speaking, softly.") == "THE ACT OF SPEAKING SOFTLY"
    assert plain_sentence("I don't know why it failed!") == "I DON'T KNOW WHY IT FAILED"
    assert plain_sentence("Return the value.") == "RETURN THE VALUE"
    for bad in ("Use the API here.",        # acronym
                "Call foo() twice.",         # not letters
                "It has 3 parts.",           # digits
                "the lower case start.",     # not a sentence start
                "No end mark here",          # no final punctuation
                "Too short.",                # under three words
                "Visit Paris in the spring.",  # a capitalised word inside
                "A " + "very " * 12 + "long one."):
        assert plain_sentence(bad) is None, bad


def test_letters_line_is_the_fairseq_ltr_line():
    assert letters_line("HELLO WORLD") == "H E L L O | W O R L D |"
    assert LetterVocab().letters("DON'T") == ["D", "O", "N", "'", "T", "|"]


def test_voices_are_split_with_both_engines_on_each_side():
    train, test = pick_voices(40, 0.2)
    assert len(train) + len(test) == 40 and not {v.name for v in train} & {v.name for v in test}
    assert {v.engine for v in train} == {v.engine for v in test} == {"espeak-ng", "flite"}


@pytest.mark.skipif(any(shutil.which(t) is None for t in ("espeak-ng", "flite", "sox")),
                    reason="needs the Debian packages espeak-ng, flite and sox")
def test_a_tiny_corpus_in_fairseq_layout_reads_back_as_a_ctc_task(tmp_path):
    text = tmp_path / "text.txt"
    words = ["red", "green", "blue", "small", "large", "cold", "warm", "old"]
    text.write_text("\n".join(f"The {a} cat sat on the {b} mat." for a in words for b in words[:2]) + "\n")
    out = tmp_path / "corpus"
    assert main([str(out), "--text", str(text), "--voices", "4", "--per-voice", "2", "--test-fraction", "0.5"]) == 0
    for name in ("train", "test"):
        assert (out / f"{name}.tsv").read_text().splitlines()[0] == str((out / "wav").resolve())
        ltr = (out / f"{name}.ltr").read_text().splitlines()
        wrd = (out / f"{name}.wrd").read_text().splitlines()
        assert len(ltr) == len(wrd) == 4 and all(letters_line(w) == line for w, line in zip(wrd, ltr))
    voices = {n: {p.split("/")[0] for p in (out / f"{n}.tsv").read_text().splitlines()[1:]} for n in ("train", "test")}
    assert voices["train"] and voices["test"] and not voices["train"] & voices["test"]  # split by voice
    sentences = {n: set((out / f"{n}.wrd").read_text().splitlines()) for n in ("train", "test")}
    assert not sentences["train"] & sentences["test"]  # and by sentence
    assert (out / "dict.ltr.txt").read_text().splitlines()[0].split()[0] in ("|", "T", "A", "E")
    cfg = SimpleNamespace(data=SpeechDataConfig(), adapter=SpeechAdapterConfig())
    task = build_task(SpeechTaskConfig(kind="ctc", train_manifest=str(out / "train.tsv"),
                                       test_manifest=str(out / "test.tsv")), cfg, True)
    assert len(task.train) == 4 and len(task.test) == 4
    wave, target = task.test[0]
    assert wave.ndim == 1 and LetterVocab().decode(target.tolist()) in sentences["test"]
    before = sorted(p.stat().st_mtime_ns for p in (out / "wav").rglob("*.wav"))
    assert main([str(out), "--text", str(text), "--voices", "4", "--per-voice", "2", "--test-fraction", "0.5"]) == 0
    assert sorted(p.stat().st_mtime_ns for p in (out / "wav").rglob("*.wav")) == before  # a rerun keeps the audio

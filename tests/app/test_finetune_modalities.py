"""``unimim finetune`` through the CLI on a tiny pretrained run of every modality, both inits: image classification,
speech keywords, speech CTC (WER / CER, the freezing of the conv feature encoder and of the encoder's first step),
text classification and text sentence pairs. Each finetune.json is checked against its own per-example
predictions (the metric recomputed from them, the pretrained - random difference from the two metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from modalities.text.data.wordnet_pairs import main as write_wordnet_pairs
from tests.conftest import TEXT_FIXTURES, tiny_overrides
from unimim.app.cli import main
from unimim.eval.ctc import cer, wer
from unimim.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN = {"image": "recipes/image/data2vec_fmnist_cpu.yaml", "speech": "recipes/speech/data2vec_tuxpaint_cpu.yaml",
            "text": "recipes/text/data2vec_text_cpu.yaml"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for modality, recipe in PRETRAIN.items():
        d = tmp_path_factory.mktemp(f"ft_{modality}")
        args = tiny_overrides(modality, "data2vec", d) + [f"train.out_dir={d}", "name=run"]
        assert main(["pretrain", str(ROOT / recipe), *args, "--no-progress"]) == 0
        out[modality] = d / "run"
    return out


def _transcribed(root: Path, name: str, sentences: list[str]) -> Path:
    """A fairseq manifest ``name.tsv`` of 16 kHz tones with ``name.ltr`` letter transcripts."""
    rng = np.random.default_rng(len(name))
    wav = root / "wav"
    wav.mkdir(parents=True, exist_ok=True)
    lines = [str(wav)]
    for i, _ in enumerate(sentences):
        n = 6000 + 400 * i
        t = np.arange(n) / 16_000
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.01 * rng.standard_normal(n)
        sf.write(wav / f"{name}{i}.wav", wave.astype(np.float32), 16_000)
        lines.append(f"{name}{i}.wav\t{n}")
    (root / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    (root / f"{name}.ltr").write_text("".join(" ".join(" ".join(w) + " |" for w in s.split()) + "\n"
                                              for s in sentences))
    return root / f"{name}.tsv"


def _finetune(run: Path, *overrides: str) -> dict:
    assert main(["finetune", str(run), "train.precision=fp32", *overrides, "--no-progress"]) == 0
    out = json.loads(next((run / "finetune").glob("*/finetune.json")).read_text())
    assert out["complete"] and set(out["results"]) == {"pretrained", "random"}
    return out


def _check_classification(out: dict, num_classes: int) -> None:
    labels = np.array(out["predictions"]["labels"])
    assert out["task"]["kind"] == "classification" and len(out["task"]["classes"]) == num_classes
    for init in ("pretrained", "random"):
        top1 = float(np.mean(np.array(out["predictions"][init]) == labels))
        assert out["results"][init]["top1"] == pytest.approx(top1) and out["results"][init]["steps"] == 3
    d = out["difference"]
    assert d["metric"] == "top1" and d["better"] == "higher" and d["low"] <= d["diff"] <= d["high"]
    assert d["diff"] == pytest.approx(out["results"]["pretrained"]["top1"] - out["results"]["random"]["top1"])


@pytest.mark.parametrize("modality", ["image", "speech", "text"])
def test_finetune_classification_of_every_modality(runs, modality, tmp_path):
    import shutil

    run = Path(shutil.copytree(runs[modality], tmp_path / "run"))
    extra = ["finetune.steps=3"] if modality == "image" else []
    out = _finetune(run, *extra)
    _check_classification(out, {"image": 10, "speech": 3, "text": 45}[modality])
    assert out["task"]["name"] == {"image": "synthetic", "speech": "keywords", "text": "wordnet"}[modality]


def test_finetune_text_sentence_pairs_with_the_roberta_head(runs, tmp_path):
    import shutil

    run = Path(shutil.copytree(runs["text"], tmp_path / "run"))
    pairs = tmp_path / "wordnet_pairs"
    assert write_wordnet_pairs([str(pairs), "--wordnet", str(TEXT_FIXTURES / "wordnet")]) == 0
    out = _finetune(run, "task.format=tsv", f"task.root={pairs}", "task.name=wordnet_pairs",
                    "task.text_columns=[sentence1,sentence2]", "task.max_tokens=32", "task.max_train=32",
                    "task.max_test=16", "finetune.pool=first", "finetune.head_dense=true", "finetune.fc_norm=false",
                    "finetune.head_dropout=0.1", "finetune.dropout=0.2", "finetune.attn_dropout=0.3")
    _check_classification(out, 2)
    assert out["task"]["name"] == "wordnet_pairs" and out["task"]["num_test"] == 16
    result = json.loads((run / "finetune/wordnet_pairs/pretrained/result.json").read_text())
    assert (result["config"]["encoder"]["dropout"], result["config"]["encoder"]["attn_dropout"]) == (0.2, 0.3)
    assert "head_dense.weight" in load_checkpoint(run / "finetune/wordnet_pairs/pretrained")["model"]


def test_finetune_speech_ctc_reports_wer_and_cer_and_freezes(runs, tmp_path):
    import shutil

    run = Path(shutil.copytree(runs["speech"], tmp_path / "run"))
    data = tmp_path / "asr"
    train = _transcribed(data, "train", ["HELLO WORLD", "A BE", "DON'T GO", "SEE ALL", "LOW HIGH", "MID"])
    test = _transcribed(data, "test", ["GOOD DAY", "NO", "SEE"])
    out = _finetune(run, "task.kind=ctc", f"task.train_manifest={train}", f"task.test_manifest={test}",
                    "task.freeze_encoder_steps=2", "finetune.steps=3")
    assert out["task"]["kind"] == "ctc" and out["task"]["classes"][0] == "<blank>"
    refs = out["predictions"]["labels"]
    assert refs == ["GOOD DAY", "NO", "SEE"]
    for init in ("pretrained", "random"):
        hyps, r = out["predictions"][init], out["results"][init]
        assert r["wer"] == pytest.approx(wer(refs, hyps)) and r["cer"] == pytest.approx(cer(refs, hyps))
        assert r["words"] == 4 and r["chars"] == len("GOOD DAY") + len("NO") + len("SEE")
    d = out["difference"]
    assert d["metric"] == "wer" and d["better"] == "lower" and d["better_init"] in ("pretrained", "random", "neither")
    assert d["diff"] == pytest.approx(out["results"]["pretrained"]["wer"] - out["results"]["random"]["wer"])
    assert d["cer"]["diff"] == pytest.approx(out["results"]["pretrained"]["cer"] - out["results"]["random"]["cer"])
    text = (run / "finetune/ctc/finetune.txt").read_text()
    assert "wer" in text and "cer" in text and "lower is better" in text
    # the conv feature encoder never trained; the blocks trained on the one step after the 2 frozen ones
    pretrained = load_checkpoint(run)["model"]
    tuned = load_checkpoint(run / "finetune/ctc/pretrained")["model"]
    conv = [k for k in tuned if k.startswith("backbone.adapter.feature_encoder.")]
    block = "backbone.encoder.blocks.0.mlp.fc1.weight"
    assert conv and block in tuned and int(tuned["steps_done"]) == 3
    assert all(torch.equal(tuned[k], pretrained[k]) for k in conv)  # data2vec encodes with its student backbone
    assert not torch.equal(tuned[block], pretrained[block])

"""data2vec on text: the teacher sees the clean, full input (not the reference's masked one, data2vec.md §10.1),
the student sees the BERT-corrupted ids, every selected token is a target (§10.2), the embeddings are copied into the
teacher; and an end-to-end tiny run keeps its tokenizer in the run directory and probes with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from modalities.text.data.source import collate_pretrain
from modalities.text.data.tokenizer import MASK_ID, NUM_SPECIAL, PAD_ID
from modalities.text.masking import TextMaskConfig, TextMasker
from tests.conftest import tiny_overrides
from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
from unimim.app.probe import probe_run
from unimim.app.registry import build_objective
from unimim.core.ema import EMAConfig

ROOT = Path(__file__).resolve().parents[3]
CPU_RECIPE = ROOT / "recipes/text/data2vec_text_cpu.yaml"


def _tiny_cfg(tmp_path, *extra):
    return load_recipe(CPU_RECIPE, tiny_overrides("text", "data2vec") + [
        f"train.out_dir={tmp_path}", "masking.num_masks=1", "encoder.dropout=0.0", *extra])


def _batch(vocab=300, seed=0):
    rng = np.random.default_rng(seed)
    masker = TextMasker(TextMaskConfig(prob=0.3), vocab)
    items = []
    for n in (20, 14):
        ids = np.concatenate([[0], rng.integers(NUM_SPECIAL, vocab, n - 2), [2]])
        mask, student = masker(ids, rng)
        items.append({"inputs": torch.from_numpy(ids), "mask": torch.from_numpy(mask),
                      "student_inputs": torch.from_numpy(student)})
    return collate_pretrain(items)


def test_teacher_sees_clean_full_input_student_sees_corrupted(tmp_path):
    objective = build_objective(_tiny_cfg(tmp_path)).train()
    batch = _batch()
    inputs, mask, student, pad = batch.inputs, batch.mask[:, 0], batch.student_inputs[:, 0], batch.padding_mask
    assert (student != inputs).any()
    seen = {}

    def spy(name, module):
        real = module.embed

        def embed(inputs, mask=None, padding_mask=None):
            seen[name] = (inputs.clone(), mask)
            return real(inputs, mask=mask, padding_mask=padding_mask)
        module.embed = embed

    spy("teacher", objective.teacher.module["adapter"])
    student_adapter = objective.adapter  # the student runs its local encoder, then embeds the features
    real_local, real_features = student_adapter.local, student_adapter.embed_features

    def local(inputs, padding_mask=None):
        seen["student"] = (inputs.clone(), None)
        return real_local(inputs, padding_mask)

    def embed_features(features, mask=None, drop_masked=False):
        seen["student"] = (seen["student"][0], mask)
        return real_features(features, mask, drop_masked=drop_masked)
    student_adapter.local, student_adapter.embed_features = local, embed_features
    out = objective(batch)
    teacher_ids, teacher_mask = seen["teacher"]
    assert torch.equal(teacher_ids, inputs) and teacher_mask is None  # every token, uncorrupted
    assert not (teacher_ids == MASK_ID).any()
    student_ids, student_mask = seen["student"]
    assert torch.equal(student_ids, student) and student_mask is None  # no second substitution
    # targets are at all selected positions, the random/unchanged ones included (not only <mask>)
    m = mask & ~pad
    assert (student[m] != MASK_ID).any()
    assert out.logs["mask_ratio"] == pytest.approx(float(mask.float().mean()))

    # the targets are those of the full clean sequence, and differ from the reference's teacher input
    # (pad everywhere except the masked tokens, fairseq#4881)
    y = objective.targets(inputs, pad)
    ref_input = torch.where(mask, inputs, torch.full_like(inputs, PAD_ID))
    ref_input[:, 0] = 0
    y_ref = objective.targets(ref_input, ref_input.eq(PAD_ID))
    assert not torch.allclose(y[m], y_ref[m], atol=1e-3)
    # changing an unmasked token changes the targets at masked positions: the teacher attends to the context
    ctx = inputs.clone()
    pos = int(torch.nonzero(~mask[0, 1:-1])[0]) + 1
    ctx[0, pos] = 5 if ctx[0, pos] != 5 else 6
    y_ctx = objective.targets(ctx, pad)
    assert not torch.allclose(y[0][mask[0]], y_ctx[0][mask[0]], atol=1e-4)


def test_embeddings_copied_layers_averaged(tmp_path):
    objective = build_objective(_tiny_cfg(tmp_path))
    assert objective.teacher.cfg.copy == ["adapter."]
    with torch.no_grad():
        for p in objective.backbone.parameters():
            p.add_(1.0)
    objective.update_teacher(1)
    t = dict(objective.teacher.module.named_parameters())
    for name, p in objective.backbone.named_parameters():
        if name.startswith("adapter."):
            assert torch.equal(t[name], p), name
        else:
            assert not torch.allclose(t[name], p), name
    assert isinstance(objective.teacher.cfg, EMAConfig)


def test_tiny_run_keeps_tokenizer_and_probes(tmp_path):
    cfg = _tiny_cfg(tmp_path, "train.steps=2")
    result = pretrain(cfg, progress=False)
    copy = result.run_dir / "tokenizer.json"
    assert copy.is_file() and copy.read_bytes() == Path(cfg.data.tokenizer).read_bytes()
    saved = (result.run_dir / "config.yaml").read_text()
    assert "tokenizer.json" in saved
    out = probe_run(result.run_dir, progress=False)
    rows = {r["encoder"]: r for r in out["results"]}
    assert set(rows) == {"random", "pretrained"} and out["num_train"] + out["num_test"] == 120
    assert json.loads((result.run_dir / "probe.json").read_text())["results"][0]["linear"] == rows["random"]["linear"]
    # the same layer selection is applied to both encoders and recorded
    out = probe_run(result.run_dir, ["probe.layers=[-2, -1]", "probe.whiten=true"], progress=False)
    assert out["layers"] == [-2, -1] and out["whiten"] is True
    assert {r["encoder"] for r in out["results"]} == {"random", "pretrained"}
    with pytest.raises(ValueError, match="depth 2"):
        probe_run(result.run_dir, ["probe.layers=[2]"], progress=False)


def test_bad_inputs_fail_clearly(tmp_path):
    objective = build_objective(_tiny_cfg(tmp_path))
    with pytest.raises(ValueError, match="adapter.vocab_size"):
        objective.encode(torch.tensor([[0, 400, 2]]))
    with pytest.raises(ValueError, match="max_positions"):
        objective.encode(torch.full((1, 40), 7))
    with pytest.raises(ValueError, match="integer token ids"):
        objective.encode(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="adapter.vocab_size >= 261"):
        pretrain(_tiny_cfg(tmp_path, "adapter.vocab_size=100"), progress=False)

"""The speech fine-tune recipes (recipes/speech/finetune_*.yaml): sections over a run's config, the task section strict,
and the paper-scale ones at fairseq's base_10h / base_100h values."""

from __future__ import annotations

from pathlib import Path

import pytest

from modalities.speech.task import SpeechTaskConfig
from unimim.app.experiment import TrainConfig
from unimim.config import from_dict, read_yaml

FINETUNE = Path(__file__).resolve().parents[3] / "recipes/speech"
RECIPES = sorted(FINETUNE.glob("finetune_*.yaml"))

# fairseq examples/wav2vec/config/finetuning/base_10h.yaml (@6d2cf0d) and base_100h.yaml (@f7c559c), copied by hand:
# max_update, lr, freeze_finetune_updates; both: mask_prob 0.65, tri_stage phase_ratio [0.1, 0.4, 0.5],
# final_lr_scale 0.05, adam betas (0.9, 0.98), eps 1e-8, feature_grad_mult 0.0
REFERENCE = {"finetune_data2vec_base_ls10h_ctc.yaml": (20000, 5e-5, 10000),
             "finetune_data2vec_base_ls100h_ctc.yaml": (80000, 3e-5, 0)}


def test_there_are_cpu_and_paper_recipes_for_both_tasks():
    names = {p.name for p in RECIPES}
    assert {"finetune_keywords_cpu.yaml", "finetune_ctc_synth_cpu.yaml", *REFERENCE} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_sections_and_the_task_load_strictly(path):
    raw = read_yaml(path)
    assert set(raw) <= {"task", "finetune", "probe", "train"}, f"{path.name}: a fine-tune recipe sets only these"
    task = from_dict(SpeechTaskConfig, raw["task"])
    from_dict(TrainConfig, raw.get("train", {}))
    if task.kind == "ctc":
        assert task.time_mask_prob == 0.65 and task.mask_length == 10
        assert task.frozen == ["adapter.feature_encoder."]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_the_finetune_section_loads_strictly(path):
    from unimim.eval.finetune import FinetuneConfig

    from_dict(FinetuneConfig, read_yaml(path)["finetune"], "finetune")


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_paper_recipes_carry_the_fairseq_values(name):
    raw = read_yaml(FINETUNE / name)
    steps, lr, freeze = REFERENCE[name]
    ft, opt, task = raw["finetune"], raw["finetune"]["optim"], from_dict(SpeechTaskConfig, raw["task"])
    assert ft["steps"] == steps and opt["lr"] == lr and task.freeze_encoder_steps == freeze
    assert opt["warmup_steps"] == steps // 10  # tri-stage's first phase: 10 %
    assert opt["min_lr"] == pytest.approx(0.05 * lr)  # final_lr_scale
    assert tuple(opt["betas"]) == (0.9, 0.98) and opt["eps"] == 1e-8 and opt["weight_decay"] == 0.0
    assert task.kind == "ctc" and task.transcripts == "ltr" and task.mask_prob == 0.65
    assert ft["batch_size"] * ft["accumulate"] == 128  # ~26.7 min of audio per update at ~12.7 s an utterance

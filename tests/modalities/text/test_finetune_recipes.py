"""The text fine-tuning recipes (recipes/text/finetune_*.yaml: sections over a run's config): the task section strict,
read on GLUE's own layouts, and the RoBERTa fine-tuning hyper-parameters of fairseq
examples/roberta/config/finetuning/<task>.yaml (the audit table below was copied from those files: lr, batch_size,
max_update, warmup_updates; every task: max_epoch 10, Adam (0.9, 0.98), eps 1e-6, weight decay 0.1, clip_norm 0,
polynomial_decay, dropout and attention dropout 0.1)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from modalities.text import TEXT
from modalities.text.data.dataset import TextDataConfig
from modalities.text.data.wordnet_pairs import main as write_wordnet_pairs
from modalities.text.model.adapter import TextAdapterConfig
from modalities.text.task import TextTaskConfig, build_task
from tests.conftest import TEXT_FIXTURES
from tests.modalities.text.test_task import COLA, MNLI_DEV, MNLI_TRAIN, MRPC, QNLI, RTE, SST2_DEV, SST2_TRAIN, write
from unimim.config import from_dict, read_yaml

ROOT = Path(__file__).resolve().parents[3]
RECIPES = ROOT / "recipes" / "text"
FAIRSEQ = "fairseq examples/roberta/config/finetuning/"
QQP = ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
       "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration is enough?\t0\n"
       "402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1\n"
       "360472\t364011\t490273\tWhat causes stool color to change to yellow?\tWhat can cause stool to come out as "
       "little balls?\t0\n")

# task: (fairseq file, lr, batch_size, max_update, warmup_updates, classes, the GLUE files of the test)
AUDIT = {
    "sst2": ("sst_2.yaml", 1e-5, 32, 20935, 1256, ["0", "1"], {"train.tsv": SST2_TRAIN, "dev.tsv": SST2_DEV}),
    "mrpc": ("mrpc.yaml", 1e-5, 16, 2296, 137, ["0", "1"], {"train.tsv": MRPC, "dev.tsv": MRPC}),
    "qnli": ("qnli.yaml", 1e-5, 32, 33112, 1986, ["entailment", "not_entailment"],
             {"train.tsv": QNLI, "dev.tsv": QNLI}),
    "rte": ("rte.yaml", 2e-5, 16, 2036, 122, ["entailment", "not_entailment"], {"train.tsv": RTE, "dev.tsv": RTE}),
    "mnli": ("mnli.yaml", 1e-5, 32, 123873, 7432, ["contradiction", "entailment", "neutral"],
             {"train.tsv": MNLI_TRAIN, "dev_matched.tsv": MNLI_DEV}),
    "qqp": ("qqp.yaml", 1e-5, 32, 113272, 28318, ["0", "1"], {"train.tsv": QQP, "dev.tsv": QQP}),
    "cola": ("cola.yaml", 1e-5, 16, 5336, 320, ["0", "1"], {"train.tsv": COLA, "dev.tsv": COLA}),
}
COMMON = {"layer_decay": 1.0, "drop_path": 0.0, "head_dropout": 0.1, "label_smoothing": 0.0, "pool": "first",
          "head_dense": True, "fc_norm": False, "dropout": 0.1, "attn_dropout": 0.1}  # RobertaClassificationHead
COMMON_OPTIM = {"base_lr": None, "min_lr": 0.0, "weight_decay": 0.1, "betas": [0.9, 0.98], "eps": 1e-6,
                "clip_grad": None}


def experiment(task: TextTaskConfig | None = None, max_positions: int = 512) -> SimpleNamespace:
    data = TextDataConfig(tokenizer=str(TEXT_FIXTURES / "tokenizer.json"), wordnet_root=str(TEXT_FIXTURES / "wordnet"),
                          block_size=16, probe_max_tokens=16)
    return SimpleNamespace(data=data, adapter=TextAdapterConfig(vocab_size=300, max_positions=max_positions), task=task)


def recipe_task(raw: dict, root: Path | None = None) -> TextTaskConfig:
    return from_dict(TextTaskConfig, raw["task"] | ({"root": str(root)} if root is not None else {}), "task")


def test_every_text_finetune_recipe_is_audited_or_cpu_scale():
    names = {p.stem.removeprefix("finetune_") for p in RECIPES.glob("finetune_*.yaml")}
    assert {f"glue_{t}" for t in AUDIT} | {"wordnet_cpu", "wordnet_pairs_cpu"} == names
    for path in RECIPES.glob("finetune_*.yaml"):
        raw = read_yaml(path)
        assert set(raw) <= {"task", "finetune", "probe", "train"}, f"{path.name}: a fine-tune recipe sets only these"
        recipe_task(raw)
        assert {k: raw["finetune"][k] for k in COMMON} == COMMON
        assert {k: raw["finetune"]["optim"][k] for k in COMMON_OPTIM} == COMMON_OPTIM


@pytest.mark.parametrize("name", sorted(AUDIT))
def test_glue_recipe_matches_fairseq_and_reads_glue_files(name, tmp_path):
    source, lr, batch, updates, warmup, classes, files = AUDIT[name]
    path = RECIPES / f"finetune_glue_{name}.yaml"
    assert FAIRSEQ + source in path.read_text()
    raw = read_yaml(path)
    ft = raw["finetune"]
    assert (ft["optim"]["lr"], ft["batch_size"], ft["steps"], ft["optim"]["warmup_steps"]) == \
        (lr, batch, updates, warmup), source
    assert ft["epochs"] == 10 and recipe_task(raw).name == name and recipe_task(raw).max_tokens == 512
    # the recipe's columns and splits on GLUE's own layout (a few lines of it)
    root = write(tmp_path / name, files)
    task = build_task(recipe_task(raw, root), experiment())
    assert list(task.classes) == classes and len(task.train) >= 2 and len(task.test) >= 1
    assert task.train.skipped.total == 0 and task.test.skipped.total == 0
    assert task.collate([task.train[0], task.train[1]]).labels.shape == (2,)


def test_cpu_recipes_build_on_the_shipped_tiny_data(tmp_path):
    task = build_task(recipe_task(read_yaml(RECIPES / "finetune_wordnet_cpu.yaml")), experiment())
    assert task.name == "wordnet" and task.num_classes == 45 and len(task.train) > 0
    out = tmp_path / "wordnet_pairs"
    assert write_wordnet_pairs([str(out), "--wordnet", str(TEXT_FIXTURES / "wordnet")]) == 0
    raw = read_yaml(RECIPES / "finetune_wordnet_pairs_cpu.yaml")
    task = build_task(recipe_task(raw, out), experiment(max_positions=128))
    assert task.name == "wordnet_pairs" and list(task.classes) == ["different", "same"]
    ids = task.train[0]["inputs"].tolist()
    assert ids[0] == 0 and ids[-1] == 2 and ids.count(2) == 3 and len(ids) <= 128  # <s> A </s></s> B </s>
    for path in RECIPES.glob("finetune_*_cpu.yaml"):
        assert read_yaml(path)["finetune"]["warmup_epochs"] == pytest.approx(0.06 * read_yaml(path)["finetune"]
                                                                             ["epochs"])  # the GLUE recipes' 6 %


@pytest.mark.parametrize("path", sorted(RECIPES.glob("finetune_*.yaml")), ids=lambda p: p.name)
def test_finetune_section_loads_strictly(path):
    from unimim.eval.finetune.config import FinetuneConfig

    from_dict(FinetuneConfig, read_yaml(path)["finetune"], "finetune")


def test_task_budget_is_checked_when_the_config_loads():
    task = TextTaskConfig(format="tsv", root="/x", max_tokens=1024)
    with pytest.raises(ValueError, match="task.max_tokens=1024 exceeds adapter.max_positions=512"):
        TEXT.check(experiment(task))
    TEXT.check(experiment(TextTaskConfig(format="tsv", root="/x", max_tokens=512)))
    TEXT.check(experiment(TextTaskConfig()))  # wordnet: data.probe_max_tokens, checked with the data
    with pytest.raises(ValueError, match="task.max_tokens must be >= 6"):
        TEXT.check(experiment(TextTaskConfig(format="tsv", root="/x", text_columns=["a", "b"], max_tokens=5)))

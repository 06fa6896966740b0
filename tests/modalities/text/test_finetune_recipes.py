"""The text fine-tuning recipes: each loads, reads its task's files as GLUE writes them, and carries the RoBERTa
fine-tuning hyper-parameters of fairseq examples/roberta/config/finetuning/<task>.yaml (the audit table below was
copied from those files: lr, batch_size, max_update, warmup_updates; every task: max_epoch 10, Adam (0.9, 0.98),
eps 1e-6, weight decay 0.1, no clipping, dropout and attention dropout 0.1, polynomial_decay)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modalities.text.data.wordnet_pairs import main as write_wordnet_pairs
from modalities.text.task import build_task
from tests.conftest import TEXT_FIXTURES
from tests.modalities.text.test_task import COLA, MNLI_DEV, MNLI_TRAIN, MRPC, QNLI, RTE, SST2_DEV, SST2_TRAIN, write
from unimim.app.experiment import load_recipe
from unimim.config import ConfigError

ROOT = Path(__file__).resolve().parents[3]
RECIPES = ROOT / "recipes" / "text" / "finetune"
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
COMMON = {"epochs": 10, "schedule": "polynomial", "weight_decay": 0.1, "betas": [0.9, 0.98], "eps": 1e-6,
          "clip_grad": 0.0, "dropout": 0.1, "head": {"pool": "first", "dropout": 0.1}}


def finetune_block(path: Path) -> dict:
    """The commented ``# finetune:`` block of a recipe, uncommented and read as YAML."""
    lines = path.read_text().splitlines()
    start = lines.index("# finetune:")
    block = [lines[start][2:]]
    for line in lines[start + 1 :]:
        if not line.startswith("#   "):
            break
        block.append(line[2:])
    return yaml.safe_load("\n".join(block))["finetune"]


def tiny(tmp_path: Path, root: Path | None = None) -> list[str]:
    overrides = [f"data.tokenizer={TEXT_FIXTURES / 'tokenizer.json'}", f"data.wordnet_root={TEXT_FIXTURES / 'wordnet'}",
                 "adapter.vocab_size=300", f"train.out_dir={tmp_path}"]
    return overrides + ([f"task.root={root}"] if root is not None else [])


def test_every_text_finetune_recipe_is_audited_or_cpu_scale():
    names = {p.stem for p in RECIPES.glob("*.yaml")}
    assert {f"glue_{t}" for t in AUDIT} | {"wordnet_cpu", "wordnet_pairs_cpu"} == names


@pytest.mark.parametrize("name", sorted(AUDIT))
def test_glue_recipe_matches_fairseq_and_reads_glue_files(name, tmp_path):
    source, lr, batch, updates, warmup, classes, files = AUDIT[name]
    path = RECIPES / f"glue_{name}.yaml"
    assert FAIRSEQ + source in path.read_text()
    ft = finetune_block(path)
    assert (ft["lr"], ft["batch_size"], ft["steps"], ft["warmup_steps"]) == (lr, batch, updates, warmup), source
    assert {k: ft[k] for k in COMMON} == COMMON
    cfg = load_recipe(path)
    assert cfg.task.name == name and cfg.task.max_tokens == 512 == cfg.adapter.max_positions
    # the recipe's columns and splits on GLUE's own layout (a few lines of it)
    root = write(tmp_path / name, files)
    cfg = load_recipe(path, tiny(tmp_path, root))
    task = build_task(cfg.task, cfg)
    assert list(task.classes) == classes and len(task.train) >= 2 and len(task.test) >= 1
    assert task.train.skipped.total == 0 and task.test.skipped.total == 0
    assert task.collate([task.train[0], task.train[1]]).labels.shape == (2,)


def test_cpu_recipes_build_on_the_shipped_tiny_data(tmp_path):
    cfg = load_recipe(RECIPES / "wordnet_cpu.yaml", tiny(tmp_path) + ["data.probe_max_tokens=16"])
    task = build_task(cfg.task, cfg)
    assert task.name == "wordnet" and task.num_classes == 45 and len(task.train) > 0
    out = tmp_path / "wordnet_pairs"
    assert write_wordnet_pairs([str(out), "--wordnet", str(TEXT_FIXTURES / "wordnet")]) == 0
    overrides = tiny(tmp_path, out) + ["adapter.max_positions=128", "data.block_size=128"]
    cfg = load_recipe(RECIPES / "wordnet_pairs_cpu.yaml", overrides)
    task = build_task(cfg.task, cfg)
    assert task.name == "wordnet_pairs" and list(task.classes) == ["different", "same"]
    ids = task.train[0]["inputs"].tolist()
    assert ids[0] == 0 and ids[-1] == 2 and ids.count(2) == 3 and len(ids) <= 128  # <s> A </s></s> B </s>
    for path in RECIPES.glob("*_cpu.yaml"):
        ft = finetune_block(path)
        assert ft["warmup_steps"] == round(0.06 * ft["steps"])  # the GLUE recipes' 6 % warm-up
        assert {k: ft[k] for k in COMMON if k != "epochs"} == {k: v for k, v in COMMON.items() if k != "epochs"}


def test_task_budget_is_checked_when_the_recipe_loads(tmp_path):
    with pytest.raises(ConfigError, match="task.max_tokens=1024 exceeds adapter.max_positions=512"):
        load_recipe(RECIPES / "glue_sst2.yaml", ["task.max_tokens=1024"])
    with pytest.raises(ConfigError, match="unknown config key 'task.label_col'"):
        load_recipe(RECIPES / "glue_sst2.yaml", ["task.label_col=x"])

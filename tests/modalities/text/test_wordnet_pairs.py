"""The WordNet same-lexicographer-file pair task: labels true to WordNet, splits disjoint, files GLUE-readable."""

from __future__ import annotations

from types import SimpleNamespace

from modalities.text.data.corpora import synset_split, wordnet_glosses
from modalities.text.data.dataset import TextDataConfig
from modalities.text.data.wordnet_pairs import POS_FAMILY, gloss_pairs, main
from modalities.text.model.adapter import TextAdapterConfig
from modalities.text.task import TextTaskConfig, build_task
from tests.conftest import TEXT_FIXTURES

WORDNET = TEXT_FIXTURES / "wordnet"


def test_pairs_are_true_to_wordnet_and_splits_disjoint():
    glosses = {" ".join(g.text.split()): g for g in wordnet_glosses(WORDNET)}
    pairs = gloss_pairs(WORDNET)
    assert pairs == gloss_pairs(WORDNET)  # a function of WordNet alone
    for split, rows in pairs.items():
        assert len(rows) > 10
        same = sum(label == "same" for _, _, label in rows)
        assert 0.25 < same / len(rows) < 0.75  # both classes, about half each
        for a, b, label in rows:
            ga, gb = glosses[a], glosses[b]
            assert ga.synset != gb.synset
            assert POS_FAMILY[ga.synset[0]] == POS_FAMILY[gb.synset[0]]  # never told apart by part of speech
            assert (ga.label == gb.label) == (label == "same")
            assert synset_split(ga.synset, 0.2) == synset_split(gb.synset, 0.2) == split
    train = {a for a, _, _ in pairs["train"]} | {b for _, b, _ in pairs["train"]}
    assert not train & ({a for a, _, _ in pairs["test"]} | {b for _, b, _ in pairs["test"]})
    capped = gloss_pairs(WORDNET, max_pairs={"train": 5})
    assert capped["train"] == pairs["train"][:5] and capped["test"] == pairs["test"]


def test_written_files_read_as_a_glue_pair_task(tmp_path):
    out = tmp_path / "wordnet_pairs"
    assert main([str(out), "--wordnet", str(WORDNET)]) == 0
    assert out.joinpath("train.tsv").read_text().startswith("sentence1\tsentence2\tlabel\n")
    cfg = SimpleNamespace(data=TextDataConfig(tokenizer=str(TEXT_FIXTURES / "tokenizer.json"), block_size=64),
                          adapter=TextAdapterConfig(vocab_size=300, max_positions=128))
    task = TextTaskConfig(format="tsv", root=str(out), text_columns=["sentence1", "sentence2"])
    t = build_task(task, cfg)
    pairs = gloss_pairs(WORDNET)
    assert t.name == "wordnet_pairs" and list(t.classes) == ["different", "same"]
    assert len(t.train) == len(pairs["train"]) and len(t.test) == len(pairs["test"])
    assert t.train.skipped.total == 0 and t.test.skipped.total == 0  # every pair written is read back
    assert [t.classes[t.train[i]["labels"]] for i in range(len(t.train))] == [x[2] for x in pairs["train"]]
    assert main([str(tmp_path / "x"), "--wordnet", str(tmp_path / "none")]) == 2

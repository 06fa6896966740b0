"""Labelled text tasks: GLUE's files as they come, CSV / JSONL / class folders, label ids, skipped rows, errors,
truncation, the collate, and the WordNet default against the probe's sets."""

from __future__ import annotations

import json
import logging
import zlib
from types import SimpleNamespace

import pytest
import torch

from modalities.text import TEXT
from modalities.text.data.corpora import LEXNAMES, synset_split, wordnet_glosses
from modalities.text.data.dataset import TextDataConfig
from modalities.text.data.source import build_eval_sets
from modalities.text.data.tokenizer import PAD_ID, load_tokenizer
from modalities.text.model.adapter import TextAdapterConfig
from modalities.text.task import TextTaskConfig, build_task, collate_labelled
from tests.conftest import TEXT_FIXTURES
from unimim.config import ConfigError, from_dict

TOKENIZER = TEXT_FIXTURES / "tokenizer.json"
TOK = load_tokenizer(TOKENIZER)
MISSING = "rows with a missing label (absent, empty, or not a string or integer)"

# GLUE's layouts, a few lines each, as the GLUE download writes them (tab-separated; quotes are text)
SST2_TRAIN = ("sentence\tlabel\n"
              "hide new secretions from the parental units \t0\n"
              'the film \'s " twist is obvious \t0\n'  # an unbalanced quote: CSV quoting would eat the next lines
              "that loves its characters \t1\n"
              '" charming " and often affecting \t1\n')
SST2_DEV = "sentence\tlabel\nit 's a charming journey . \t1\nunflinchingly bleak \t0\n"
MRPC_HEAD = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"  # the original files start with a BOM
MRPC = MRPC_HEAD + (
    '1\t702876\t702977\tAmrozi accused his brother , whom he called " the witness " .\tReferring to him as '
    'only " the witness " , Amrozi accused his brother .\n'
    "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain .\tYucaipa bought Dominick 's in "
    "1995 .\n")
QNLI = ("index\tquestion\tsentence\tlabel\n"
        "0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it, Tamers is darker.\t"
        "not_entailment\n"
        "1\tWhich missile batteries often have individual launchers?\tWhen MANPADS is operated by specialists, "
        "batteries may have several dozen teams.\tnot_entailment\n"
        "2\tWhat two things does Popper argue Tarski's theory involves?\tHe argued that Tarski's theory of truth "
        "is objective.\tentailment\n")
RTE = ("index\tsentence1\tsentence2\tlabel\n"
       "0\tDana Reeve, the widow of the actor Christopher Reeve, has died.\tChristopher Reeve had an accident.\t"
       "not_entailment\n"
       "1\tYet, we now are discovering that antibiotics are losing their effectiveness.\tBacteria is winning the "
       "war against antibiotics.\tentailment\n")
MNLI_COLS = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
             "sentence2_parse\tsentence1\tsentence2")
MNLI_TRAIN = (MNLI_COLS + "\tlabel1\tgold_label\n"
              "0\t31193\t31193n\tgovernment\t( ( Conceptually cream ) skimming )\t( ( ( Product and ) geography ) )\t"
              "(ROOT (S (NP (JJ Conceptually))))\t(ROOT (S (NP (NN Product))))\tConceptually cream skimming has two "
              "basic dimensions - product and geography.\tProduct and geography are what make cream skimming "
              "work. \tneutral\tneutral\n"
              "1\t101457\t101457e\ttelephone\t( you ( ( know ) ) )\t( You ( ( lose ) ) )\t(ROOT (S (NP (PRP you))))\t"
              "(ROOT (S (NP (PRP You))))\tyou know during the season and i guess\tYou lose the things to the "
              "following level if the people recall.\tentailment\tentailment\n"
              "2\t134793\t134793e\tfiction\t( ( One ) ( ( of ) ) )\t( ( A ) ( ( member ) ) )\t(ROOT (S (NP (CD One))))"
              "\t(ROOT (S (NP (DT A))))\tOne of our number will carry out your instructions minutely.\tA member of "
              "my team will execute your orders with immense precision.\tcontradiction\tcontradiction\n")
MNLI_DEV = (MNLI_COLS + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
            "0\t63735\t63735n\tslate\t( ( The ) new )\t( ( The ) rights )\t(ROOT (NP (DT The)))\t(ROOT (NP (DT The)))"
            "\tThe new rights are nice enough\tEveryone really likes the newest benefits \tneutral\tentailment\t"
            "neutral\tneutral\tneutral\tneutral\n")
COLA = ("gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"  # no header
        "gj04\t0\t*\tThey drank the pub.\n"
        "gj04\t1\t\tThe more we study verbs, the crazier they get.\n")


def experiment(max_positions: int = 64) -> SimpleNamespace:
    data = TextDataConfig(tokenizer=str(TOKENIZER), wordnet_root=str(TEXT_FIXTURES / "wordnet"), block_size=8,
                          probe_max_tokens=8)
    return SimpleNamespace(data=data, adapter=TextAdapterConfig(vocab_size=300, max_positions=max_positions))


def write(root, files: dict[str, str]):
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def texts(ds, i: int) -> list[str]:
    """The texts of item i decoded back from its ids: ``<s> A </s>`` -> [A]; ``<s> A </s> </s> B </s>`` -> [A, B]."""
    ids = ds[i]["inputs"].tolist()
    assert ids[0] == 0 and ids[-1] == 2
    body = ids[1:-1]
    if 2 in body:  # a pair: </s> </s> in the middle
        k = body.index(2)
        assert body[k + 1] == 2
        return [TOK.decode(body[:k]), TOK.decode(body[k + 2 :])]
    return [TOK.decode(body)]


def task(**kw) -> TextTaskConfig:
    return from_dict(TextTaskConfig, kw)


def test_sst2_tsv_quotes_are_text(tmp_path):
    root = write(tmp_path / "SST-2", {"train.tsv": SST2_TRAIN, "dev.tsv": SST2_DEV, "test.tsv": "index\tsentence\n"})
    t = build_task(task(format="tsv", root=str(root)), experiment())
    assert t.name == "sst2" and t.kind == "classification" and list(t.classes) == ["0", "1"]
    assert len(t.train) == 4 and len(t.test) == 2  # dev.tsv is the test split; test.tsv (no labels) is not read
    assert texts(t.train, 1) == ['the film \'s " twist is obvious']
    assert texts(t.train, 3) == ['" charming " and often affecting']
    assert [t.train[i]["labels"] for i in range(4)] == [0, 0, 1, 1]
    assert t.train[0]["inputs"].tolist() == [0, *TOK.encode("hide new secretions from the parental units"), 2]


def test_mrpc_pairs_with_bom_and_spaces_in_column_names(tmp_path):
    root = write(tmp_path / "MRPC", {"train.tsv": MRPC, "dev.tsv": MRPC})
    cfg = task(format="tsv", root=str(root), text_columns=["#1 String", "#2 String"], label_column="Quality")
    t = build_task(cfg, experiment(max_positions=256))
    assert list(t.classes) == ["0", "1"] and [t.train[i]["labels"] for i in range(2)] == [1, 0]
    a = 'Amrozi accused his brother , whom he called " the witness " .'
    b = 'Referring to him as only " the witness " , Amrozi accused his brother .'
    assert texts(t.train, 0) == [a, b]
    assert t.train[0]["inputs"].tolist() == [0, *TOK.encode(a), 2, 2, *TOK.encode(b), 2]


@pytest.mark.parametrize(("text", "columns"), [(QNLI, ["question", "sentence"]), (RTE, ["sentence1", "sentence2"])])
def test_qnli_rte_string_labels_sorted(tmp_path, text, columns):
    root = write(tmp_path / "glue", {"train.tsv": text, "dev.tsv": text})
    t = build_task(task(format="tsv", root=str(root), text_columns=columns), experiment(max_positions=512))
    assert list(t.classes) == ["entailment", "not_entailment"]
    labels = [line.rsplit("\t", 1)[1] for line in text.splitlines()[1:]]
    assert [t.classes[t.train[i]["labels"]] for i in range(len(t.train))] == labels
    assert texts(t.train, 0) == [x.strip() for x in text.splitlines()[1].split("\t")[1:3]]


def test_mnli_dev_matched_gold_label(tmp_path):
    root = write(tmp_path / "MNLI", {"train.tsv": MNLI_TRAIN, "dev_matched.tsv": MNLI_DEV})
    cfg = task(format="tsv", root=str(root), test_split="dev_matched.tsv", text_columns=["sentence1", "sentence2"],
               label_column="gold_label")
    t = build_task(cfg, experiment(max_positions=256))
    assert t.name == "mnli" and list(t.classes) == ["contradiction", "entailment", "neutral"]
    assert [t.train[i]["labels"] for i in range(3)] == [2, 1, 0] and t.test[0]["labels"] == 2
    assert texts(t.test, 0) == ["The new rights are nice enough", "Everyone really likes the newest benefits"]


def test_cola_headerless_columns(tmp_path):
    root = write(tmp_path / "CoLA", {"train.tsv": COLA, "dev.tsv": COLA})
    cfg = task(format="tsv", root=str(root), header=False, columns=["source", "label", "star", "sentence"])
    t = build_task(cfg, experiment(max_positions=128))
    assert len(t.train) == 3 and [t.train[i]["labels"] for i in range(3)] == [1, 0, 1]
    assert texts(t.train, 1) == ["They drank the pub."]
    with pytest.raises(ValueError, match="without a header line needs task.columns"):
        build_task(task(format="tsv", root=str(root), header=False), experiment())


def test_csv_quoting_and_jsonl(tmp_path):
    csv_text = 'text,label\n"Hello, world","pos"\n"She said ""no"".",neg\n'
    root = write(tmp_path / "c", {"reviews_train.csv": csv_text, "reviews_valid.csv": csv_text})
    t = build_task(task(format="csv", root=str(root), train_split="reviews_train.csv",
                        test_split="reviews_valid.csv", text_columns=["text"]), experiment())
    assert texts(t.train, 0) == ["Hello, world"] and texts(t.train, 1) == ['She said "no".']
    assert list(t.classes) == ["neg", "pos"] and t.train[0]["labels"] == 1
    lines = [{"premise": "a cat sat", "hypothesis": "an animal sat", "label": 1},
             {"premise": "it rains", "hypothesis": "it is dry", "label": 0}, {"premise": "x", "label": 1},
             {"premise": "y", "hypothesis": "z", "label": 0.5}, ["not", "an", "object"]]
    jsonl = "\n".join(json.dumps(x) for x in lines) + "\n\n"
    root = write(tmp_path / "j", {"train.jsonl": jsonl, "dev.jsonl": jsonl})
    t = build_task(task(format="jsonl", root=str(root), text_columns=["premise", "hypothesis"]), experiment())
    assert len(t.train) == 2 and t.train.skipped.counts == {  # no hypothesis; a float label; not an object
        "rows with a missing or non-string text": 1, "lines that are not a JSON object": 1,
        MISSING: 1}
    assert texts(t.train, 0) == ["a cat sat", "an animal sat"] and t.train[0]["labels"] == 1


def test_class_folders(tmp_path):
    root = tmp_path / "news"
    for split, docs in (("train", {"sport": ["goal!", "a match"], "tech": ["a chip"]}),
                        ("val", {"sport": ["the race"], "tech": ["new phone"], "food": ["soup"]})):
        for cls, items in docs.items():
            (root / split / cls).mkdir(parents=True)
            for i, text in enumerate(items):
                (root / split / cls / f"{i}.txt").write_text(text + "\n")
    (root / "train" / "tech" / "notes.md").write_text("not an example")
    (root / "train" / "tech" / "blob.txt").write_bytes(b"\x00\x01binary")
    t = build_task(task(format="folder", root=str(root)), experiment())
    assert list(t.classes) == ["sport", "tech"] and len(t.train) == 3
    assert sorted((texts(t.train, i)[0], t.train[i]["labels"]) for i in range(3)) == [
        ("a chip", 1), ("a match", 0), ("goal!", 0)]
    assert t.train.skipped.counts == {"files that are not text": 1}
    assert len(t.test) == 2 and t.test.skipped.total == 1  # food: a class never seen in training
    (root / "test").mkdir()
    with pytest.raises(FileNotFoundError, match=r"several test splits \(test, val\).*set task.test_split"):
        build_task(task(format="folder", root=str(root)), experiment())
    assert len(build_task(task(format="folder", root=str(root), test_split="val"), experiment()).test) == 2


def test_label_order_numeric_given_and_skipped_rows_counted(tmp_path, caplog):
    train = "sentence\tlabel\na\t2\nb\t10\nc\t1\nd\t\ne\tx\tEXTRA\nf\t10\n"
    dev = "sentence\tlabel\ng\t2\nh\t7\ni\t1\n"
    root = write(tmp_path / "t", {"train.tsv": train, "dev.tsv": dev})
    with caplog.at_level(logging.WARNING):
        t = build_task(task(format="tsv", root=str(root)), experiment())
    assert list(t.classes) == ["1", "2", "10"]  # integers sort as numbers
    assert [t.train[i]["labels"] for i in range(len(t.train))] == [1, 2, 0, 2]
    assert t.train.skipped.counts == {MISSING: 1,
                                      "lines with a number of fields other than the 2 columns": 1}
    assert t.train.skipped.first[MISSING] == "train.tsv:5"
    assert t.test.skipped.counts == {"rows with a label not among the 3 classes": 1}
    assert "train.tsv:3 ('7')" not in caplog.text and "dev.tsv:3 ('7')" in caplog.text
    assert "skipped 2 rows" in caplog.text and "skipped 1 rows" in caplog.text
    t = build_task(task(format="tsv", root=str(root), labels=["10", "2"]), experiment())
    assert [t.train[i]["labels"] for i in range(len(t.train))] == [1, 0, 0]  # "1" is outside task.labels: skipped
    assert t.train.skipped.counts["rows with a label not among the 2 classes"] == 1


def test_missing_split_and_column_name_what_was_found(tmp_path):
    root = write(tmp_path / "RTE", {"train.tsv": RTE, "test.tsv": RTE})
    with pytest.raises(FileNotFoundError, match=r"task.test_split: no file .*dev.tsv; files in .*: test.tsv, "
                                                r"train.tsv"):
        build_task(task(format="tsv", root=str(root)), experiment())
    cfg = task(format="tsv", root=str(root), test_split="test.tsv", text_columns=["sentence1", "hypothesis"])
    with pytest.raises(ValueError, match=r"no column 'hypothesis'; the columns found are 'index', 'sentence1', "
                                         r"'sentence2', 'label'"):
        build_task(cfg, experiment())
    with pytest.raises(FileNotFoundError, match="task.root .* is not a directory"):
        build_task(task(format="tsv", root=str(tmp_path / "nope")), experiment())
    empty = write(tmp_path / "E", {"train.tsv": "sentence\tlabel\n", "dev.tsv": "sentence\tlabel\n"})
    with pytest.raises(ValueError, match="has 0 label"):
        build_task(task(format="tsv", root=str(empty)), experiment())
    bad = write(tmp_path / "B", {"train.tsv": SST2_TRAIN, "dev.tsv": "sentence\tlabel\nnew\t5\n"})
    with pytest.raises(ValueError, match=r"no usable example in the test split .*rows with a label not among"):
        build_task(task(format="tsv", root=str(bad)), experiment())


def test_truncation_to_max_tokens(tmp_path):
    long_a, short_b = "word " * 40, "tiny"
    rows = f"s1\ts2\tlabel\n{long_a}\t{short_b}\t0\n{short_b}\t{short_b}\t1\n"
    root = write(tmp_path / "p", {"train.tsv": rows, "dev.tsv": rows})
    t = build_task(task(format="tsv", root=str(root), text_columns=["s1", "s2"], max_tokens=20), experiment())
    ids = t.train[0]["inputs"].tolist()
    b = TOK.encode(short_b)
    assert len(ids) == 20 and ids == [0, *TOK.encode(long_a.strip())[: 16 - len(b)], 2, 2, *b, 2]
    assert len(t.train[1]["inputs"]) == 4 + 2 * len(b)
    t = build_task(task(format="tsv", root=str(root), text_columns=["s1"]), experiment(max_positions=12))
    assert t.train[0]["inputs"].tolist() == [0, *TOK.encode(long_a.strip())[:10], 2]  # default: max_positions
    with pytest.raises(ValueError, match="task.max_tokens=80 exceeds adapter.max_positions=64"):
        build_task(task(format="tsv", root=str(root), text_columns=["s1"], max_tokens=80), experiment())
    with pytest.raises(ValueError, match="task.max_tokens must be >= 6"):
        build_task(task(format="tsv", root=str(root), text_columns=["s1", "s2"], max_tokens=5), experiment())


def test_max_train_is_a_fixed_subset_in_file_order(tmp_path):
    rows = "sentence\tlabel\n" + "".join(f"row {i}\t{i % 2}\n" for i in range(50))
    root = write(tmp_path / "s", {"train.tsv": rows, "dev.tsv": rows})
    cfg = task(format="tsv", root=str(root), max_train=10, max_test=3)
    a, b = build_task(cfg, experiment()), build_task(cfg, experiment())
    got = [texts(a.train, i)[0] for i in range(len(a.train))]
    assert len(got) == 10 and got == [texts(b.train, i)[0] for i in range(10)]
    numbers = [int(x.split()[1]) for x in got]
    assert numbers == sorted(numbers) and numbers != list(range(10)) and len(a.test) == 3


def test_collate_pads_and_labels(tmp_path):
    root = write(tmp_path / "SST-2", {"train.tsv": SST2_TRAIN, "dev.tsv": SST2_DEV})
    t = build_task(task(format="tsv", root=str(root)), experiment())
    items = [t.train[i] for i in range(4)]
    batch = t.collate(items)
    lengths = [len(it["inputs"]) for it in items]
    assert batch.inputs.shape == (4, max(lengths)) and batch.labels.tolist() == [0, 0, 1, 1]
    assert batch.labels.dtype == torch.int64 and batch.mask is None
    assert batch.padding_mask.tolist() == [[j >= n for j in range(max(lengths))] for n in lengths]
    assert bool((batch.inputs[batch.padding_mask] == PAD_ID).all())
    same = collate_labelled([items[0], items[0]])
    assert same.padding_mask is None and t.eval_collate is t.collate and t.token_padding is None


def test_wordnet_default_is_the_probe_sets():
    cfg = experiment()
    t = TEXT.build_task(TEXT.task_config(), cfg, True)
    assert t.name == "wordnet" and tuple(t.classes) == LEXNAMES and t.num_classes == 45
    # the probe's sets, recomputed here from the WordNet files: split by synset hash, ordered by CRC-32, <s> gloss </s>
    glosses = list(wordnet_glosses(cfg.data.wordnet_root))
    probe = build_eval_sets(cfg.data, cfg.adapter)
    for split, ds, other in (("train", t.train, probe[0]), ("test", t.test, probe[1])):
        mine = sorted((g for g in glosses if synset_split(g.synset, cfg.data.probe_test_fraction) == split),
                      key=lambda g: zlib.crc32(g.synset.encode()))
        assert len(ds) == len(mine) == len(other) > 0
        for i, g in enumerate(mine):
            expected = [0, *TOK.encode(g.text)[: cfg.data.probe_max_tokens - 2], 2]
            assert ds[i]["inputs"].tolist() == expected == other[i]["inputs"].tolist()
            assert ds[i]["labels"] == g.label == other[i]["labels"]
    assert t.collate([t.train[0], t.train[1]]).labels.tolist() == [t.train[0]["labels"], t.train[1]["labels"]]


def test_task_config_is_strict():
    with pytest.raises(ConfigError, match="unknown config key 'text_colums'"):
        from_dict(TextTaskConfig, {"text_colums": ["a"]})
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(TextTaskConfig, {"format": "parquet"})
    with pytest.raises((ConfigError, ValueError), match="task.root is not read by task.format=wordnet"):
        from_dict(TextTaskConfig, {"root": "/x"})
    with pytest.raises((ConfigError, ValueError), match="needs task.root"):
        from_dict(TextTaskConfig, {"format": "tsv"})
    with pytest.raises((ConfigError, ValueError), match="1 .sequence. or 2 .sentence pair."):
        from_dict(TextTaskConfig, {"format": "tsv", "root": "/x", "text_columns": ["a", "b", "c"]})
    with pytest.raises((ConfigError, ValueError), match="at least 2 distinct"):
        from_dict(TextTaskConfig, {"format": "tsv", "root": "/x", "labels": ["a", "a"]})

"""The labelled text tasks of fine-tuning and probes: the recipe's ``task`` section and ``build_task``.

Formats (``task.format``):

* ``wordnet`` (the default): WordNet gloss -> lexicographer category, 45 classes, split by synset -- the probe's
  sets exactly (:func:`~modalities.text.data.source.build_eval_sets`, the ``data.wordnet_root`` / ``data.probe_*``
  settings).
* ``tsv`` / ``csv`` / ``jsonl``: files ``root/train_split`` and ``root/test_split`` (default ``train.<ext>`` and
  ``dev.<ext>``: GLUE's labelled splits; GLUE's ``test.tsv`` has no labels), one or two ``text_columns`` (sequence
  or sentence-pair classification) and a ``label_column`` (:mod:`modalities.text.data.labelled`).
* ``folder``: ``root/train/<class>/*.txt`` and ``root/<test_split>/<class>/*.txt`` (default: the one of ``test``,
  ``dev``, ``val``, ``validation`` that exists).

Labels map to ids in a fixed order: ``task.labels`` when given, else the training split's labels sorted (as numbers
when they all are integers, e.g. ``0 1``; else as strings, e.g. ``entailment not_entailment``). A row whose label is
missing, or is not one of the classes (a test label never seen in training, a training label outside
``task.labels``), is skipped, counted and logged with the first place it occurs; a split left with no example is a
ValueError. A split file or a column that does not exist is an error naming what was found.

Encoding as RoBERTa / data2vec fine-tuning (:mod:`modalities.text.data.encoding`): ``<s> A </s>``, or ``<s> A </s>
</s> B </s>`` for pairs, cut to ``task.max_tokens`` (default ``adapter.max_positions``; pairs longest-first). The
collate pads with ``<pad>`` and gives the padding mask; the classification head pools the first token ``<s>``.
Text has no training-time augmentation (``train_augment`` changes nothing).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from modalities.text.data.corpora import LEXNAMES
from modalities.text.data.encoding import PAIR_SPECIALS, SINGLE_SPECIALS, encode_pair, encode_single
from modalities.text.data.labelled import Row, Skipped, read_class_folders, read_table
from modalities.text.data.source import build_eval_sets
from modalities.text.data.tokenizer import PAD_ID, TextTokenizer, load_tokenizer
from unimim.core.batch import Batch
from unimim.eval.task import LabelledTask

log = logging.getLogger(__name__)

TaskFormat = Literal["wordnet", "tsv", "csv", "jsonl", "folder"]
FILE_FORMATS = ("tsv", "csv", "jsonl")
FOLDER_TEST_SPLITS = ("test", "dev", "val", "validation")
SUBSET_SEED = 0  # the max_train / max_test subsets are a property of the task, not of the run's seed


@dataclass
class TextTaskConfig:
    format: TaskFormat = "wordnet"
    name: str | None = None            # RUN_DIR/finetune/<name> (default: wordnet, or root's folder name, "sst2")
    root: str | None = None            # the folder holding the split files / the split folders (not for wordnet)
    train_split: str | None = None     # file (tsv/csv/jsonl; default train.<ext>) or folder (default train)
    test_split: str | None = None      # file (default dev.<ext>) or folder (default: test | dev | val | validation)
    text_columns: list[str] = field(default_factory=lambda: ["sentence"])  # 1: sequence, 2: sentence pair
    label_column: str = "label"
    header: bool = True                # tsv/csv: the first line names the columns
    columns: list[str] | None = None   # tsv/csv without a header: the name of each column, in order
    labels: list[str] | None = None    # class names in id order (default: the training labels, sorted)
    max_tokens: int | None = None      # <s> and </s> included (default adapter.max_positions)
    max_train: int | None = None       # a fixed random subset of at most this many training examples (None: all)
    max_test: int | None = None

    def __post_init__(self) -> None:
        if self.format == "wordnet":
            given = [k for k in ("root", "train_split", "test_split", "labels", "columns", "max_tokens",
                                 "max_train", "max_test") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"task.{given[0]} is not read by task.format=wordnet (it uses data.wordnet_root "
                                 "and data.probe_*); set task.format to tsv, csv, jsonl or folder")
        elif self.root is None:
            raise ValueError(f"task.format={self.format} needs task.root (the folder of the split files)")
        if not 1 <= len(self.text_columns) <= 2:
            raise ValueError(f"task.text_columns takes 1 (sequence) or 2 (sentence pair) columns, got "
                             f"{self.text_columns}")
        if self.labels is not None:
            duplicates = sorted({x for x in self.labels if self.labels.count(x) > 1})
            if duplicates or len(self.labels) < 2:
                raise ValueError(f"task.labels must name at least 2 distinct classes, got {self.labels}")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ValueError(f"task.name must be a plain directory name (letters, digits, . _ -), got {self.name!r}")
        for key in ("max_train", "max_test"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"task.{key} must be >= 1 or null, got {getattr(self, key)}")

    @property
    def is_pair(self) -> bool:
        return self.format != "folder" and len(self.text_columns) == 2

    @property
    def min_tokens(self) -> int:
        """The shortest ``max_tokens`` that keeps a token of each text."""
        return PAIR_SPECIALS + 2 if self.is_pair else SINGLE_SPECIALS + 1

    @property
    def task_name(self) -> str:
        if self.name is not None:
            return self.name
        if self.format == "wordnet":
            return "wordnet"
        return re.sub(r"[^a-z0-9_]+", "", Path(self.root).resolve().name.lower()) or "task"


def check_task(task: TextTaskConfig, max_positions: int) -> int:
    """The token budget of ``task`` against ``adapter.max_positions``; returns ``max_tokens``."""
    n = max_positions if task.max_tokens is None else task.max_tokens
    if n > max_positions:
        raise ValueError(f"task.max_tokens={n} exceeds adapter.max_positions={max_positions}")
    if n < task.min_tokens:
        raise ValueError(f"task.max_tokens must be >= {task.min_tokens} ("
                         f"{'<s> A </s> </s> B </s>' if task.is_pair else '<s> A </s>'} with a token of each text), "
                         f"got {n}")
    return n


def check_experiment_task(cfg: Any) -> None:
    """The experiment's ``task`` section against its adapter, at load time (the WordNet task reads
    ``data.probe_max_tokens``, checked with the data)."""
    task = getattr(cfg, "task", None)
    if task is not None and task.format != "wordnet":
        check_task(task, cfg.adapter.max_positions)


class EncodedTexts(Dataset):
    """Encoded examples: item i -> {"inputs": (L_i,) int64 ids, "labels": int class id}."""

    def __init__(self, ids: list[list[int]], labels: list[int], skipped: Skipped | None = None) -> None:
        if len(ids) != len(labels):
            raise ValueError(f"{len(ids)} sequences but {len(labels)} labels")
        self.items = [torch.tensor(x, dtype=torch.int64) for x in ids]
        self.labels = labels
        self.skipped = skipped if skipped is not None else Skipped()  # the rows of the split that were passed over

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"inputs": self.items[i], "labels": self.labels[i]}


def collate_labelled(items: list[dict[str, Any]]) -> Batch:
    """Labelled items -> Batch(inputs (B, L) padded with ``<pad>``, padding_mask (B, L) True = padding (None when no
    row is shorter than the longest), labels (B,) int64)."""
    length = max(int(it["inputs"].shape[0]) for it in items)
    inputs = torch.full((len(items), length), PAD_ID, dtype=torch.int64)  # (B, L)
    for i, it in enumerate(items):
        inputs[i, : it["inputs"].shape[0]] = it["inputs"]
    lengths = torch.tensor([int(it["inputs"].shape[0]) for it in items])  # (B,)
    padding = torch.arange(length)[None, :] >= lengths[:, None] if bool((lengths < length).any()) else None
    labels = torch.tensor([int(it["labels"]) for it in items], dtype=torch.int64)  # (B,)
    return Batch(inputs=inputs, padding_mask=padding, labels=labels)  # padding (B, L)


# ------------------------------------------------------------------------------------------------ splits


def _listing(directory: Path, dirs: bool) -> str:
    found = sorted(p.name for p in directory.iterdir() if p.is_dir() == dirs) if directory.is_dir() else []
    return ", ".join(found) if found else "nothing"


def split_paths(task: TextTaskConfig) -> dict[str, Path]:
    """{"train": path, "test": path} of a file or folder task; a split that does not exist is an error naming what
    was found."""
    root = Path(task.root)
    if not root.is_dir():
        raise FileNotFoundError(f"task.root {root} is not a directory")
    if task.format == "folder":
        train = root / (task.train_split or "train")
        if task.test_split is None:
            present = [s for s in FOLDER_TEST_SPLITS if (root / s).is_dir()]
            if len(present) != 1:
                problem = f"several test splits ({', '.join(present)})" if present else \
                    f"no test split ({' | '.join(FOLDER_TEST_SPLITS)})"
                raise FileNotFoundError(f"task.root {root} has {problem}; set task.test_split (folders found: "
                                        f"{_listing(root, dirs=True)})")
            test = root / present[0]
        else:
            test = root / task.test_split
        for key, path in (("train_split", train), ("test_split", test)):
            if not path.is_dir():
                raise FileNotFoundError(f"task.{key}: no folder {path}; folders in {root}: {_listing(root, dirs=True)}")
        return {"train": train, "test": test}
    ext = task.format
    paths = {"train": root / (task.train_split or f"train.{ext}"), "test": root / (task.test_split or f"dev.{ext}")}
    for key, path in (("train_split", paths["train"]), ("test_split", paths["test"])):
        if not path.is_file():
            raise FileNotFoundError(f"task.{key}: no file {path}; files in {root}: {_listing(root, dirs=False)}")
    return paths


def read_split(task: TextTaskConfig, path: Path, skipped: Skipped) -> list[Row]:
    if task.format == "folder":
        return read_class_folders(path, skipped)
    return read_table(path, task.format, task.text_columns, task.label_column, header=task.header,
                      columns=task.columns, skipped=skipped)


def class_names(task: TextTaskConfig, train_rows: list[Row]) -> list[str]:
    """The classes in id order: ``task.labels``, or the training labels sorted (numerically when all are integers)."""
    if task.labels is not None:
        return list(task.labels)
    found = {r.label for r in train_rows if r.label is not None}
    if all(re.fullmatch(r"[-+]?\d+", x) for x in found):
        names = sorted(found, key=int)
    else:
        names = sorted(found)
    if len(names) < 2:
        raise ValueError(f"the training split of task {task.task_name} has {len(names)} label(s) {names}: a "
                         "classification task needs at least 2")
    return names


def label_ids(rows: list[Row], classes: list[str], skipped: Skipped) -> tuple[list[Row], list[int]]:
    """The rows whose label is one of ``classes``, with their ids; the others are counted in ``skipped``."""
    index = {c: i for i, c in enumerate(classes)}
    kept, ids = [], []
    for r in rows:
        if r.label is None:
            skipped.add("rows with a missing label (absent, empty, or not a string or integer)", r.where)
        elif r.label not in index:
            skipped.add(f"rows with a label not among the {len(classes)} classes", f"{r.where} ({r.label!r})")
        else:
            kept.append(r)
            ids.append(index[r.label])
    return kept, ids


def subset(n: int, cap: int | None) -> np.ndarray:
    """Indices of a fixed random subset of at most ``cap`` of ``n`` examples, in their original order."""
    if cap is None or cap >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(n)[:cap])


def encode_rows(rows: list[Row], tokenizer: TextTokenizer, max_tokens: int, pair: bool) -> list[list[int]]:
    """``<s> A </s>`` or ``<s> A </s> </s> B </s>`` per row, at most ``max_tokens`` long."""
    columns = [tokenizer.encode_batch([r.texts[c] for r in rows]) for c in range(2 if pair else 1)]
    if pair:
        return [encode_pair(a, b, max_tokens) for a, b in zip(*columns)]
    return [encode_single(a, max_tokens) for a in columns[0]]


# ------------------------------------------------------------------------------------------------ build


def build_file_task(task: TextTaskConfig, data: Any, adapter: Any) -> LabelledTask:
    """A tsv / csv / jsonl / folder task (see the module docstring)."""
    max_tokens = check_task(task, adapter.max_positions)
    tokenizer = load_tokenizer(data.tokenizer)
    if tokenizer.vocab_size > adapter.vocab_size:
        raise ValueError(f"the tokenizer {data.tokenizer} has {tokenizer.vocab_size} tokens but adapter.vocab_size "
                         f"is {adapter.vocab_size}")
    paths = split_paths(task)
    name = task.task_name
    raw: dict[str, tuple[list[Row], Skipped]] = {}
    for split, path in paths.items():
        skipped = Skipped()
        raw[split] = (read_split(task, path, skipped), skipped)
    classes = class_names(task, raw["train"][0])
    sets = {}
    for split, (rows, skipped) in raw.items():
        rows, ids = label_ids(rows, classes, skipped)
        keep = subset(len(rows), task.max_train if split == "train" else task.max_test)
        rows, ids = [rows[i] for i in keep], [ids[i] for i in keep]
        if skipped.total:
            log.warning("task %s, %s split (%s): skipped %d rows: %s", name, split, paths[split], skipped.total,
                        skipped.summary())
        if not rows:
            raise ValueError(f"task {name}: no usable example in the {split} split {paths[split]}"
                             + (f" (skipped: {skipped.summary()})" if skipped.total else " (it is empty)"))
        sets[split] = EncodedTexts(encode_rows(rows, tokenizer, max_tokens, task.is_pair), ids, skipped)
        log.info("task %s, %s split: %d examples", name, split, len(rows))
    log.info("task %s: %d classes %s, %s, at most %d tokens", name, len(classes), classes,
             "sentence pairs" if task.is_pair else "single texts", max_tokens)
    return LabelledTask(name=name, kind="classification", train=sets["train"], test=sets["test"],
                        collate=collate_labelled, classes=tuple(classes))


def build_task(task: TextTaskConfig, cfg: Any, train_augment: bool = True) -> LabelledTask:
    """The labelled text task of ``task`` with the experiment's tokenizer (``cfg.data.tokenizer``) and token budget
    (``cfg.adapter.max_positions``). ``train_augment`` changes nothing: text is not augmented."""
    del train_augment
    if task.format == "wordnet":
        train, test = build_eval_sets(cfg.data, cfg.adapter)
        return LabelledTask(name=task.task_name, kind="classification", train=train, test=test,
                            collate=collate_labelled, classes=LEXNAMES)
    return build_file_task(task, cfg.data, cfg.adapter)

"""Pretraining examples, probe sets, batch collation and run-directory binding for text.

A pretraining example is one block of token ids (the teacher's input, never corrupted), the mask of the tokens
to predict, and -- for BERT-style masking -- the corrupted ids the student sees (``student_inputs``).
"""

from __future__ import annotations

import logging
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from modalities.text.adapter import TextAdapterConfig
from modalities.text.corpora import synset_split, wordnet_glosses
from modalities.text.data import TextBlocks, TextDataConfig, TokenArray
from modalities.text.masking import TextMaskConfig, TextMasker
from modalities.text.tokenizer import BOS_ID, EOS_ID, PAD_ID, TextTokenizer, load_tokenizer

log = logging.getLogger(__name__)

RUN_TOKENIZER = "tokenizer"  # the tokenizer's copy in a run directory: tokenizer.json / tokenizer.model


def check_tokenizer(tokenizer: TextTokenizer, data: TextDataConfig, adapter: TextAdapterConfig) -> None:
    if tokenizer.vocab_size > adapter.vocab_size:
        raise ValueError(f"the tokenizer {data.tokenizer} has {tokenizer.vocab_size} tokens but adapter.vocab_size "
                         f"is {adapter.vocab_size}; set adapter.vocab_size >= {tokenizer.vocab_size}")
    for name, n in (("data.block_size", data.block_size), ("data.probe_max_tokens", data.probe_max_tokens)):
        if n > adapter.max_positions:
            raise ValueError(f"{name}={n} exceeds adapter.max_positions={adapter.max_positions}")


class TextPretrainSource:
    """``example(i, rng)`` -> {"inputs": (L,) int64, "mask": (L,) | (R, L) bool, "student_inputs": same shape as
    mask, int64 (bert masking only)}."""

    def __init__(self, blocks: TextBlocks, masker: TextMasker, num_masks: int = 1) -> None:
        self.blocks = blocks
        self.masker = masker
        self.num_masks = num_masks
        self.corrupts = masker.cfg.kind == "bert"

    def __len__(self) -> int:
        return len(self.blocks)

    def example(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        ids = self.blocks[index]
        pairs = [self.masker(ids, rng) for _ in range(self.num_masks)]
        masks = np.stack([m for m, _ in pairs])  # (R, L)
        out: dict[str, Any] = {"inputs": torch.from_numpy(ids)}
        squeeze = (lambda a: a[0]) if self.num_masks == 1 else (lambda a: a)
        out["mask"] = torch.from_numpy(squeeze(masks))
        if self.corrupts:
            out["student_inputs"] = torch.from_numpy(squeeze(np.stack([s for _, s in pairs])))
        return out


def build_pretrain_source(data: TextDataConfig, masking: TextMaskConfig, adapter: TextAdapterConfig):
    tokenizer = load_tokenizer(data.tokenizer)
    check_tokenizer(tokenizer, data, adapter)
    array = TokenArray.build(data, tokenizer, Path(data.tokenizer))
    blocks = TextBlocks(array, data.block_size, data.cross_documents)
    log.info("text data: %d documents, %d tokens, %d blocks of <= %d tokens", array.num_documents,
             len(array.tokens), len(blocks), data.block_size)
    return TextPretrainSource(blocks, TextMasker(masking, tokenizer.vocab_size), masking.num_masks)


class GlossDataset(Dataset):
    """WordNet glosses as {"inputs": (L,) int64 ``<s> gloss </s>``, "labels": lexicographer file number}."""

    def __init__(self, ids: list[list[int]], labels: list[int], max_tokens: int) -> None:
        body = max_tokens - 2
        self.items = [torch.tensor([BOS_ID, *x[:body], EOS_ID]) for x in ids]
        self.labels = labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"inputs": self.items[i], "labels": self.labels[i]}


def build_eval_sets(data: TextDataConfig, adapter: TextAdapterConfig) -> tuple[Dataset, Dataset]:
    """WordNet gloss -> lexicographer category (45 classes), split by synset (train, test)."""
    tokenizer = load_tokenizer(data.tokenizer)
    check_tokenizer(tokenizer, data, adapter)
    splits: dict[str, list] = {"train": [], "test": []}
    for g in wordnet_glosses(data.wordnet_root):
        splits[synset_split(g.synset, data.probe_test_fraction)].append(g)
    out = []
    for name, cap in (("train", data.probe_max_train), ("test", data.probe_max_test)):
        glosses = sorted(splits[name], key=lambda g: zlib.crc32(g.synset.encode()))  # a fixed pseudo-random order
        glosses = glosses[:cap] if cap is not None else glosses
        if not glosses:
            raise ValueError(f"no WordNet glosses in the {name} split under {data.wordnet_root}")
        ids = tokenizer.encode_batch([g.text for g in glosses])
        out.append(GlossDataset(ids, [g.label for g in glosses], data.probe_max_tokens))
        log.info("WordNet probe %s split: %d glosses", name, len(glosses))
    return out[0], out[1]


def _pad(seqs: list[Tensor], value: int | bool) -> Tensor:
    """Right-pad tensors (..., L_i) to (B, ..., L_max)."""
    length = max(s.shape[-1] for s in seqs)
    out = torch.full((len(seqs), *seqs[0].shape[:-1], length), value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        out[i, ..., : s.shape[-1]] = s
    return out


def collate(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Pad a list of text examples into a batch: inputs (B, T) with ``<pad>``, mask (B, [R,] T) with False,
    student_inputs like mask with ``<pad>``, labels (B,), and padding_mask (B, T) (True = padding) when any row is
    shorter than the longest."""
    batch: dict[str, Tensor] = {"inputs": _pad([it["inputs"] for it in items], PAD_ID)}
    lengths = torch.tensor([it["inputs"].shape[-1] for it in items])
    if "mask" in items[0]:
        batch["mask"] = _pad([it["mask"] for it in items], False)
    if "student_inputs" in items[0]:
        batch["student_inputs"] = _pad([it["student_inputs"] for it in items], PAD_ID)
    if "labels" in items[0]:
        batch["labels"] = torch.tensor([int(it["labels"]) for it in items])
    T = batch["inputs"].shape[1]
    if bool((lengths < T).any()):
        batch["padding_mask"] = torch.arange(T)[None, :] >= lengths[:, None]  # (B, T)
    return batch


def bind_run_dir(data: TextDataConfig, run_dir: Path) -> None:
    """Keep the tokenizer with the run: copy ``data.tokenizer`` into ``run_dir`` (once) and point ``data.tokenizer``
    at the copy, so that evaluation reloads exactly the tokenizer the encoder was trained with."""
    src = Path(data.tokenizer)
    existing = [p for p in run_dir.glob(f"{RUN_TOKENIZER}.*") if p.suffix in (".json", ".model")]
    if existing:
        dst = existing[0]
    else:
        dst = run_dir / f"{RUN_TOKENIZER}{src.suffix}"
        if not src.is_file():
            raise FileNotFoundError(f"tokenizer {src} not found and {run_dir} holds no copy of it")
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    data.tokenizer = str(dst)

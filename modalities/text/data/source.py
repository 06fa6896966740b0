"""Pretraining examples, probe sets, batch collation and run-directory binding for text.

A pretraining example is one block of token ids (the teacher's input, never corrupted), the mask of the tokens
to predict, and -- for BERT-style masking -- the corrupted ids the student sees (``student_inputs``).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from modalities.text.data.corpora import synset_split, wordnet_glosses
from modalities.text.data.dataset import TextBlocks, TextDataConfig, TokenArray
from modalities.text.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, TextTokenizer, load_tokenizer
from modalities.text.masking import TextMaskConfig, TextMasker
from modalities.text.model.adapter import TextAdapterConfig
from unimim.core.batch import Batch
from unimim.core.masking import draw_masks

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
    """``example(i, rng)`` -> {"inputs": (L,) int64, "mask": (R, L) bool, "student_inputs": (R, L) int64 (bert
    masking only)}; :meth:`collate` pads examples into a :class:`Batch`."""

    def __init__(self, blocks: TextBlocks, masker: TextMasker, num_masks: int = 1) -> None:
        self.blocks = blocks
        self.masker = masker
        self.num_masks = num_masks

    def __len__(self) -> int:
        return len(self.blocks)

    def example(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        ids = self.blocks[index]
        masks = draw_masks(self.masker.generator, rng, self.num_masks, len(ids), self.masker.maskable(ids))  # (R, L)
        out: dict[str, Any] = {"inputs": torch.from_numpy(ids), "mask": torch.from_numpy(masks)}
        if self.masker.corrupts:
            out["student_inputs"] = torch.from_numpy(np.stack([self.masker.corrupt(ids, m, rng) for m in masks]))
        return out

    def collate(self, items: list[dict[str, Any]]) -> Batch:
        return collate_pretrain(items)


def check_experiment(cfg: Any) -> None:
    """The text settings that only fail together, checked when the config loads (the tokenizer's vocabulary is
    checked when it is loaded)."""
    for name, n in (("data.block_size", cfg.data.block_size), ("data.probe_max_tokens", cfg.data.probe_max_tokens)):
        if n > cfg.adapter.max_positions:
            raise ValueError(f"{name}={n} exceeds adapter.max_positions={cfg.adapter.max_positions}")


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


def collate_pretrain(items: list[dict[str, Any]]) -> Batch:
    """Pad pretraining examples into a Batch: inputs (B, L) with ``<pad>``, mask (B, R, L) with False, student_inputs
    like mask with ``<pad>``, and padding_mask (B, L) (True = padding) when any row is shorter than the longest."""
    inputs = _pad([it["inputs"] for it in items], PAD_ID)  # (B, L)
    student = _pad([it["student_inputs"] for it in items], PAD_ID) if "student_inputs" in items[0] else None
    return Batch(inputs=inputs, mask=_pad([it["mask"] for it in items], False), student_inputs=student,
                 padding_mask=_padding(items, inputs.shape[1]))


def _padding(items: list[dict[str, Any]], length: int) -> Tensor | None:
    lengths = torch.tensor([it["inputs"].shape[-1] for it in items])
    if bool((lengths < length).any()):
        return torch.arange(length)[None, :] >= lengths[:, None]  # (B, L)
    return None


def bind_run_dir(data: TextDataConfig, run_dir: Path) -> None:
    """Keep the tokenizer with the run: copy ``data.tokenizer`` into ``run_dir`` (once) and point ``data.tokenizer``
    at the copy, so that evaluation reloads exactly the tokenizer the encoder was trained with.

    Only a tokenizer that loads is copied, and its SHA-256 is recorded beside the copy. A copy that no longer loads
    or no longer matches its record is damaged: it is replaced by ``data.tokenizer`` (with a warning) when that is
    the recorded tokenizer -- or, for a copy without a record, any tokenizer that loads -- so that a bad copy never
    pins the later runs of a directory; otherwise a ValueError names both files."""
    src = Path(data.tokenizer)
    existing = [p for p in run_dir.glob(f"{RUN_TOKENIZER}.*") if p.suffix in (".json", ".model")]
    if existing:
        dst = existing[0]
        problem = _copy_problem(dst)
        if problem is not None:
            dst = _replace_damaged_copy(src, dst, problem)
    else:
        dst = run_dir / f"{RUN_TOKENIZER}{src.suffix}"
        if not src.is_file():
            raise FileNotFoundError(f"tokenizer {src} not found and {run_dir} holds no copy of it")
        load_tokenizer(src)  # a tokenizer that does not load is never copied
        _copy(src, dst)
    data.tokenizer = str(dst)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record(copy: Path) -> Path:
    return copy.with_name(copy.name + ".sha256")


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    _record(dst).write_text(_sha256(tmp) + "\n")
    tmp.replace(dst)


def _copy_problem(copy: Path) -> str | None:
    """Why the run's copy of its tokenizer is damaged, or None."""
    record = _record(copy)
    if record.is_file() and record.read_text().strip() != _sha256(copy):
        return "its content differs from the SHA-256 recorded when it was copied"
    try:
        load_tokenizer(copy)
    except ValueError as e:
        return str(e)
    return None


def _replace_damaged_copy(src: Path, dst: Path, problem: str) -> Path:
    """Replace the damaged copy ``dst`` by ``src`` (see :func:`bind_run_dir`); returns the new copy's path."""
    record = _record(dst)
    expected = record.read_text().strip() if record.is_file() else None
    if src.resolve() == dst.resolve() or not src.is_file():
        raise ValueError(f"the run's tokenizer copy {dst} is damaged ({problem}) and there is no other to restore "
                         f"it from (data.tokenizer={src})")
    if expected is not None and _sha256(src) != expected:
        raise ValueError(f"the run's tokenizer copy {dst} is damaged ({problem}) and data.tokenizer {src} is not the "
                         "tokenizer the run was started with (its SHA-256 differs): restore the copy, or start a "
                         "new run")
    try:
        load_tokenizer(src)
    except ValueError as e:
        raise ValueError(f"the run's tokenizer copy {dst} is damaged and data.tokenizer cannot replace it: {e}") \
            from None
    log.warning("the run's tokenizer copy %s is damaged (%s); replacing it with %s", dst, problem, src)
    new = dst.with_suffix(src.suffix)
    _copy(src, new)
    if new != dst:  # another back end: the damaged file goes, so that one copy is left
        dst.unlink()
        record.unlink(missing_ok=True)
    return new

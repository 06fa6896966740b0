"""Text pretraining data: documents tokenised once into a memory-mapped token array, cut into RoBERTa blocks.

The corpus is streamed document by document (:mod:`modalities.text.data.corpora`), encoded in batches and appended to
``tokens.bin`` (uint16, or uint32 for vocabularies over 65,536), each document followed by ``</s>``; ``docs.npy``
holds the document offsets. Nothing but the offsets is ever held in memory, so a corpus larger than RAM works;
training reads blocks through ``np.memmap``. The cache lives under ``cache_dir/<key>``, where the key hashes the
corpus files (path, size, mtime), the tokenizer file and the reading options: a changed input rebuilds it.

Blocks (RoBERTa, Liu et al. 2019, §4.2; fairseq ``TokenBlockDataset`` ``complete_doc`` / ``complete``):
``<s> + up to block_size - 2 tokens + </s>``. By default a block never crosses a document: a long document gives
several blocks, the last one shorter. With ``cross_documents: true`` the stream of all documents (separated by
``</s>``) is cut into full blocks, all of exactly ``block_size`` tokens (the incomplete tail is dropped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from modalities.text.data.corpora import WORDNET, list_text_files, read_documents
from modalities.text.data.tokenizer import BOS_ID, EOS_ID, TextTokenizer

log = logging.getLogger(__name__)


@dataclass
class TextDataConfig:
    paths: list[str] = field(default_factory=lambda: ["data/text/gcide.txt", "data/text/pydocs.txt"])
    documents: Literal["blank_line", "file"] = "blank_line"  # a document per blank-line block, or per file
    tokenizer: str = "data/text/tokenizer.json"  # *.json (tokenizers) or *.model (sentencepiece)
    cache_dir: str | None = None      # memory-mapped token arrays (None: the system temp directory)
    block_size: int = 512             # tokens per block, <s> and </s> included
    cross_documents: bool = False     # blocks may span documents (all blocks full); default: never
    max_line_chars: int = 10_000      # longer lines are split
    max_documents: int | None = None  # read only the first documents (smoke tests)
    encode_batch: int = 1000          # documents per tokenizer call while building the cache
    # the WordNet-category probe (unimim probe): gloss -> lexicographer file, split by synset
    wordnet_root: str = WORDNET
    probe_test_fraction: float = 0.2
    probe_max_train: int | None = 20_000  # sample at most this many training glosses (None: all)
    probe_max_test: int | None = 5_000
    probe_max_tokens: int = 64        # glosses are truncated to this many tokens (<s> and </s> included)

    def __post_init__(self) -> None:
        if isinstance(self.paths, str):
            self.paths = [self.paths]
        if not self.paths:
            raise ValueError("data.paths is empty: give at least one text file or directory")
        if self.documents not in ("blank_line", "file"):
            raise ValueError(f"data.documents must be 'blank_line' or 'file', got {self.documents!r}")
        if self.block_size < 3:
            raise ValueError(f"data.block_size must be >= 3 (<s>, a token, </s>), got {self.block_size}")
        if self.probe_max_tokens < 3:
            raise ValueError(f"data.probe_max_tokens must be >= 3, got {self.probe_max_tokens}")
        if not 0.0 < self.probe_test_fraction < 1.0:
            raise ValueError(f"data.probe_test_fraction must be in (0, 1), got {self.probe_test_fraction}")
        if self.max_line_chars < 16:
            raise ValueError(f"data.max_line_chars must be >= 16, got {self.max_line_chars}")


def _cache_key(cfg: TextDataConfig, tokenizer_path: Path) -> str:
    h = hashlib.sha256()
    for p in cfg.paths:
        for f in list_text_files(Path(p)):
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(hashlib.sha256(tokenizer_path.read_bytes()).digest())
    h.update(f"{cfg.documents}|{cfg.max_line_chars}|{cfg.max_documents}".encode())
    return h.hexdigest()[:16]


class TokenArray:
    """All documents' tokens, memory-mapped. ``tokens``: (S,) uint16/uint32; ``offsets``: (n_docs + 1,) int64;
    document i is ``tokens[offsets[i] : offsets[i + 1] - 1]``, followed by ``</s>``."""

    def __init__(self, directory: Path) -> None:
        meta = json.loads((directory / "meta.json").read_text())
        self.directory = directory
        self.dtype = np.dtype(meta["dtype"])
        self.offsets = np.load(directory / "docs.npy")
        n = int(self.offsets[-1])
        self.tokens = np.memmap(directory / "tokens.bin", dtype=self.dtype, mode="r", shape=(n,)) if n else \
            np.zeros(0, dtype=self.dtype)
        self.num_skipped = int(meta.get("skipped", 0))

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def build(cls, cfg: TextDataConfig, tokenizer: TextTokenizer, tokenizer_path: Path) -> TokenArray:
        """Tokenise the corpus into the cache (once) and open it."""
        root = Path(cfg.cache_dir) if cfg.cache_dir else Path(tempfile.gettempdir()) / "unimim-text-cache"
        directory = root / _cache_key(cfg, tokenizer_path)
        if (directory / "meta.json").is_file():
            return cls(directory)
        directory.mkdir(parents=True, exist_ok=True)
        dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
        offsets, total, skipped = [0], 0, 0
        tmp = directory / "tokens.bin.tmp"

        def docs():
            n = 0
            for p in cfg.paths:
                for doc in read_documents(p, cfg.documents, cfg.max_line_chars):
                    if cfg.max_documents is not None and n >= cfg.max_documents:
                        return
                    n += 1
                    yield doc

        with tmp.open("wb") as f, tqdm(desc="tokenising", unit=" docs", leave=False, disable=None) as bar:
            batch: list[str] = []

            def flush() -> None:
                nonlocal total, skipped
                for ids in tokenizer.encode_batch(batch):
                    if not ids:  # e.g. only characters the tokenizer drops
                        skipped += 1
                        continue
                    f.write(np.asarray(ids + [EOS_ID], dtype=dtype).tobytes())
                    total += len(ids) + 1
                    offsets.append(total)
                bar.update(len(batch))
                batch.clear()

            for doc in docs():
                batch.append(doc)
                if len(batch) >= cfg.encode_batch:
                    flush()
            flush()
        tmp.replace(directory / "tokens.bin")
        np.save(directory / "docs.npy", np.asarray(offsets, dtype=np.int64))
        meta = {"dtype": dtype.name, "documents": len(offsets) - 1, "tokens": total, "skipped": skipped,
                "paths": [str(p) for p in cfg.paths], "tokenizer": str(tokenizer_path)}
        (directory / "meta.json.tmp").write_text(json.dumps(meta, indent=1))
        (directory / "meta.json.tmp").replace(directory / "meta.json")  # written last: marks the cache complete
        log.info("tokenised %d documents into %d tokens (%s)", len(offsets) - 1, total, directory)
        if skipped:
            log.warning("%d documents produced no tokens and were skipped", skipped)
        return cls(directory)


def make_blocks(offsets: np.ndarray, block_size: int, cross_documents: bool) -> np.ndarray:
    """(n_blocks, 2) int64 (start, length) spans of the token array, each to be wrapped as ``<s> span </s>``.

    offsets: (n_docs + 1,) document offsets of a :class:`TokenArray` (each document ends with ``</s>``)."""
    body = block_size - 2
    if cross_documents:  # the whole stream, separators included, in full blocks
        n = int(offsets[-1]) // body
        starts = np.arange(n, dtype=np.int64) * body
        return np.stack([starts, np.full(n, body, dtype=np.int64)], axis=1)
    lengths = np.diff(offsets) - 1  # document lengths without their </s>
    per_doc = -(-lengths // body)  # ceil: blocks per document
    doc = np.repeat(np.arange(len(lengths)), per_doc)
    first = np.repeat(np.cumsum(per_doc) - per_doc, per_doc)
    k = np.arange(len(doc)) - first  # block index inside its document
    starts = offsets[:-1][doc] + k * body
    lens = np.minimum(body, lengths[doc] - k * body)
    return np.stack([starts, lens], axis=1).astype(np.int64)


class TextBlocks:
    """Blocks of a :class:`TokenArray`: ``blocks[i]`` -> (L,) int64 ids ``<s> ... </s>``, L <= block_size."""

    def __init__(self, array: TokenArray, block_size: int, cross_documents: bool) -> None:
        self.array = array
        self.spans = make_blocks(array.offsets, block_size, cross_documents)
        if len(self.spans) == 0:
            raise ValueError(f"the text corpus in {array.directory} yields no block of {block_size} tokens")

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> np.ndarray:
        start, length = self.spans[i]
        out = np.empty(length + 2, dtype=np.int64)
        out[0], out[-1] = BOS_ID, EOS_ID
        out[1:-1] = self.array.tokens[start : start + length]
        return out

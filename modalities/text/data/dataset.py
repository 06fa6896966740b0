"""Text pretraining data: documents tokenised once into a memory-mapped token array, cut into RoBERTa blocks.

The corpus is streamed document by document (:mod:`modalities.text.data.corpora`), encoded in batches and appended to
``tokens.bin`` (uint16, or uint32 for vocabularies over 65,536), each document followed by ``</s>``; ``docs.npy``
holds the document offsets. Nothing but the offsets is ever held in memory, so a corpus larger than RAM works;
training reads blocks through ``np.memmap``. The cache lives under ``cache_dir/<key>``, where the key hashes the
corpus files (path, size, mtime), the tokenizer file and the reading options: a changed input rebuilds it.
``meta.json`` (written last: it marks the cache complete) holds the CRC-32 of both arrays; a cache is checked
whenever it is opened (its structure, its sizes, both checksums: one pass over the token file) and rebuilt, with a
warning, when anything is wrong -- a truncated or overwritten ``tokens.bin`` would otherwise feed the model
wrong ids, or ids past the vocabulary. Corpus files that are not text (binary, a corrupt ``.gz``) are skipped,
counted in ``meta.json`` and logged at every start (see :func:`~modalities.text.data.corpora.read_documents`).

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
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from modalities.text.data.corpora import WORDNET, SkippedFiles, list_text_files, read_documents
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


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def cache_problem(directory: Path) -> str | None:
    """What is wrong with the token cache in ``directory`` (None: it is complete and intact): an unreadable or
    incomplete ``meta.json``, offsets that are not a valid document index, a token file of the wrong size, or a
    checksum that differs from the one recorded when the cache was built."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        documents, tokens = int(meta["documents"]), int(meta["tokens"])
        crc_tokens, crc_docs = int(meta["tokens_crc32"]), int(meta["docs_crc32"])
    except (OSError, ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        return f"meta.json is unreadable or incomplete ({type(e).__name__}: {e})"
    if dtype not in (np.uint16, np.uint32):
        return f"meta.json names token dtype {dtype}"
    docs, data = directory / "docs.npy", directory / "tokens.bin"
    if not docs.is_file() or not data.is_file():
        return "docs.npy or tokens.bin is missing"
    if _crc32(docs) != crc_docs:
        return "docs.npy does not match its checksum"
    try:
        offsets = np.load(docs, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        return f"docs.npy is unreadable ({e})"
    if (offsets.dtype != np.int64 or offsets.ndim != 1 or len(offsets) != documents + 1 or offsets[0] != 0
            or offsets[-1] != tokens or (np.diff(offsets) < 2).any()):  # a document: >= 1 token + </s>
        return "docs.npy is not the document index meta.json describes"
    if data.stat().st_size != tokens * dtype.itemsize:
        return f"tokens.bin holds {data.stat().st_size} bytes, not the {tokens * dtype.itemsize} of {tokens} tokens"
    if _crc32(data) != crc_tokens:
        return "tokens.bin does not match its checksum"
    return None


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
        self.num_skipped = int(meta.get("skipped", 0))  # documents that produced no tokens
        self.skipped_files: list[tuple[str, str]] = [tuple(x) for x in meta.get("skipped_files", [])]

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def build(cls, cfg: TextDataConfig, tokenizer: TextTokenizer, tokenizer_path: Path) -> TokenArray:
        """Tokenise the corpus into the cache (once; again when the cache is damaged) and open it. Raises ValueError
        when no document could be read because every corpus file was skipped."""
        root = Path(cfg.cache_dir) if cfg.cache_dir else Path(tempfile.gettempdir()) / "unimim-text-cache"
        directory = root / _cache_key(cfg, tokenizer_path)
        if (directory / "meta.json").is_file():
            problem = cache_problem(directory)
            if problem is None:
                return cls._opened(directory)
            log.warning("the token cache %s is damaged (%s); rebuilding it", directory, problem)
            (directory / "meta.json").unlink()  # first: the cache is incomplete from here on
        directory.mkdir(parents=True, exist_ok=True)
        dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
        offsets, total, skipped, crc = [0], 0, 0, 0
        skipped_files = SkippedFiles()
        tmp = directory / "tokens.bin.tmp"

        def docs():
            n = 0
            for p in cfg.paths:
                for doc in read_documents(p, cfg.documents, cfg.max_line_chars, skipped_files):
                    if cfg.max_documents is not None and n >= cfg.max_documents:
                        return
                    n += 1
                    yield doc

        with tmp.open("wb") as f, tqdm(desc="tokenising", unit=" docs", leave=False, disable=None) as bar:
            batch: list[str] = []

            def flush() -> None:
                nonlocal total, skipped, crc
                for ids in tokenizer.encode_batch(batch):
                    if not ids:  # e.g. only characters the tokenizer drops
                        skipped += 1
                        continue
                    chunk = np.asarray(ids + [EOS_ID], dtype=dtype).tobytes()
                    f.write(chunk)
                    crc = zlib.crc32(chunk, crc)
                    total += len(ids) + 1
                    offsets.append(total)
                bar.update(len(batch))
                batch.clear()

            for doc in docs():
                batch.append(doc)
                if len(batch) >= cfg.encode_batch:
                    flush()
            flush()
        if len(offsets) == 1 and skipped_files:
            path, reason = skipped_files.files[0]
            raise ValueError(f"no text could be read from data.paths {cfg.paths}: all {len(skipped_files)} files "
                             f"were skipped (e.g. {path}: {reason})")
        tmp.replace(directory / "tokens.bin")
        np.save(directory / "docs.npy", np.asarray(offsets, dtype=np.int64))
        meta = {"dtype": dtype.name, "documents": len(offsets) - 1, "tokens": total, "skipped": skipped,
                "skipped_files": skipped_files.files, "tokens_crc32": crc,
                "docs_crc32": _crc32(directory / "docs.npy"), "paths": [str(p) for p in cfg.paths],
                "tokenizer": str(tokenizer_path)}
        (directory / "meta.json.tmp").write_text(json.dumps(meta, indent=1))
        (directory / "meta.json.tmp").replace(directory / "meta.json")  # written last: marks the cache complete
        log.info("tokenised %d documents into %d tokens (%s)", len(offsets) - 1, total, directory)
        if skipped:
            log.warning("%d documents produced no tokens and were skipped", skipped)
        return cls._opened(directory)

    @classmethod
    def _opened(cls, directory: Path) -> TokenArray:
        array = cls(directory)
        if array.skipped_files:
            path, reason = array.skipped_files[0]
            log.warning("%d corpus files were skipped when the token cache %s was built (e.g. %s: %s)",
                        len(array.skipped_files), directory, path, reason)
        return array


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

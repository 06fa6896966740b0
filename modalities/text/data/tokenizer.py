"""Subword tokenizers behind one interface, with two back ends and fixed special-token ids.

* ``bytelevel_bpe`` -- Hugging Face ``tokenizers`` byte-level BPE (GPT-2 / RoBERTa style; RoBERTa's 50K BPE is the
  data2vec text vocabulary, data2vec.md §2). Any byte sequence is representable, so nothing maps to ``<unk>``.
* ``sentencepiece`` -- ``sentencepiece`` BPE or unigram (Kudo & Richardson 2018), with byte fallback for BPE.

Both reserve the same ids: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` 4 (fairseq's dictionary order
for the first four). A literal ``<mask>`` or ``<s>`` in the text is *not* turned into a special token: specials come
only from the data pipeline. A tokenizer is one file: ``*.json`` (tokenizers) or ``*.model`` (sentencepiece).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
BOS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = range(5)
NUM_SPECIAL = len(SPECIAL_TOKENS)

Backend = Literal["bytelevel_bpe", "sentencepiece"]
BACKENDS: tuple[str, ...] = ("bytelevel_bpe", "sentencepiece")
SUFFIX = {"bytelevel_bpe": ".json", "sentencepiece": ".model"}


@dataclass
class TokenizerConfig:
    backend: Backend = "bytelevel_bpe"
    model_type: Literal["bpe", "unigram"] = "bpe"  # sentencepiece only (byte-level is always BPE)
    vocab_size: int = 8192                         # including the 5 special tokens
    min_frequency: int = 2                         # bytelevel_bpe: merges seen fewer times are not learned
    max_chars: int | None = None                   # stop reading training text after this many characters
    max_line_chars: int = 4000                     # sentencepiece sentences longer than this are split

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"tokenizer backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.model_type not in ("bpe", "unigram"):
            raise ValueError(f"tokenizer model_type must be 'bpe' or 'unigram', got {self.model_type!r}")
        if self.backend == "bytelevel_bpe" and self.model_type != "bpe":
            raise ValueError("the bytelevel_bpe back end only trains BPE; use backend=sentencepiece for unigram")
        if self.vocab_size <= NUM_SPECIAL + 1:
            raise ValueError(f"vocab_size must exceed the {NUM_SPECIAL} special tokens, got {self.vocab_size}")


def clean(text: str) -> str:
    """Replace what UTF-8 cannot encode (lone surrogates, e.g. from ``errors="surrogateescape"``) by ``?``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8")


class TextTokenizer:
    """The common interface: ``encode(str) -> list[int]`` without specials, ``decode``, ``save``."""

    backend: str

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        raise NotImplementedError

    def id_to_token(self, i: int) -> str:
        raise NotImplementedError

    def check_specials(self) -> None:
        found = tuple(self.id_to_token(i) for i in range(NUM_SPECIAL))
        if found != SPECIAL_TOKENS:
            raise ValueError(f"tokenizer special tokens {found} differ from the fixed layout {SPECIAL_TOKENS}")


class ByteLevelBPE(TextTokenizer):
    backend = "bytelevel_bpe"

    def __init__(self, tok) -> None:
        self.tok = tok
        self.tok.encode_special_tokens = True  # "<mask>" in the text is text, not the mask token

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(clean(text), add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch([clean(t) for t in texts], add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def id_to_token(self, i: int) -> str:
        return self.tok.id_to_token(i)

    def save(self, path: str | Path) -> Path:
        path = _with_suffix(path, self.backend)
        tmp = path.with_name(path.name + ".tmp")
        self.tok.save(str(tmp))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> ByteLevelBPE:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def train(cls, texts: Iterable[str], cfg: TokenizerConfig) -> ByteLevelBPE:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)


class SentencePiece(TextTokenizer):
    backend = "sentencepiece"

    def __init__(self, proto: bytes) -> None:
        import sentencepiece as spm

        self.proto = proto
        self.sp = spm.SentencePieceProcessor(model_proto=proto)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(clean(text))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode([clean(t) for t in texts])

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode(list(ids))

    def id_to_token(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def save(self, path: str | Path) -> Path:
        path = _with_suffix(path, self.backend)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.proto)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> SentencePiece:
        return cls(path.read_bytes())

    @classmethod
    def train(cls, texts: Iterable[str], cfg: TokenizerConfig) -> SentencePiece:
        import sentencepiece as spm

        def sentences() -> Iterator[str]:  # sentencepiece drops sentences over max_sentence_length: split them
            for text in texts:
                for line in text.splitlines():
                    for i in range(0, len(line), cfg.max_line_chars):
                        if line[i : i + cfg.max_line_chars].strip():
                            yield line[i : i + cfg.max_line_chars]

        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(), model_writer=model, vocab_size=cfg.vocab_size,
            model_type=cfg.model_type, bos_id=BOS_ID, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID,
            control_symbols=["<mask>"], byte_fallback=cfg.model_type == "bpe", character_coverage=0.9995,
            max_sentence_length=4 * cfg.max_line_chars + 16, num_threads=2, minloglevel=2, hard_vocab_limit=False,
        )
        return cls(model.getvalue())


def _with_suffix(path: str | Path, backend: str) -> Path:
    path = Path(path)
    if path.suffix != SUFFIX[backend]:
        raise ValueError(f"a {backend} tokenizer is saved as *{SUFFIX[backend]}, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _capped(texts: Iterable[str], max_chars: int | None) -> Iterator[str]:
    seen = 0
    for text in texts:
        if max_chars is not None and seen >= max_chars:
            return
        seen += len(text)
        yield text


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> TextTokenizer:
    """Train a tokenizer of ``cfg.backend`` on an iterable of documents (strings)."""
    texts = (clean(t) for t in _capped(texts, cfg.max_chars))
    tok = ByteLevelBPE.train(texts, cfg) if cfg.backend == "bytelevel_bpe" else SentencePiece.train(texts, cfg)
    tok.check_specials()
    log.info("trained a %s tokenizer with %d tokens", cfg.backend, tok.vocab_size)
    return tok


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """Load a tokenizer file: ``*.json`` (tokenizers byte-level BPE) or ``*.model`` (sentencepiece).

    Raises FileNotFoundError when it is missing and ValueError naming the file when it is of an unknown type, is not
    a valid tokenizer of its type (corrupt, truncated, empty) or lacks the fixed special tokens."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer {path} not found; train one with `unimim tokenizer train` (see `make data-text`)"
        )
    if path.suffix not in (".json", ".model"):
        raise ValueError(f"unknown tokenizer file type {path.suffix!r} ({path}); expected .json or .model")
    kind = "tokenizers JSON" if path.suffix == ".json" else "sentencepiece model"
    try:
        tok: TextTokenizer = ByteLevelBPE.load(path) if path.suffix == ".json" else SentencePiece.load(path)
        if tok.vocab_size < NUM_SPECIAL:
            raise ValueError(f"{tok.vocab_size} tokens")
        tok.check_specials()
    except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception, sentencepiece RuntimeError
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"tokenizer {path} is not a valid {kind} file ({reason}); train it again with `unimim "
                         "tokenizer train`") from None
    return tok

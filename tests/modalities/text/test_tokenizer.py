"""Tokenizers: both back ends, fixed special ids, save/load, literal specials stay text, the CLI."""

from __future__ import annotations

import pytest

from modalities.text.data.tokenizer import (
    MASK_ID,
    NUM_SPECIAL,
    SPECIAL_TOKENS,
    UNK_ID,
    TokenizerConfig,
    load_tokenizer,
    train_tokenizer,
)
from tests.conftest import TEXT_FIXTURES
from unimim.app.cli import main

DOCS = (TEXT_FIXTURES / "corpus.txt").read_text().split("\n\n")
SAMPLE = "The old horse waits near the market <mask> <s> </s> café ☃"


@pytest.mark.parametrize("backend,model_type,suffix", [
    ("bytelevel_bpe", "bpe", ".json"), ("sentencepiece", "bpe", ".model"), ("sentencepiece", "unigram", ".model"),
])
def test_train_save_load(tmp_path, backend, model_type, suffix):
    cfg = TokenizerConfig(backend=backend, model_type=model_type, vocab_size=300 if backend != "bytelevel_bpe" else 320)
    tok = train_tokenizer(iter(DOCS), cfg)
    assert tuple(tok.id_to_token(i) for i in range(NUM_SPECIAL)) == SPECIAL_TOKENS
    assert NUM_SPECIAL < tok.vocab_size <= cfg.vocab_size
    ids = tok.encode(SAMPLE)
    # "<mask>" in the text is text; unigram (no byte fallback) maps the unseen characters to <unk>
    allowed_unk = {UNK_ID} if model_type == "unigram" else set()
    assert MASK_ID not in ids and all(i >= NUM_SPECIAL or i in allowed_unk for i in ids)
    path = tok.save(tmp_path / f"tok{suffix}")
    again = load_tokenizer(path)
    assert again.encode(SAMPLE) == ids and again.vocab_size == tok.vocab_size
    assert again.encode_batch([SAMPLE, ""]) == [ids, []]
    if backend == "bytelevel_bpe":  # byte level: lossless
        assert again.decode(ids) == SAMPLE


def test_bad_input_is_replaced_not_fatal():
    tok = load_tokenizer(TEXT_FIXTURES / "tokenizer.json")
    assert tok.decode(tok.encode("ab\udcffcd")) == "ab?cd"  # a lone surrogate (from surrogateescape) -> "?"


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="make data-text"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "tok.txt").write_text("x")
    with pytest.raises(ValueError, match=".json or .model"):
        load_tokenizer(tmp_path / "tok.txt")
    tok = load_tokenizer(TEXT_FIXTURES / "tokenizer.json")
    with pytest.raises(ValueError, match=r"\*\.json"):
        tok.save(tmp_path / "tok.model")
    with pytest.raises(ValueError, match="unigram"):
        TokenizerConfig(backend="bytelevel_bpe", model_type="unigram")


def test_cli_tokenizer_train(tmp_path):
    out = tmp_path / "spm.model"
    rc = main(["tokenizer", "train", str(out), str(TEXT_FIXTURES / "corpus.txt"), "--backend", "sentencepiece",
               "--vocab-size", "400", "--max-chars", "5000"])
    assert rc == 0 and load_tokenizer(out).vocab_size <= 400
    assert main(["tokenizer", "train", str(tmp_path / "x.json"), str(TEXT_FIXTURES / "corpus.txt"),
                 "--vocab-size", "3"]) == 2  # a clear config error, no traceback


@pytest.mark.parametrize("name,content", [("garbage.json", b"not json"), ("truncated.json", None),
                                          ("empty.json", b""), ("other.json", b'{"a": 1}'),
                                          ("garbage.model", b"\x00\x01 not a proto"), ("empty.model", b"")])
def test_corrupt_tokenizer_is_a_clear_error(tmp_path, name, content):
    good = (TEXT_FIXTURES / "tokenizer.json").read_bytes()
    (tmp_path / name).write_bytes(good[: len(good) // 2] if content is None else content)
    with pytest.raises(ValueError, match=rf"tokenizer {tmp_path / name} is not a valid .* file \(.+\); train it "):
        load_tokenizer(tmp_path / name)


def test_bad_tokenizer_copy_does_not_pin_the_run_directory(tmp_path, caplog):
    from modalities.text.data.dataset import TextDataConfig
    from modalities.text.data.source import bind_run_dir

    good = TEXT_FIXTURES / "tokenizer.json"
    bad = tmp_path / "bad.json"
    bad.write_bytes(good.read_bytes()[:100])
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="bad.json is not a valid"):  # a bad tokenizer is never copied
        bind_run_dir(TextDataConfig(tokenizer=str(bad)), run)
    assert not list(run.glob("tokenizer*"))
    run.mkdir()
    (run / "tokenizer.json").write_bytes(bad.read_bytes())  # a bad copy left by an earlier run
    cfg = TextDataConfig(tokenizer=str(good))
    bind_run_dir(cfg, run)
    assert cfg.tokenizer == str(run / "tokenizer.json")
    assert load_tokenizer(cfg.tokenizer).vocab_size > NUM_SPECIAL and "damaged" in caplog.text
    bind_run_dir(cfg, run)  # the run's own copy, now intact, is kept
    # a copy damaged after the run started is restored only from the tokenizer it was made from
    (run / "tokenizer.json").write_bytes(good.read_bytes().replace(b'"merges"', b'"merges" ', 1))
    other = tmp_path / "other.json"
    other.write_bytes(good.read_bytes().replace(b'"<unk>"', b'"<unk>" ', 1))
    with pytest.raises(ValueError, match="not the tokenizer the run was started with"):
        bind_run_dir(TextDataConfig(tokenizer=str(other)), run)
    bind_run_dir(TextDataConfig(tokenizer=str(good)), run)
    assert (run / "tokenizer.json").read_bytes() == good.read_bytes()
    (run / "tokenizer.json").unlink()
    (run / "tokenizer.json.sha256").unlink()
    (run / "tokenizer.model").write_bytes(b"")  # a damaged copy of another back end
    cfg = TextDataConfig(tokenizer=str(good))
    bind_run_dir(cfg, run)
    assert cfg.tokenizer == str(run / "tokenizer.json") and not (run / "tokenizer.model").exists()

"""Corpus readers, the memory-mapped token array and RoBERTa blocks."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from modalities.text.data.corpora import (
    LEXNAMES,
    gcide_entries,
    html_documents,
    read_documents,
    split_long_line,
    synset_split,
    wordnet_glosses,
)
from modalities.text.data.dataset import TextBlocks, TextDataConfig, TokenArray, make_blocks
from modalities.text.data.source import collate_pretrain
from modalities.text.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, load_tokenizer
from tests.conftest import TEXT_FIXTURES

TOKENIZER = TEXT_FIXTURES / "tokenizer.json"


def test_read_documents_blank_lines_bad_utf8_long_lines(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"first doc\nline two\n\n\n\nsecond \xff\xfe doc\n   \n" + b"word " * 50 + b"\n")
    docs = list(read_documents(f, "blank_line", max_line_chars=40))
    assert docs[0] == "first doc\nline two"
    assert docs[1] == "second \ufffd\ufffd doc"
    assert len(docs) == 3 and all(len(line) <= 40 for line in docs[2].splitlines())
    assert docs[2].replace("\n", " ").split() == ["word"] * 50  # split at spaces, nothing lost
    d = tmp_path / "dir"
    d.mkdir()
    (d / "x.txt").write_text("one\n\ntwo\n")
    (d / "y.md").write_text("three\n")
    (d / "skip.bin").write_bytes(b"\x00")
    assert list(read_documents(d, "file")) == ["one\ntwo", "three"]
    assert split_long_line("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    with pytest.raises(FileNotFoundError, match="make data-text"):
        list(read_documents(tmp_path / "nope.txt"))


def test_gcide_reader(tmp_path):
    raw = (
        "00-database-info\n   header text\n\n"
        'Abacus \\Ab"a*cus\\ ([a^]b"[.a]*k[u^]s), n.\n   A {calculating} table.\n   [1913 Webster]\n\n'
        "   2. A sense from WordNet.\n      [WordNet 1.5]\n\n"
        "Aback \\A*back\"\\, adv.\n   Toward the back.\n   [1913 Webster]\n"
    )
    path = tmp_path / "g.dict.dz"
    path.write_bytes(gzip.compress(raw.encode()))
    assert list(gcide_entries(path)) == ["Abacus , n.\nA calculating table.", "Aback , adv.\nToward the back."]


def test_html_reader(tmp_path):
    (tmp_path / "p.html").write_text(
        '<html><body><div class="nav">skip me</div><div class="body" role="main"><h1>Title\u00b6</h1>'
        "<p>Some <b>bold</b>\n text.</p><script>var x;</script><div><p>inner</p></div></div><p>footer</p>"
        "</body></html>")
    assert list(html_documents(tmp_path)) == ["Title\nSome bold text.\ninner"]


def test_wordnet_reader_and_split():
    glosses = list(wordnet_glosses(TEXT_FIXTURES / "wordnet"))
    assert len(glosses) == 120  # the malformed line and licence header are skipped
    assert {LEXNAMES[g.label] for g in glosses} == {"noun.animal", "noun.artifact", "verb.motion"}
    assert len(LEXNAMES) == 45 and LEXNAMES[5] == "noun.animal" and LEXNAMES[44] == "adj.ppl"
    assert len({g.synset for g in glosses}) == 120
    splits = [synset_split(g.synset, 0.3) for g in glosses]
    assert splits == [synset_split(g.synset, 0.3) for g in glosses] and 10 < splits.count("test") < 60
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        list(wordnet_glosses(TEXT_FIXTURES))


def _config(tmp_path, **kw):
    return TextDataConfig(paths=[str(TEXT_FIXTURES / "corpus.txt")], tokenizer=str(TOKENIZER),
                          cache_dir=str(tmp_path / "cache"), **kw)


def test_token_array_matches_direct_encoding_and_is_cached(tmp_path):
    cfg = _config(tmp_path, encode_batch=7)
    tok = load_tokenizer(TOKENIZER)
    arr = TokenArray.build(cfg, tok, TOKENIZER)
    docs = list(read_documents(cfg.paths[0]))
    assert isinstance(arr.tokens, np.memmap) and arr.tokens.dtype == np.uint16
    assert arr.num_documents == len(docs) == 120
    for i in (0, 57, 119):
        lo, hi = arr.offsets[i], arr.offsets[i + 1]
        assert arr.tokens[lo : hi - 1].tolist() == tok.encode(docs[i]) and arr.tokens[hi - 1] == EOS_ID
    mtime = (arr.directory / "tokens.bin").stat().st_mtime_ns
    again = TokenArray.build(cfg, tok, TOKENIZER)
    assert again.directory == arr.directory and (again.directory / "tokens.bin").stat().st_mtime_ns == mtime
    assert TokenArray.build(_config(tmp_path, max_documents=5), tok, TOKENIZER).num_documents == 5


def test_make_blocks_by_hand():
    offsets = np.array([0, 4, 5, 12])  # documents of 3, 0 and 6 tokens (+ </s> each)
    assert make_blocks(offsets, 5, False).tolist() == [[0, 3], [5, 3], [8, 3]]
    assert make_blocks(offsets, 6, True).tolist() == [[0, 4], [4, 4], [8, 4]]


@pytest.mark.parametrize("cross", [False, True])
def test_blocks(tmp_path, cross):
    cfg = _config(tmp_path)
    arr = TokenArray.build(cfg, load_tokenizer(TOKENIZER), TOKENIZER)
    blocks = TextBlocks(arr, 24, cross)
    doc_of = np.searchsorted(arr.offsets, np.arange(len(arr.tokens)), side="right") - 1
    lengths = []
    for i in range(len(blocks)):
        b = blocks[i]
        start, n = blocks.spans[i]
        assert b[0] == BOS_ID and b[-1] == EOS_ID and len(b) <= 24 and b.dtype == np.int64
        lengths.append(len(b))
        if not cross:  # never crosses a document, never includes the document's </s>
            assert doc_of[start] == doc_of[start + n - 1] and EOS_ID not in b[1:-1]
    if cross:
        assert set(lengths) == {24}
    else:
        assert min(lengths) < 24
        covered = sum(int(n) for _, n in blocks.spans)
        assert covered == len(arr.tokens) - arr.num_documents  # every token in exactly one block


def test_collate_pads():
    items = [{"inputs": np.array([0, 7, 2]), "mask": np.array([False, True, False])},
             {"inputs": np.array([0, 7, 8, 9, 2]), "mask": np.array([False, False, True, True, False])}]
    import torch
    batch = collate_pretrain([{k: torch.from_numpy(v) for k, v in it.items()} for it in items])
    assert batch.inputs.tolist() == [[0, 7, 2, PAD_ID, PAD_ID], [0, 7, 8, 9, 2]]
    assert batch.padding_mask.tolist() == [[False] * 3 + [True] * 2, [False] * 5]
    assert batch.mask[0, 0].tolist() == [False, True, False, False, False]
    same = collate_pretrain([{"inputs": torch.tensor([0, 5, 2]), "mask": torch.tensor([False, True, False])}] * 2)
    assert same.padding_mask is None


def _corpus_dir(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "good.txt").write_bytes((TEXT_FIXTURES / "corpus.txt").read_bytes())
    (d / "latin1.txt").write_bytes("caf\xe9 au lait\n\nna\xefve\n".encode("latin-1"))  # bad UTF-8, still text
    return d


def test_corrupt_gzip_is_skipped_and_counted(tmp_path, caplog):
    d = _corpus_dir(tmp_path)
    whole = gzip.compress(b"a compressed document\n\n" * 2000)
    (d / "truncated.txt.gz").write_bytes(whole[: len(whole) // 2])  # the first half decompresses fine
    (d / "garbage.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    (d / "ok.txt.gz").write_bytes(gzip.compress(b"fine and compressed\n"))
    arr = TokenArray.build(TextDataConfig(paths=[str(d)], tokenizer=str(TOKENIZER), cache_dir=str(tmp_path / "c")),
                           load_tokenizer(TOKENIZER), TOKENIZER)
    assert sorted(p.rsplit("/", 1)[1] for p, _ in arr.skipped_files) == ["garbage.gz", "truncated.txt.gz"]
    assert all("corrupt or truncated gzip" in reason for _, reason in arr.skipped_files)
    assert "skipping" in caplog.text and "truncated.txt.gz" in caplog.text
    from modalities.text.data.corpora import SkippedFiles

    skipped = SkippedFiles()
    docs = list(read_documents(d, skipped=skipped))
    assert len(skipped) == 2 and arr.num_documents == len(docs)
    assert "fine and compressed" in docs and not any("a compressed document" in doc for doc in docs)


def test_binary_files_are_detected_and_skipped(tmp_path):
    d = _corpus_dir(tmp_path)
    clean = list(read_documents(d))
    (d / "zeros.txt").write_bytes(b"\0" * 200_000)  # would have been 94 % of the corpus's tokens
    (d / "utf16.txt").write_bytes("a UTF-16 text\n".encode("utf-16"))
    (d / "controls.md").write_bytes(bytes(range(1, 9)) * 200 + b"some text\n")
    cfg = TextDataConfig(paths=[str(d)], tokenizer=str(TOKENIZER), cache_dir=str(tmp_path / "c"))
    arr = TokenArray.build(cfg, load_tokenizer(TOKENIZER), TOKENIZER)
    assert arr.num_documents == len(clean) and {p.rsplit("/", 1)[1] for p, _ in arr.skipped_files} == {
        "zeros.txt", "utf16.txt", "controls.md"}
    assert all(reason.startswith("binary content") for _, reason in arr.skipped_files)
    only_bad = TextDataConfig(paths=[str(d / "zeros.txt")], tokenizer=str(TOKENIZER), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"no text could be read from data.paths .*zeros.txt: binary content"):
        TokenArray.build(only_bad, load_tokenizer(TOKENIZER), TOKENIZER)


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "meta", "offsets"])
def test_damaged_token_cache_is_detected_and_rebuilt(tmp_path, caplog, damage):
    cfg = _config(tmp_path)
    tok = load_tokenizer(TOKENIZER)
    arr = TokenArray.build(cfg, tok, TOKENIZER)
    tokens, offsets, directory = np.array(arr.tokens), arr.offsets.copy(), arr.directory
    del arr
    data = directory / "tokens.bin"
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:-100])
    elif damage == "overwrite":  # same size: ids past the vocabulary in the middle of a document
        raw = bytearray(data.read_bytes())
        raw[1000:1010] = b"\xff" * 10
        data.write_bytes(bytes(raw))
    elif damage == "meta":
        (directory / "meta.json").write_text('{"dtype": "uint16", "documents": ')
    else:
        np.save(directory / "docs.npy", offsets[::-1].copy())
    again = TokenArray.build(cfg, tok, TOKENIZER)
    assert again.directory == directory and "damaged" in caplog.text
    np.testing.assert_array_equal(np.array(again.tokens), tokens)
    np.testing.assert_array_equal(again.offsets, offsets)
    caplog.clear()
    TokenArray.build(cfg, tok, TOKENIZER)  # the rebuilt cache is intact: used as it is
    assert "damaged" not in caplog.text

"""Transcripts of a fairseq manifest for CTC: the ``.ltr`` letter file or the ``.wrd`` word file beside the TSV.

fairseq's LibriSpeech layout (``examples/wav2vec/libri_labels.py``): ``train.tsv`` (root on line 1, then
``path<TAB>num_samples``), ``train.wrd`` (one line per entry: the words, upper case) and ``train.ltr`` (the same
words as space-separated letters, ``|`` after every word: ``H E L L O | W O R L D |``). The fine-tuning task reads
the letters (``labels: ltr`` in fairseq's ``base_10h.yaml``); a ``.wrd`` file is converted to the same letters.

Every line must hold one non-empty transcript, in the manifest's order: a line count that differs from the
manifest's entries, an empty line or a symbol outside the letter vocabulary is a ValueError naming the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from unimim.eval.ctc import LetterVocab

TranscriptFormat = Literal["ltr", "wrd"]


def transcript_path(manifest: str | Path, kind: TranscriptFormat) -> Path:
    """``train.tsv`` -> ``train.ltr`` / ``train.wrd``."""
    return Path(manifest).with_suffix(f".{kind}")


def read_transcripts(manifest: str | Path, num_entries: int, *, kind: TranscriptFormat = "ltr",
                     vocab: LetterVocab | None = None, hint: str = "") -> list[list[str]]:
    """The letter tokens of every manifest entry (``["H", "I", "|"]``), read from the ``.ltr`` or ``.wrd`` file
    beside ``manifest``. FileNotFoundError when it is missing; ValueError on a line count other than
    ``num_entries``, an empty line, or a symbol outside ``vocab`` (fairseq's letters by default)."""
    if kind not in ("ltr", "wrd"):
        raise ValueError(f"transcripts must be 'ltr' or 'wrd', got {kind!r}")
    vocab = vocab or LetterVocab()
    path = transcript_path(manifest, kind)
    if not path.is_file():
        other = transcript_path(manifest, "wrd" if kind == "ltr" else "ltr")
        also = f" ({other.name} exists: set task.transcripts: {other.suffix[1:]})" if other.is_file() else ""
        raise FileNotFoundError(f"transcript file {path} for manifest {manifest} does not exist{also}{hint}")
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) != num_entries:
        raise ValueError(f"{path} has {len(lines)} lines for the {num_entries} entries of {manifest}: a transcript "
                         "file holds one line per manifest entry, in the same order")
    out = []
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            raise ValueError(f"{path}:{no}: empty transcript")
        try:
            if kind == "ltr":
                tokens = line.split()
                vocab.encode_letters(tokens)  # checks every token
            else:
                tokens = vocab.letters(line)
        except ValueError as e:
            raise ValueError(f"{path}:{no}: {e}") from None
        out.append(tokens)
    return out

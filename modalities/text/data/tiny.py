"""A tiny text data set shipped with the package (``tiny/``): a 16 KB corpus, a 300-token byte-level BPE tokenizer
trained on it, and a few WordNet data files in the original format, so smoke runs and tests need no prepared data
(``make data-text``)."""

from __future__ import annotations

from pathlib import Path

TINY = Path(__file__).resolve().parent / "tiny"


def tiny_data(directory: Path | None = None) -> list[str]:
    """Overrides that point a text recipe at the shipped tiny data (``directory`` is not needed)."""
    return [f"data.paths=[{TINY / 'corpus.txt'}]", f"data.tokenizer={TINY / 'tokenizer.json'}",
            f"data.wordnet_root={TINY / 'wordnet'}"]

"""A sentence-pair task built from WordNet: do two glosses come from the same lexicographer file?

Each example pairs the gloss of a synset ``A`` with the gloss of another synset ``B`` of the same part of speech
(nouns, verbs, adjectives; adverbs have one lexicographer file and are left out), drawn half the time from ``A``'s
lexicographer file (label ``same``) and half the time from the other files of that part of speech (``different``;
every synset outside ``A``'s file alike, so that ``B``'s file is about as often a large one in both classes).
Deciding needs both glosses' categories -- noun.animal against noun.plant, verb.motion against verb.contact: the
part of speech tells nothing, one gloss alone little (chance is 50 %; a TF-IDF logistic regression on one gloss
reaches 52-53 %, on both 56 %, docs/notes/text_tasks.md). Both synsets of a pair come from the same split of the probe's
synset split (:func:`~modalities.text.data.corpora.synset_split`), so no test gloss is seen in training.
Pairs are drawn with a fixed seed: the files are a function of WordNet alone.

``python -m modalities.text.data.wordnet_pairs OUT_DIR`` writes ``OUT_DIR/train.tsv`` and ``OUT_DIR/dev.tsv`` in
GLUE's layout (header ``sentence1  sentence2  label``; glosses keep their quotes), read by ``task.format: tsv``
with ``task.text_columns: [sentence1, sentence2]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from modalities.text.data.corpora import WORDNET, Gloss, synset_split, wordnet_glosses

log = logging.getLogger(__name__)

LABELS = ("different", "same")
POS_FAMILY = {"n": "noun", "v": "verb", "a": "adj", "s": "adj"}  # "s": satellite adjectives; adverbs ("r") left out
HEADER = "sentence1\tsentence2\tlabel\n"


def _one_line(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def gloss_pairs(root: str | Path = WORDNET, test_fraction: float = 0.2, max_pairs: dict[str, int] | None = None,
                seed: int = 0) -> dict[str, list[tuple[str, str, str]]]:
    """{"train": [(gloss A, gloss B, "same" | "different"), ...], "test": [...]}: one pair per synset A (in a fixed
    pseudo-random order, at most ``max_pairs[split]``)."""
    by_split: dict[str, dict[str, dict[int, list[Gloss]]]] = {"train": defaultdict(lambda: defaultdict(list)),
                                                              "test": defaultdict(lambda: defaultdict(list))}
    for g in wordnet_glosses(root):
        family = POS_FAMILY.get(g.synset[0])
        if family is not None:
            by_split[synset_split(g.synset, test_fraction)][family][g.label].append(g)
    out: dict[str, list[tuple[str, str, str]]] = {}
    for split, families in by_split.items():
        rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
        anchors = sorted((g for files in families.values() for gs in files.values() for g in gs),
                         key=lambda g: zlib.crc32(g.synset.encode()))
        pooled = {family: [g for gs in files.values() for g in gs] for family, files in families.items()}
        cap = (max_pairs or {}).get(split)
        pairs: list[tuple[str, str, str]] = []
        for a in anchors:
            if cap is not None and len(pairs) >= cap:
                break
            files = families[POS_FAMILY[a.synset[0]]]
            others = [label for label in files if label != a.label]
            same = [g for g in files[a.label] if g.synset != a.synset]
            if not others or not same:  # one file for this part of speech in this split, or a lone synset
                continue
            if rng.random() < 0.5:
                b, label = same[int(rng.integers(len(same)))], "same"
            else:  # a synset of the part of speech outside A's file, every synset alike (not every file alike:
                # B's file is then about as often a large one in both classes, so B alone tells little)
                pool = pooled[POS_FAMILY[a.synset[0]]]
                b = pool[int(rng.integers(len(pool)))]
                while b.label == a.label:
                    b = pool[int(rng.integers(len(pool)))]
                label = "different"
            pairs.append((_one_line(a.text), _one_line(b.text), label))
        out[split] = pairs
    return out


def write_pairs(out_dir: str | Path, root: str | Path = WORDNET, max_train: int = 20_000,
                max_test: int = 5_000) -> dict[str, int]:
    """Write ``out_dir/train.tsv`` and ``out_dir/dev.tsv``; returns the number of pairs per file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = gloss_pairs(root, max_pairs={"train": max_train, "test": max_test})
    counts = {}
    for split, name in (("train", "train.tsv"), ("test", "dev.tsv")):
        tmp = out_dir / f"{name}.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            f.write(HEADER)
            f.writelines(f"{a}\t{b}\t{label}\n" for a, b, label in pairs[split])
        tmp.replace(out_dir / name)
        counts[name] = len(pairs[split])
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the WordNet same-lexicographer-file pair task as GLUE TSVs")
    parser.add_argument("out_dir")
    parser.add_argument("--wordnet", default=WORDNET)
    parser.add_argument("--max-train", type=int, default=20_000)
    parser.add_argument("--max-test", type=int, default=5_000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        counts = write_pairs(args.out_dir, args.wordnet, args.max_train, args.max_test)
    except FileNotFoundError as e:
        log.error("%s", e)
        return 2
    for name, n in counts.items():
        log.info("wrote %d pairs to %s", n, Path(args.out_dir) / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

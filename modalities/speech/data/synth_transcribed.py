"""Synthesise a small transcribed corpus for CTC fine-tuning on the CPU, in fairseq's LibriSpeech layout.

Short sentences of plain words are drawn from the text corpora (``make data-text``: Webster 1913 and the Python
docs), normalised to fairseq's letter vocabulary (upper case, apostrophes kept, commas dropped) and spoken by the
espeak-ng / flite voices of the keyword set (:mod:`modalities.speech.data.synth_keywords`), converted with sox to
16 kHz mono 16-bit WAV. The split is by voice (test voices never speak in training; every engine has voices in
both) and by sentence (test sentences are never spoken in training). Writes

    OUT/wav/<voice>/<nnn>.wav
    OUT/{train,test}.tsv   root on line 1, then path<TAB>num_samples
    OUT/{train,test}.wrd   the words of each utterance
    OUT/{train,test}.ltr   its letters, space-separated, '|' after every word (fairseq libri_labels.py)
    OUT/dict.ltr.txt       fairseq's dictionary format: a symbol and its count in the training letters per line

    python -m modalities.speech.data.synth_transcribed OUT --text data/text/gcide.txt data/text/pydocs.txt
        [--voices 40] [--per-voice 10] [--test-fraction 0.2] [--jobs 2]

Needs the Debian packages espeak-ng, flite and sox. Files already present are kept, so a rerun only fills gaps;
the manifests are rewritten, the same for the same arguments.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from modalities.speech.data.manifest import TARGET_RATE, Manifest, read_header, write_manifest
from modalities.speech.data.synth_keywords import Voice, split_by_voice, voices
from unimim.eval.ctc import LetterVocab

logger = logging.getLogger(__name__)

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
PLAIN_WORD = re.compile(r"^[A-Za-z]+(?:'[a-z]+)?$")  # letters, at most one inner apostrophe (don't, Webster's)


def plain_sentence(text: str, *, min_words: int = 3, max_words: int = 9, max_chars: int = 60) -> str | None:
    """A sentence of plain words normalised to the letter vocabulary ('THE ACT OF SPEAKING'), or None.

    Kept: it starts upper case and ends with '.', '!' or '?'; ``min_words..max_words`` words of letters (commas
    allowed after a word, dropped); no acronym or mixed-case word (read out letter by letter or oddly by a voice)."""
    text = " ".join(text.split())
    if len(text) > max_chars or len(text) < 2 or text[-1] not in ".!?" or not text[0].isupper():
        return None
    words = [w[:-1] if w.endswith(",") else w for w in text[:-1].split()]
    if not min_words <= len(words) <= max_words:
        return None
    for i, w in enumerate(words):
        if not PLAIN_WORD.match(w) or (len(w) > 1 and not w[1:].islower()):
            return None
        if i > 0 and w[0].isupper() and w != "I":  # names are fine, but keep the sentence ordinary
            return None
    return " ".join(words).upper()


def candidate_sentences(paths: list[Path], **limits) -> list[str]:
    """The distinct plain sentences of the text files, sorted (a deterministic pool)."""
    found: set[str] = set()
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"text corpus {path} does not exist (prepared by `make data-text`)")
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                for piece in SENTENCE_END.split(line.strip()):
                    s = plain_sentence(piece, **limits)
                    if s is not None:
                        found.add(s)
    return sorted(found)


def pick_voices(n: int, test_fraction: float, seed: int = 0) -> tuple[list[Voice], list[Voice]]:
    """``n`` of the keyword set's voices (n >= 2 per engine), each engine in proportion to its voices (at least
    two, one per split), split by voice."""
    pool = voices()
    engines = sorted({v.engine for v in pool})
    if n < 2 * len(engines):
        raise ValueError(f"need at least {2 * len(engines)} voices (two per engine), got {n}")
    rng = np.random.default_rng(seed)
    chosen: list[Voice] = []
    left = n
    for e, engine in enumerate(engines):
        group = [v for v in pool if v.engine == engine]
        rest = len(engines) - e - 1  # engines still to serve, two voices each at least
        k = left if rest == 0 else min(left - 2 * rest, max(2, int(round(n * len(group) / len(pool)))))
        k = min(k, len(group))
        left -= k
        chosen += [group[i] for i in sorted(rng.choice(len(group), k, replace=False))]
    return split_by_voice(chosen, test_fraction, seed=seed)


def synthesise(voice: Voice, text: str, out: Path) -> bool:
    """``text`` spoken by ``voice`` as a 16 kHz mono 16-bit WAV at ``out`` (kept if it already exists)."""
    if out.is_file() and out.stat().st_size > 44:
        return True
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_name(out.stem + ".raw.wav")
    tmp = out.with_name(out.stem + ".tmp.wav")
    steps = (voice.command(text, raw), ["sox", str(raw), "-r", str(TARGET_RATE), "-c", "1", "-b", "16", str(tmp)])
    for cmd in steps:
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            logger.warning("%s failed for %r: %s", cmd[0], text, result.stderr.strip()[:200])
            raw.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)
            return False
    raw.unlink(missing_ok=True)
    tmp.replace(out)
    return True


def letters_line(words: str) -> str:
    """'HELLO WORLD' -> 'H E L L O | W O R L D |' (fairseq's .ltr line)."""
    return " ".join(LetterVocab().letters(words))


def write_split(out: Path, name: str, jobs: list[tuple[Voice, str, Path]], ok: list[bool]) -> Manifest:
    """``OUT/name.{tsv,wrd,ltr}`` of the synthesised utterances of one split, in job order."""
    root = (out / "wav").resolve()
    paths, lengths, words = [], [], []
    for (_, text, path), good in zip(jobs, ok):
        if good:
            paths.append(str(path.resolve().relative_to(root)))
            lengths.append(read_header(path).samples)
            words.append(text)
    manifest = Manifest(root=root, paths=paths, lengths=lengths, labels=words)
    write_manifest(manifest, out / f"{name}.tsv")  # + name.wrd
    ltr = out / f"{name}.ltr"
    tmp = ltr.with_name(ltr.name + ".tmp")
    tmp.write_text("".join(letters_line(w) + "\n" for w in words))
    tmp.replace(ltr)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="synthesise a small transcribed corpus (fairseq tsv + ltr + wrd)")
    parser.add_argument("out")
    parser.add_argument("--text", nargs="+", required=True, help="plain-text corpora to draw sentences from")
    parser.add_argument("--voices", type=int, default=40, help="voices in all (train + test)")
    parser.add_argument("--per-voice", type=int, default=10, help="sentences spoken by each voice")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of the voices held out for test")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    missing = [tool for tool in ("espeak-ng", "flite", "sox") if shutil.which(tool) is None]
    if missing:
        logger.error("missing %s: install the Debian package(s) %s", ", ".join(missing), " ".join(missing))
        return 1
    if args.voices < 4 or args.per_voice < 1 or not 0.0 < args.test_fraction < 1.0:
        logger.error("need --voices >= 4, --per-voice >= 1 and 0 < --test-fraction < 1")
        return 2
    out = Path(args.out)
    pool = candidate_sentences([Path(p) for p in args.text])
    train_voices, test_voices = pick_voices(args.voices, args.test_fraction, args.seed)
    need = (len(train_voices) + len(test_voices)) * args.per_voice
    if len(pool) < need:
        logger.error("the corpora hold %d plain sentences, %d are needed", len(pool), need)
        return 1
    rng = np.random.default_rng(args.seed)
    sentences = [pool[i] for i in rng.choice(len(pool), need, replace=False)]
    n_test = len(test_voices) * args.per_voice
    by_split = {"test": sentences[:n_test], "train": sentences[n_test:]}  # disjoint sentence sets
    jobs: dict[str, list[tuple[Voice, str, Path]]] = {}
    for name, group in (("train", train_voices), ("test", test_voices)):
        texts = by_split[name]
        jobs[name] = [(v, texts[k * args.per_voice + j], out / "wav" / v.name / f"{j:03d}.wav")
                      for k, v in enumerate(group) for j in range(args.per_voice)]
    start = time.perf_counter()
    everything = jobs["train"] + jobs["test"]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool_:
        ok_all = list(pool_.map(lambda job: synthesise(*job), everything))
    elapsed = time.perf_counter() - start
    ok = {"train": ok_all[: len(jobs["train"])], "test": ok_all[len(jobs["train"]) :]}
    seconds = 0.0
    letters: Counter[str] = Counter()
    for name in ("train", "test"):
        m = write_split(out, name, jobs[name], ok[name])
        split_seconds = sum(m.lengths) / TARGET_RATE
        seconds += split_seconds
        logger.info("%s: %d voices, %d utterances, %.1f min of audio", name,
                    len({p.split("/")[0] for p in m.paths}), len(m), split_seconds / 60)
        if name == "train":
            letters.update(t for w in m.labels for t in LetterVocab().letters(w))
    (out / "dict.ltr.txt").write_text("".join(f"{s} {c}\n" for s, c in letters.most_common()))
    logger.info("%d of %d utterances synthesised in %.1f s with %d jobs (%.1f min of audio)", sum(ok_all),
                len(everything), elapsed, args.jobs, seconds / 60)
    return 0 if all(ok_all) else 1


if __name__ == "__main__":
    sys.exit(main())

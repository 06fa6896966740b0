"""Synthesise the labeled keyword set used by the speech probe: 20 keywords spoken by >= 150 synthetic voices that
mix two engines (espeak-ng accents x voice variants with their own speed and pitch; flite voices x duration
stretch x pitch target), split by voice into train and test (every engine contributes voices to both splits; no
voice is in both). Writes ``OUT/wav/<voice>/<word>.wav`` and the manifests ``OUT/{train,test}.tsv`` + ``.wrd``.

    python -m modalities.speech.data.synth_keywords OUT [--jobs 2] [--test-fraction 0.2]

Needs the Debian packages espeak-ng and flite. Files already present are kept, so a rerun only fills gaps.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modalities.speech.data.manifest import Manifest, build_manifest, write_manifest

logger = logging.getLogger(__name__)

KEYWORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                             "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt3",
                   "croak", "grandma")
FLITE_VOICES = ("kal16", "kal", "awb", "rms", "slt")
FLITE_STRETCH = (0.85, 1.0, 1.2)
FLITE_F0 = (95, 120, 150, 190)


@dataclass(frozen=True)
class Voice:
    name: str           # directory name, unique
    engine: str         # espeak-ng | flite
    args: tuple[str, ...]

    def command(self, word: str, out: Path) -> list[str]:
        if self.engine == "espeak-ng":
            return ["espeak-ng", *self.args, "-w", str(out), word]
        return ["flite", *self.args, "-t", word, "-o", str(out)]


def voices(seed: int = 0) -> list[Voice]:
    """112 espeak-ng + 60 flite voice settings, deterministic."""
    rng = np.random.default_rng(seed)
    out = []
    for accent in ESPEAK_ACCENTS:
        for variant in ESPEAK_VARIANTS:
            speed, pitch = int(rng.integers(130, 201)), int(rng.integers(25, 76))
            out.append(Voice(f"espeak_{accent}_{variant}_s{speed}_p{pitch}", "espeak-ng",
                             ("-v", f"{accent}+{variant}", "-s", str(speed), "-p", str(pitch))))
    for voice in FLITE_VOICES:
        for stretch in FLITE_STRETCH:
            for f0 in FLITE_F0:
                out.append(Voice(f"flite_{voice}_d{stretch}_f{f0}", "flite",
                                 ("-voice", voice, "--setf", f"duration_stretch={stretch}",
                                  "--setf", f"int_f0_target_mean={f0}")))
    return out


def split_by_voice(all_voices: list[Voice], test_fraction: float, seed: int = 0) -> tuple[list[Voice], list[Voice]]:
    """Per engine, a seeded ``test_fraction`` of the voices goes to test. Returns (train, test) voice lists."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for engine in sorted({v.engine for v in all_voices}):
        group = [v for v in all_voices if v.engine == engine]
        order = rng.permutation(len(group))
        n_test = max(1, int(round(test_fraction * len(group))))
        test += [group[i] for i in sorted(order[:n_test])]
        train += [group[i] for i in sorted(order[n_test:])]
    return train, test


def synthesise(voice: Voice, word: str, out: Path) -> bool:
    if out.is_file() and out.stat().st_size > 44:
        return True
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.wav")
    result = subprocess.run(voice.command(word, tmp), capture_output=True, text=True)
    if result.returncode != 0 or not tmp.is_file():
        logger.warning("%s failed for %r: %s", voice.name, word, result.stderr.strip()[:200])
        tmp.unlink(missing_ok=True)
        return False
    tmp.replace(out)
    return True


def write_split(root: Path, split_voices: list[Voice], out: Path) -> Manifest:
    """Manifest of the split's files, ordered voice-major so that any prefix covers every keyword."""
    full = build_manifest(root, pattern="*.wav", labels_from_parent=False)
    by_path = dict(zip(full.paths, full.lengths))
    paths, lengths, labels = [], [], []
    for v in split_voices:
        for word in KEYWORDS:
            rel = f"{v.name}/{word}.wav"
            if rel in by_path:
                paths.append(rel)
                lengths.append(by_path[rel])
                labels.append(word)
    manifest = Manifest(root=full.root, paths=paths, lengths=lengths, labels=labels)
    write_manifest(manifest, out)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="synthesise the keyword probe set with espeak-ng and flite")
    parser.add_argument("out")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    missing = [tool for tool in ("espeak-ng", "flite") if shutil.which(tool) is None]
    if missing:
        logger.error("missing %s: install the Debian package(s) %s", ", ".join(missing), " ".join(missing))
        return 1
    out = Path(args.out)
    wav_root = out / "wav"
    all_voices = voices()
    jobs = [(v, w, wav_root / v.name / f"{w}.wav") for v in all_voices for w in KEYWORDS]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        ok = list(pool.map(lambda job: synthesise(*job), jobs))
    logger.info("%d of %d utterances synthesised (%d voices x %d keywords)", sum(ok), len(jobs), len(all_voices),
                len(KEYWORDS))
    train, test = split_by_voice(all_voices, args.test_fraction)
    for name, group in (("train", train), ("test", test)):
        m = write_split(wav_root, group, out / f"{name}.tsv")
        logger.info("%s: %d voices, %d utterances", name, len(group), len(m))
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())

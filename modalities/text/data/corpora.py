"""Readers for the text corpora: plain-text files, Webster 1913 (GCIDE), the Python HTML docs, WordNet glosses.

All readers yield documents as ``str``. Bad input never crashes a reader: invalid UTF-8 is replaced (U+FFFD), empty
lines separate documents or are dropped, and lines longer than ``max_line_chars`` are split at a space near the
limit (or hard, if there is none). :func:`read_documents` skips, logs and counts (:class:`SkippedFiles`) whole files
that are not text: binary content (a NUL byte or many control bytes in the first 8 KiB -- images, archives, UTF-16)
and corrupt or truncated gzip streams (checked to the end before the first document is yielded, so that a file is
read entirely or not at all).

``python -m modalities.text.data.write_corpora OUT_DIR`` writes the default pretraining corpora as plain text, one
document per blank-line separated block: ``OUT_DIR/gcide.txt`` (dictionary entries; the WordNet-derived senses that
GCIDE carries are dropped, so that pretraining never sees the probe's glosses) and ``OUT_DIR/pydocs.txt`` (one page
each).
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

GCIDE = "/usr/share/dictd/gcide.dict.dz"
PYTHON_DOCS = "/usr/share/doc/python3.11/html"
WORDNET = "/usr/share/wordnet"
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
GZIP_SUFFIXES = (".gz", ".dz")
SNIFF_BYTES = 8192          # the head of a file that decides whether it is text
MAX_CONTROL_FRACTION = 0.05  # more control bytes (besides tab, line ends, form feed, backspace, escape) -> binary
_CONTROL = bytes(c for c in [*range(32), 127] if c not in b"\t\n\r\f\v\b\x1b")

# WordNet lexicographer files (lexnames(5WN)): the probe's 45 classes, indexed by the file number of a synset line
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)


# ------------------------------------------------------------------------------------------ plain text


def split_long_line(line: str, max_chars: int) -> list[str]:
    """Split ``line`` into pieces of at most ``max_chars`` characters, preferably at a space."""
    pieces = []
    while len(line) > max_chars:
        cut = line.rfind(" ", max_chars // 2, max_chars)
        cut = max_chars if cut < 0 else cut
        pieces.append(line[:cut])
        line = line[cut:].lstrip(" ")
    if line:
        pieces.append(line)
    return pieces


def read_lines(path: Path, max_line_chars: int) -> Iterator[str]:
    """Lines of a file (gzip when it ends in .gz/.dz) without line ends; invalid UTF-8 replaced, long lines split.
    An empty line is yielded as ``""``. A corrupt or truncated gzip stream raises ValueError naming the file."""
    gz = path.suffix in GZIP_SUFFIXES
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            for raw in f:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if len(line) <= max_line_chars:
                    yield line
                else:
                    yield from split_long_line(line, max_line_chars)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({e or type(e).__name__})") from None


def binary_reason(head: bytes) -> str | None:
    """Why the first bytes of a file show it is not text (None: text): a NUL byte, or more than 5 % control bytes."""
    if b"\0" in head:
        return "binary content (NUL bytes; UTF-16 text must be converted to UTF-8)"
    if head and len(head) - len(head.translate(None, _CONTROL)) > MAX_CONTROL_FRACTION * len(head):
        return "binary content (control bytes)"
    return None


def text_file_problem(path: Path) -> str | None:
    """Why ``path`` is not read as text, or None: binary content in its first 8 KiB (after decompression), an
    unreadable file, or (gzip) a stream that is corrupt or truncated anywhere -- which gzip only reveals at its end,
    so a compressed file is decompressed once here, before it is read."""
    gz = path.suffix in GZIP_SUFFIXES
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            reason = binary_reason(f.read(SNIFF_BYTES))
            if reason is None and gz:
                while f.read(1 << 20):
                    pass
            return reason
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        return f"corrupt or truncated gzip stream ({e or type(e).__name__})"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"


@dataclass
class SkippedFiles:
    """Files a reader passed over, each with its reason (logged as a warning when added)."""

    files: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: Path, reason: str) -> None:
        log.warning("skipping %s: %s", path, reason)
        self.files.append((str(path), reason))

    def __len__(self) -> int:
        return len(self.files)


def list_text_files(path: Path) -> list[Path]:
    """``path`` itself, or the text files under a directory (recursively, sorted)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES + (".gz",))
    raise FileNotFoundError(f"text corpus path {path} does not exist (see `make data-text`)")


def read_documents(
    path: str | Path, documents: Literal["blank_line", "file"] = "blank_line", max_line_chars: int = 10_000,
    skipped: SkippedFiles | None = None,
) -> Iterator[str]:
    """Documents of a file or directory: blank-line separated blocks, or one document per file. Lines of a
    document are joined with newlines; whitespace-only documents are skipped. Files that are not text
    (:func:`text_file_problem`) are skipped and added to ``skipped``; their documents never appear."""
    skipped = SkippedFiles() if skipped is None else skipped
    for file in list_text_files(Path(path)):
        problem = text_file_problem(file)
        if problem is not None:
            skipped.add(file, problem)
            continue
        lines: list[str] = []
        try:
            for line in read_lines(file, max_line_chars):
                if line.strip():
                    lines.append(line)
                elif documents == "blank_line" and lines:
                    yield "\n".join(lines)
                    lines = []
        except ValueError as e:  # the file changed since it was checked: what was read before stays
            skipped.add(file, f"{e} while reading; the documents before the error are kept")
            continue
        if lines:
            yield "\n".join(lines)


# ------------------------------------------------------------------------------------------------ GCIDE

_PRON = re.compile(r"\\[^\\\n]*\\\s*(\([^)\n]*\))?")       # \Ab"a*cus\ ([a^]b"[.a]*k[u^]s)
_ACCENT = re.compile(r"\[[-=.~^\"`'/,]?([A-Za-z]{1,2})[-=.~^\"`'/,]?\]")  # [a^] [.a] [ae] -> letter(s)
_SOURCE = re.compile(r"^\s*\[[^\]]*(Webster|WordNet|PJC|Century|Chambers|Note)[^\]]*\]\s*$")
_BRACES = re.compile(r"[{}]")


def gcide_entries(path: str | Path = GCIDE, max_line_chars: int = 10_000) -> Iterator[str]:
    """Dictionary entries of GCIDE's dictd file as cleaned text (markup, pronunciations and source tags removed).

    An entry starts at a line without indentation and runs to the next such line. Senses tagged as coming from
    WordNet are dropped. The database's own header entries (``00-database-*``) are skipped."""
    entry: list[str] = []
    sense: list[str] = []
    wordnet_sense = False

    def close_sense() -> None:
        nonlocal sense, wordnet_sense
        if sense and not wordnet_sense:
            entry.extend(sense)
        sense, wordnet_sense = [], False

    def flush() -> str | None:
        nonlocal entry
        close_sense()
        text = "\n".join(entry).strip()
        entry = []
        if not text or text.startswith("00-database") or text.startswith("Begin file"):
            return None
        return text

    for line in read_lines(Path(path), max_line_chars):
        if line and not line[0].isspace():  # a new headword
            text = flush()
            if text:
                yield text
        if not line.strip():
            close_sense()
            continue
        if "[WordNet" in line:
            wordnet_sense = True
        if _SOURCE.match(line):
            continue
        clean = _BRACES.sub("", _ACCENT.sub(r"\1", _PRON.sub("", line))).strip()
        if clean:
            sense.append(clean)
    text = flush()
    if text:
        yield text


# ------------------------------------------------------------------------------------------ Python docs

_BLOCK_TAGS = {"p", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "tr", "dt", "dd", "br", "section",
               "table", "ul", "ol", "dl", "blockquote"}


class _MainText(HTMLParser):
    """Text inside the Sphinx ``<div ... role="main">`` of a page, with line breaks at block elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0  # div nesting inside the main div (0 = outside)
        self.skip = 0   # inside script/style
        self.pre = 0    # inside <pre>: line breaks are content
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
        self.pre += tag == "pre"
        if tag == "div":
            if self.depth:
                self.depth += 1
            elif dict(attrs).get("role") == "main":
                self.depth = 1
        if self.depth and tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self.skip:
            self.skip -= 1
        if tag == "pre" and self.pre:
            self.pre -= 1
        if self.depth and tag in _BLOCK_TAGS:
            self.parts.append("\n")
        if tag == "div" and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth and not self.skip:
            self.parts.append(data if self.pre else data.replace("\n", " "))

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.parts).replace("\u00b6", "").splitlines())
        return "\n".join(line for line in lines if line)


def html_documents(root: str | Path = PYTHON_DOCS) -> Iterator[str]:
    """One document per HTML page under ``root`` (the main content of Sphinx pages)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"HTML documentation directory {root} not found (Debian package python3.11-doc)")
    for page in sorted(root.rglob("*.html")):
        parser = _MainText()
        parser.feed(page.read_bytes().decode("utf-8", errors="replace"))
        text = parser.text()
        if text:
            yield text


# ---------------------------------------------------------------------------------------------- WordNet


@dataclass(frozen=True)
class Gloss:
    synset: str  # "<pos><offset>", e.g. "n00045250": unique per synset
    label: int   # lexicographer file number, an index into LEXNAMES
    text: str


def wordnet_glosses(root: str | Path = WORDNET) -> Iterator[Gloss]:
    """The gloss and lexicographer category of every synset in ``root/data.{noun,verb,adj,adv}``."""
    root = Path(root)
    files = [root / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"WordNet data files missing: {', '.join(missing)} (Debian package wordnet-base)")
    for file in files:
        for line in read_lines(file, max_line_chars=1 << 20):
            if not line or line.startswith("  "):  # licence header lines start with two spaces
                continue
            head, sep, gloss = line.partition(" | ")
            fields = head.split()
            if not sep or len(fields) < 3 or not fields[1].isdigit():
                continue  # malformed line: skipped
            label = int(fields[1])
            if label >= len(LEXNAMES) or not gloss.strip():
                continue
            yield Gloss(synset=f"{fields[2]}{fields[0]}", label=label, text=gloss.strip())


def synset_split(synset: str, test_fraction: float) -> str:
    """Deterministic train/test assignment of a synset (a hash, independent of file order)."""
    return "test" if (zlib.crc32(synset.encode()) % 10_000) < test_fraction * 10_000 else "train"


# ------------------------------------------------------------------------------------------ preparation


def write_documents(docs: Iterator[str], out: Path) -> int:
    """Write documents blank-line separated (blank lines inside a document are removed); return the count."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for doc in docs:
            lines = [line for line in doc.splitlines() if line.strip()]
            if lines:
                f.write("\n".join(lines) + "\n\n")
                n += 1
    tmp.replace(out)
    return n

"""Readers of labelled text: TSV / CSV / JSONL tables and folders of class folders, as raw (texts, label) rows.

* **TSV** (GLUE's files as they come): tab-separated, read with ``csv.QUOTE_NONE`` -- GLUE's sentences contain
  quotes that are text, not CSV quoting. A header line names the columns (SST-2 ``sentence  label``, MRPC
  ``Quality  #1 ID  #2 ID  #1 String  #2 String``, QNLI / RTE ``index  question|sentence1  sentence|sentence2
  label``, MNLI ``... sentence1 sentence2 ... gold_label``), or ``columns`` names them for a header-less file
  (CoLA: ``source label star sentence``). A UTF-8 byte-order mark is dropped.
* **CSV**: comma-separated with standard CSV quoting, header or ``columns`` as for TSV.
* **JSONL**: one JSON object per line; the columns are its keys.
* **folder**: ``split/<class>/**/*.txt``, one example per file, the class folder's name as its label.

A column that is in no row, or a header-less table without ``columns``, is a ValueError naming the columns found.
Rows that cannot be used are skipped and counted by reason in :class:`Skipped` (logged by the caller): a line with
the wrong number of fields, a line that is not a JSON object, a text or label cell that is missing, empty or not a
string / integer, a file that is not text. Blank lines are not rows. Labels are read as strings (JSON integers and
booleans as they are written in JSON: ``1``, ``true``); what they mean is decided later
(:mod:`modalities.text.task`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modalities.text.data.corpora import binary_reason

TableFormat = Literal["tsv", "csv", "jsonl"]
FOLDER_SUFFIX = ".txt"
MAX_FIELD_CHARS = 1 << 24  # csv's default limit (131,072 characters per field) is below some documents


@dataclass(frozen=True)
class Row:
    """One labelled example as read: its texts (one per text column), its label (None: missing) and where it is."""

    texts: tuple[str, ...]
    label: str | None
    where: str  # "file:line" or the file's path


@dataclass
class Skipped:
    """Rows passed over, counted by reason, with the first place each reason was seen."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.first.setdefault(reason, where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return "; ".join(f"{n} {reason} (first: {self.first[reason]})" for reason, n in self.counts.items())


def _cell_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _cell_label(value: Any) -> str | None:
    """A label cell as a string: text stripped, JSON integers and booleans as JSON writes them; else None."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _check_columns(path: Path, found: Sequence[str], wanted: Sequence[str], what: str) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        shown = ", ".join(repr(c) for c in found) if found else "none"
        raise ValueError(f"{path}: no {what} {', '.join(repr(c) for c in missing)}; the columns found are {shown}")


def _make_row(cells: dict[str, Any], text_columns: Sequence[str], label_column: str, where: str,
              skipped: Skipped) -> Row | None:
    texts = [_cell_text(cells.get(c)) for c in text_columns]
    if any(t is None for t in texts):
        skipped.add("rows with a missing or non-string text", where)
        return None
    if not any(t.strip() for t in texts):
        skipped.add("rows with empty text", where)
        return None
    return Row(tuple(t.strip() for t in texts), _cell_label(cells.get(label_column)), where)


def read_table(path: str | Path, fmt: TableFormat, text_columns: Sequence[str], label_column: str, *,
               header: bool = True, columns: Sequence[str] | None = None,
               skipped: Skipped | None = None) -> list[Row]:
    """The rows of a TSV / CSV / JSONL file: ``text_columns`` (1 or 2) and ``label_column`` of each record."""
    path = Path(path)
    skipped = Skipped() if skipped is None else skipped
    wanted = [*text_columns, label_column]
    rows: list[Row] = []
    if fmt == "jsonl":
        keys: dict[str, None] = {}
        with path.open(encoding="utf-8-sig", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path.name}:{n}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    obj = None
                if not isinstance(obj, dict):
                    skipped.add("lines that are not a JSON object", where)
                    continue
                keys.update(dict.fromkeys(obj))
                row = _make_row(obj, text_columns, label_column, where, skipped)
                if row is not None:
                    rows.append(row)
        _check_columns(path, list(keys), wanted, "key")
        return rows
    csv.field_size_limit(MAX_FIELD_CHARS)
    kwargs: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv" else {}
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f, **kwargs)
        records = ((cells, reader.line_num) for cells in reader if cells and cells != [""])  # blank lines: no row
        if header:
            first = next(records, None)
            if first is None:
                raise ValueError(f"{path}: the file is empty (no header line)")
            names = [c.strip() for c in first[0]]
        elif columns:
            names = list(columns)
        else:
            raise ValueError(f"{path}: a table without a header line needs task.columns (the name of each column)")
        _check_columns(path, names, wanted, "column")
        for cells, n in records:
            where = f"{path.name}:{n}"
            if len(cells) != len(names):
                skipped.add(f"lines with a number of fields other than the {len(names)} columns", where)
                continue
            row = _make_row(dict(zip(names, cells)), text_columns, label_column, where, skipped)
            if row is not None:
                rows.append(row)
    return rows


def read_class_folders(split_dir: str | Path, skipped: Skipped | None = None) -> list[Row]:
    """One row per ``*.txt`` file under ``split_dir/<class>/`` (recursively), labelled by the class folder's name."""
    split_dir = Path(split_dir)
    skipped = Skipped() if skipped is None else skipped
    classes = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        found = sorted(p.name for p in split_dir.iterdir())
        raise ValueError(f"{split_dir} holds no class folders (<class>/*{FOLDER_SUFFIX}); found: "
                         f"{', '.join(found) if found else 'nothing'}")
    rows: list[Row] = []
    for folder in classes:
        for file in sorted(folder.rglob(f"*{FOLDER_SUFFIX}")):
            if not file.is_file():
                continue
            data = file.read_bytes()
            if binary_reason(data[:8192]) is not None:
                skipped.add("files that are not text", str(file))
                continue
            text = data.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
            if not text:
                skipped.add("empty files", str(file))
                continue
            rows.append(Row((text,), folder.name, str(file)))
    return rows

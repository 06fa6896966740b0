"""``python -m modalities.text.data.write_corpora OUT_DIR``: the default text pretraining corpora as plain text,
``OUT_DIR/gcide.txt`` (Webster 1913 entries, the WordNet-derived senses dropped) and ``OUT_DIR/pydocs.txt`` (the
Python docs, one page per document), read by :mod:`modalities.text.data.corpora`. (A module of its own: the
readers are imported with the package, and ``python -m`` of an imported module runs it twice.)"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from modalities.text.data.corpora import GCIDE, PYTHON_DOCS, gcide_entries, html_documents, write_documents

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the default text pretraining corpora as plain text")
    parser.add_argument("out_dir")
    parser.add_argument("--gcide", default=GCIDE)
    parser.add_argument("--python-docs", default=PYTHON_DOCS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out_dir)
    for name, src, docs in (("gcide.txt", args.gcide, lambda: gcide_entries(args.gcide)),
                            ("pydocs.txt", args.python_docs, lambda: html_documents(args.python_docs))):
        if not Path(src).exists():
            log.error("%s not found: install the Debian packages dict-gcide and python3.11-doc", src)
            return 1
        n = write_documents(docs(), out / name)
        log.info("wrote %d documents to %s", n, out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

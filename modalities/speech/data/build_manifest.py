"""Write a fairseq-style audio manifest (see :mod:`modalities.speech.data.manifest`) of a folder of wav/flac/ogg files.

    python -m modalities.speech.data.build_manifest ROOT OUT.tsv [--glob '*_desc_*.ogg'] [--labels-from-parent]
"""

from __future__ import annotations

import argparse
import logging
import sys

from modalities.speech.data.manifest import build_manifest, write_manifest

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write a fairseq-style audio manifest of a folder")
    parser.add_argument("root")
    parser.add_argument("out")
    parser.add_argument("--glob", default="*", help="file name pattern, e.g. '*_desc_*.ogg'")
    parser.add_argument("--labels-from-parent", action="store_true", help="also write OUT.wrd with parent names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = build_manifest(args.root, pattern=args.glob, labels_from_parent=args.labels_from_parent)
    if not len(manifest):
        logger.error("no readable audio files matching %r under %s", args.glob, args.root)
        return 1
    write_manifest(manifest, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

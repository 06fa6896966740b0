"""Shared test helpers, read from the registry: every modality and objective spec carries its own tiny settings
(``tiny``, ``tiny_data``) and log keys, so a new objective needs no edit here."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from modalities.image.objectives.beit import tiny_tokenizer  # noqa: F401  (re-exported for tests)
from modalities.text.data.tiny import TINY as TEXT_FIXTURES  # noqa: F401  (the shipped tiny text data)
from unimim.app.registry import MODALITIES, OBJECTIVES

_DATA_DIRS: dict[str, Path] = {}  # one tiny data set per modality and test session


def _modality_data(modality: str) -> list[str]:
    spec = MODALITIES[modality]
    if spec.tiny_data is None:
        return []
    if modality not in _DATA_DIRS:
        _DATA_DIRS[modality] = Path(tempfile.mkdtemp(prefix=f"unimim_tiny_{modality}_"))
        atexit.register(shutil.rmtree, _DATA_DIRS[modality], True)
    return spec.tiny_data(_DATA_DIRS[modality])


def tiny_overrides(modality: str, objective: str, directory: Path | None = None) -> list[str]:
    """The tiny overrides of a recipe: the modality's, its tiny data, the objective's; ``directory`` receives files
    the objective needs (e.g. a BEiT tokenizer)."""
    spec = OBJECTIVES[objective]
    out = [*MODALITIES[modality].tiny, *_modality_data(modality), *spec.tiny]
    if spec.tiny_data is not None:
        if directory is None:
            raise ValueError(f"tiny_overrides(..., {objective!r}, directory): this objective needs a directory for "
                             "the files of its tiny run")
        out += spec.tiny_data(Path(directory))
    return out


def objective_logs(objective: str) -> frozenset[str]:
    """Metric keys every training step of ``objective`` logs (besides loss, lr, grad_norm, samples_per_s)."""
    return OBJECTIVES[objective].logs

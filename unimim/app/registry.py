"""The hand-written registries, one dict per kind, and the builder that reads them.

This package (``unimim.app``) is the only code that imports both the library and the plugins in ``modalities``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from modalities.base import ModalitySpec, ObjectiveSpec
from modalities.data2vec import DATA2VEC, DATA2VEC2
from modalities.image import IMAGE
from modalities.image.objectives.beit import BEIT_SPEC
from modalities.image.objectives.dvae import DVAE_SPEC
from modalities.image.objectives.ibot import IBOT_SPEC
from modalities.image.objectives.mae import MAE_SPEC
from modalities.image.objectives.simmim import SIMMIM_SPEC
from modalities.speech import SPEECH
from modalities.text import TEXT

MODALITIES: dict[str, ModalitySpec] = {
    "image": IMAGE,
    "speech": SPEECH,
    "text": TEXT,
}

OBJECTIVES: dict[str, ObjectiveSpec] = {
    "data2vec": DATA2VEC,     # data2vec 1.0 (every modality)
    "data2vec2": DATA2VEC2,   # data2vec 2.0 (every modality)
    "mae": MAE_SPEC,
    "simmim": SIMMIM_SPEC,
    "beit": BEIT_SPEC,
    "ibot": IBOT_SPEC,
    "dvae": DVAE_SPEC,        # BEiT's visual tokenizer (stage 1)
}


def build_objective(cfg: Any) -> nn.Module:
    """The objective of an experiment config, built by its spec's factory on the config's modality."""
    return OBJECTIVES[cfg.objective].build(cfg, MODALITIES[cfg.modality])

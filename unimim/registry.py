"""The hand-written registries: one dict per kind, and the builders that read them.

This module and the CLI are the only places in ``unimim`` that import ``modalities``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modalities.base import ModalitySpec
from modalities.image import IMAGE
from modalities.image.objectives.beit import BEiT, BEiTConfig
from modalities.image.objectives.dvae import DVAEObjectiveConfig, DVAETraining
from modalities.image.objectives.ibot import IBOT, IBOTConfig
from modalities.image.objectives.mae import MAE, MAEConfig
from modalities.image.objectives.simmim import SimMIM, SimMIMConfig
from modalities.speech import SPEECH
from modalities.text import TEXT
from unimim.nn.encoder import TransformerEncoder
from unimim.objectives.base import Objective
from unimim.objectives.data2vec import Data2Vec, Data2VecConfig


@dataclass(frozen=True)
class ObjectiveSpec:
    cls: type[Objective]
    config: type
    modalities: tuple[str, ...]  # which adapters it can run on


MODALITIES: dict[str, ModalitySpec] = {
    "image": IMAGE,
    "speech": SPEECH,
    "text": TEXT,
}

OBJECTIVES: dict[str, ObjectiveSpec] = {
    "data2vec": ObjectiveSpec(Data2Vec, Data2VecConfig, ("image", "speech", "text")),
    "mae": ObjectiveSpec(MAE, MAEConfig, ("image",)),
    "simmim": ObjectiveSpec(SimMIM, SimMIMConfig, ("image",)),
    "beit": ObjectiveSpec(BEiT, BEiTConfig, ("image",)),
    "ibot": ObjectiveSpec(IBOT, IBOTConfig, ("image",)),
    "dvae": ObjectiveSpec(DVAETraining, DVAEObjectiveConfig, ("image",)),  # BEiT's visual tokenizer (stage 1)
}


def build_objective(cfg: Any) -> Objective:
    """Adapter + encoder + objective from an experiment config."""
    spec = MODALITIES[cfg.modality]
    adapter = spec.build_adapter(cfg.adapter, cfg.encoder)
    encoder = TransformerEncoder(cfg.encoder)
    return OBJECTIVES[cfg.objective].cls(adapter, encoder, cfg.method)

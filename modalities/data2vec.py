"""The library's data2vec objectives as plugins: data2vec 1.0 and 2.0 run on every modality's adapter."""

from __future__ import annotations

from typing import Any

from modalities.base import ObjectiveSpec, require, vit_objective
from unimim.objectives.data2vec import Data2Vec, Data2VecConfig
from unimim.objectives.data2vec2 import Data2Vec2, Data2Vec2Config

LOGS = frozenset({"target_std", "pred_std", "mask_ratio"})


def check_data2vec(cfg: Any) -> None:
    require(cfg.method.top_k <= cfg.encoder.depth,
            f"method.top_k={cfg.method.top_k} exceeds encoder.depth={cfg.encoder.depth}")
    views = getattr(cfg.data, "views", None)
    require(views is None or not views.enabled, "data2vec takes one view per example (R masks of it): "
                                                "data.views.enabled is for multi-view objectives (ibot)")


def check_data2vec2(cfg: Any) -> None:
    check_data2vec(cfg)
    kind = getattr(cfg.masking, "kind", None)
    require(not (cfg.modality == "text" and kind == "bert"),
            "data2vec 2.0 drops masked tokens, so BERT's corruption has nothing to act on: use masking.kind: random")
    require(not (cfg.modality == "image" and kind in ("block", "simmim")),
            f"data2vec 2.0 needs the same number of masked patches in every image; masking.kind {kind!r} does not "
            "give it (use inverse_block or random)")


DATA2VEC = ObjectiveSpec(
    config=Data2VecConfig,
    build=vit_objective(Data2Vec),
    modalities=("image", "speech", "text"),
    check=check_data2vec,
    tiny=("method.top_k=2",),
    logs=LOGS,
)

DATA2VEC2 = ObjectiveSpec(
    config=Data2Vec2Config,
    build=vit_objective(Data2Vec2),
    modalities=("image", "speech", "text"),
    check=check_data2vec2,
    tiny=("method.top_k=2", "method.decoder.dim=32", "method.decoder.layers=2", "method.decoder.kernel=3",
          "method.decoder.groups=1"),
    logs=LOGS,
)

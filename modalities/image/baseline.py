"""The raw-input baseline of images: the eval-transformed pixels themselves (resized, centre-cropped, normalised
with the data's channel statistics), flattened."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from unimim.core.batch import Batch


class PixelFeatures:
    """Raw pixels: a batch's (B, C, H, W) images -> (B, C*H*W) float32. Needs no fitting; dense (the baseline
    standardises each pixel with the training split's mean / std)."""

    name = "raw pixels"
    dense = True

    def fit(self, batches: Iterable[Batch]) -> None:
        del batches  # nothing to learn

    def transform(self, batch: Batch) -> Tensor:
        x = batch.inputs
        if x is None or x.dim() != 4:
            raise ValueError(f"raw pixels need (B, C, H, W) images, got "
                             f"{None if x is None else tuple(x.shape)}")
        return x.flatten(1).float()  # (B, C, H, W) -> (B, C*H*W)


def pixel_baseline(cfg: Any) -> PixelFeatures:
    """The image modality's ``ModalitySpec.raw_baseline``: raw pixels at the run's image size."""
    del cfg
    return PixelFeatures()

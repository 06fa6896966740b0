"""The image raw-input baseline: raw pixels, flattened."""

from __future__ import annotations

import pytest
import torch

from modalities.image import IMAGE
from modalities.image.baseline import PixelFeatures
from unimim.core.batch import Batch


def test_pixels_are_the_flattened_inputs():
    x = torch.randn(3, 2, 4, 5)
    extractor = IMAGE.raw_baseline(None)
    extractor.fit([])  # nothing to learn
    out = extractor.transform(Batch(inputs=x, labels=torch.zeros(3, dtype=torch.long)))
    assert out.shape == (3, 40) and out.dtype == torch.float32
    assert torch.equal(out, x.flatten(1))
    assert torch.equal(out[1, 20:25], x[1, 1, 0])  # channel-major, then rows: (C, H, W) order
    assert extractor.dense and extractor.name == "raw pixels"


def test_pixels_need_images():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        PixelFeatures().transform(Batch(inputs=torch.randn(3, 40)))

"""PIL mode handling shared by the image data sets: any input mode -> "L" or "RGB"."""

from __future__ import annotations

import numpy as np
from PIL import Image


def mode_for(channels: int) -> str:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return "L" if channels == 1 else "RGB"


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be None or >= 1, got {limit}")


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert a PIL image of any mode to ``mode`` ("L" or "RGB").

    Transparent images (RGBA, LA, PA, La, RGBa, P or L/RGB with a ``transparency`` entry) are composited on
    white first. 16-bit images (I;16*) are scaled by 1/257; 32-bit "I" images are treated as 16-bit data when
    their maximum exceeds 255 (PIL's own conversion clips instead of scaling); float "F" images in [0, 1] are
    scaled by 255, others clipped to [0, 255]. Every other mode (1, CMYK, YCbCr, ...) goes through PIL.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    src = img.mode
    if src == mode and "transparency" not in img.info:
        return img
    if src.startswith("I;16") or src in ("I", "F"):
        img = _high_depth_to_l(img)
    elif src in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    elif src not in ("L", "RGB"):
        img = img.convert("RGB")
    return img if img.mode == mode else img.convert(mode)


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float single-channel image to 8-bit "L"."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        finite_max = float(np.nanmax(arr)) if arr.size else 0.0
        arr = arr * 255.0 if finite_max <= 1.0 else arr
    else:
        arr = arr.astype(np.float64)
        if img.mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0
    arr = np.nan_to_num(arr, nan=0.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


class ConvertMode:
    """Transform converting any PIL image to ``mode`` with :func:`to_mode` (picklable for DataLoader workers)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        return to_mode(img, self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"

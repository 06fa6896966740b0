"""Reconstruction pictures for pixel objectives (MAE, SimMIM): one row per image with four panels,

    original | masked input | reconstruction | reconstruction pasted into the visible patches

all in display units: the data set's Normalize(mean, std) is undone, and MAE's per-patch normalisation
(``norm_pix_loss``) is undone by the objective's ``reconstruct`` (with each original patch's mean and std, so the
brightness and contrast of masked patches in the picture come from the original, not from the model; the caption
says so). Masked patches of the input panel are drawn mid-grey.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError
from torch import Tensor

from modalities.image.data.dataset import eval_transform
from modalities.image.masking import build_mask_generator
from modalities.image.objectives.simmim import pixel_mask
from unimim.core.masking import draw_masks

log = logging.getLogger(__name__)

PANELS = ("original", "masked", "reconstruction", "pasted")
GAP = 2  # pixels between panels and rows


def to_display(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(B, C, S, S) normalised images -> (B, S, S, C) uint8, the data set's Normalize undone and clipped."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (x.detach().float().cpu() * s + m).clamp(0, 1)  # (B, C, S, S) in [0, 1]
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # (B, S, S, C)


@torch.no_grad()
def reconstruction_panels(objective: Any, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """images (B, C, S, S) normalised, mask (B, N) bool -> the four panels, each (B, C, S, S) normalised units."""
    rec = objective.reconstruct(images, mask).float()  # (B, C, S, S)
    m = pixel_mask(mask, objective.grid, objective.patch_size)  # (B, 1, S, S), 1 = masked
    images = images.float()
    return {"original": images, "masked": images * (1 - m), "reconstruction": rec,
            "pasted": images * (1 - m) + rec * m, "pixel_mask": m}


def grid_image(panels: dict[str, Tensor], mean: Sequence[float], std: Sequence[float], scale: int = 4) -> Image.Image:
    """Compose the panels into one RGB picture: rows = images, columns = :data:`PANELS`, upscaled ``scale`` x."""
    shown = {k: to_display(panels[k], mean, std) for k in PANELS}  # name -> (B, S, S, C) uint8
    m = panels["pixel_mask"].cpu().numpy().transpose(0, 2, 3, 1) > 0.5  # (B, S, S, 1)
    shown["masked"] = np.where(m, np.uint8(128), shown["masked"])  # masked patches in grey
    b, s, _, c = shown["original"].shape
    side = s * scale
    header = 14
    width = len(PANELS) * side + (len(PANELS) + 1) * GAP
    height = header + b * side + (b + 1) * GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(PANELS):
        draw.text((GAP + j * (side + GAP), 1), name[:max(1, side // 6)], fill=(0, 0, 0))
        for i in range(b):
            arr = shown[name][i]  # (S, S, C)
            tile = Image.fromarray(arr[..., 0] if c == 1 else arr, mode="L" if c == 1 else "RGB").convert("RGB")
            tile = tile.resize((side, side), Image.NEAREST)
            canvas.paste(tile, (GAP + j * (side + GAP), header + GAP + i * (side + GAP)))
    return canvas


def load_images(paths: Sequence[str | Path], data_cfg: Any) -> Tensor:
    """Image files -> (B, C, S, S) through the run's evaluation transform; a clear error for unreadable files."""
    transform = eval_transform(data_cfg)
    out = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                out.append(transform(img))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from e
    return torch.stack(out)


def save_png(image: Image.Image, path: Path) -> None:
    """Write atomically: a temporary file in the same directory, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png.tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        image.save(tmp, format="PNG")
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the picture ordinary file permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pick_images(cfg: Any, *, images: Sequence[str] = (), num: int = 8) -> Tensor:
    """``images`` (files) or the first ``num`` test images of an image experiment config: (B, C, S, S)."""
    from modalities.image.data.source import build_eval_sets

    if num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    if images:
        return load_images(images, cfg.data)
    _, test_set = build_eval_sets(cfg.data, cfg.adapter)
    return torch.stack([test_set[i][0] for i in range(min(num, len(test_set)))])


def reconstruction_picture(model: Any, cfg: Any, batch: Tensor, *, seed: int = 0, scale: int = 4) -> Image.Image:
    """Mask ``batch`` (B, C, S, S) with the run's own mask generator (seeded) and draw the four panels per image."""
    gen = build_mask_generator(cfg.masking, cfg.adapter.grid, patch_size=cfg.adapter.patch_size,
                               image_size=cfg.adapter.image_size)
    rng = np.random.default_rng(seed)
    mask = torch.from_numpy(draw_masks(gen, rng, batch.shape[0]))  # (B, N): one mask per image
    panels = reconstruction_panels(model, batch, mask)
    mean, std = cfg.data.channel_stats()
    return grid_image(panels, mean, std, scale=scale)

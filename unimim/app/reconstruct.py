"""``unimim reconstruct``: the reconstruction picture of a MAE / SimMIM run (:mod:`modalities.image.pictures`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from modalities.image.pictures import pick_images, reconstruction_picture, save_png
from unimim.app.probe import load_pretrained, load_run_config

log = logging.getLogger(__name__)


def reconstruct_run(
    run_dir: str | Path, *, images: Sequence[str] = (), num: int = 8, out: str | Path | None = None, seed: int = 0,
    scale: int = 4,
) -> Path:
    """Load a MAE / SimMIM run, mask ``images`` (files) or the first ``num`` test images with the run's own mask
    generator (seeded), and write the picture (default ``RUN_DIR/reconstruction.png``). Returns its path."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if cfg.modality != "image" or cfg.objective not in ("mae", "simmim"):
        raise ValueError(f"run {run_dir} is {cfg.modality}/{cfg.objective}; pictures need an image pixel objective "
                         "(mae or simmim)")
    batch = pick_images(cfg, images=images, num=num)
    model = load_pretrained(run_dir, cfg, torch.device("cpu"))
    path = Path(out) if out is not None else run_dir / "reconstruction.png"
    save_png(reconstruction_picture(model, cfg, batch, seed=seed, scale=scale), path)
    if cfg.objective == "mae" and cfg.method.norm_pix_loss:
        log.info("norm_pix_loss: masked patches are shown with the original patches' mean and std")
    return path

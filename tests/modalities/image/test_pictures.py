"""`unimim reconstruct`: a PNG of original / masked / reconstruction / pasted with the normalisations undone."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modalities.image.pictures import GAP, grid_image, reconstruction_panels
from tests.conftest import tiny_overrides
from unimim.app.cli import main

RECIPES = Path(__file__).resolve().parents[3] / "recipes/image"


def _pretrain(tmp_path: Path, recipe: str, objective: str) -> Path:
    args = tiny_overrides("image", objective) + [f"train.out_dir={tmp_path}", "name=run", "probe.epochs=3",
                                                  "probe.knn_k=3"]
    assert main(["pretrain", str(RECIPES / recipe), *args, "--no-progress"]) == 0
    return tmp_path / "run"


@pytest.mark.parametrize("recipe,objective", [("mae_fmnist_cpu.yaml", "mae"),
                                              ("simmim_swin_fmnist_cpu.yaml", "simmim")])
def test_pretrain_probe_reconstruct(tmp_path, recipe, objective, capsys):
    run = _pretrain(tmp_path, recipe, objective)
    assert main(["probe", str(run), "--no-progress"]) == 0  # encode() works for the foundation's probe
    assert "pretrained" in capsys.readouterr().out
    # a known 16x16 grey image in a file: the "original" panel must show its pixels, Normalize undone
    arr = (np.arange(256).reshape(16, 16) % 251).astype(np.uint8)
    Image.fromarray(arr, mode="L").save(tmp_path / "in.png")
    out = tmp_path / "pic.png"
    assert main(["reconstruct", str(run), "--images", str(tmp_path / "in.png"), "--out", str(out),
                 "--scale", "2"]) == 0
    pic = np.asarray(Image.open(out).convert("L"))
    assert pic.shape == (14 + 32 + 2 * GAP, 4 * 32 + 5 * GAP)
    original = pic[14 + GAP: 14 + GAP + 32: 2, GAP: GAP + 32: 2]  # first panel, one pixel per source pixel
    assert np.abs(original.astype(int) - arr.astype(int)).max() <= 1
    assert main(["reconstruct", str(run), "--num", "3"]) == 0  # default: test images, RUN_DIR/reconstruction.png
    assert Image.open(run / "reconstruction.png").size == (4 * 4 * 16 + 5 * GAP, 14 + 3 * 4 * 16 + 4 * GAP)


def test_reconstruct_refuses_non_pixel_runs_and_bad_files(tmp_path, caplog):
    run = _pretrain(tmp_path, "data2vec_fmnist_cpu.yaml", "data2vec")
    with caplog.at_level(logging.ERROR):
        assert main(["reconstruct", str(run)]) == 2
    assert "mae or simmim" in caplog.text
    run = _pretrain(tmp_path / "m", "mae_fmnist_cpu.yaml", "mae")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with caplog.at_level(logging.ERROR):
        assert main(["reconstruct", str(run), "--images", str(tmp_path / "bad.png")]) == 2
        assert main(["reconstruct", str(run), "--images", str(tmp_path / "missing.png")]) == 2
    assert "cannot read image" in caplog.text and "missing.png" in caplog.text


class _Fixed:
    """A stand-in objective whose reconstruction is a constant image."""

    grid, patch_size = (2, 2), 2

    def reconstruct(self, images, mask):
        return torch.full_like(images, 3.0)


def test_panels_paste_the_reconstruction_into_masked_patches_only():
    images = torch.randn(1, 1, 4, 4)
    mask = torch.tensor([[True, False, False, False]])  # top-left 2x2 patch masked
    p = reconstruction_panels(_Fixed(), images, mask)
    assert torch.equal(p["pasted"][0, 0, :2, :2], torch.full((2, 2), 3.0))
    assert torch.equal(p["pasted"][0, 0, 2:], images[0, 0, 2:])
    assert torch.equal(p["masked"][0, 0, :2, :2], torch.zeros(2, 2))
    pic = np.asarray(grid_image(p, mean=[0.5], std=[0.1], scale=1).convert("L"))
    masked_panel = pic[14 + GAP: 14 + GAP + 4, 2 * GAP + 4: 2 * GAP + 8]
    assert (masked_panel[:2, :2] == 128).all()  # masked patches drawn grey
    recon_panel = pic[14 + GAP: 14 + GAP + 4, 3 * GAP + 8: 3 * GAP + 12]
    assert (recon_panel == 204).all()  # 3.0 * 0.1 + 0.5 = 0.8 of 255: Normalize undone

"""Pixel targets on the patch grid: patchify / unpatchify, MAE's per-patch normalisation and its inverse.

Patch vectors are ordered ``(p, q, c)`` (row in patch, column in patch, channel), the layout of MAE's
``models_mae.py::patchify`` (``nchpwq -> nhwpqc``) and of ``transformers`` ``ViTMAEForPreTraining.patchify``, so a
prediction head trained here and one converted from those models agree element by element.
"""

from __future__ import annotations

from torch import Tensor

NORM_PIX_EPS = 1e-6  # MAE forward_loss: (t - mean) / sqrt(var + 1e-6)


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """images (B, C, H, W) -> patches (B, N, p*p*C), N = (H/p)(W/p), row-major over the grid."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not divisible into {p}x{p} patches")
    x = images.reshape(b, c, h // p, p, w // p, p)  # (B, C, h, p, w, q)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, q, C)
    return x.reshape(b, (h // p) * (w // p), p * p * c)  # (B, N, p*p*C)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> Tensor:
    """patches (B, N, p*p*C) -> images (B, C, H, W), the inverse of :func:`patchify`."""
    b, n, d = patches.shape
    gh, gw = grid
    p = patch_size
    if n != gh * gw or d != p * p * channels:
        raise ValueError(f"patches {tuple(patches.shape)} do not fit grid {grid} x {p}x{p}x{channels}")
    x = patches.reshape(b, gh, gw, p, p, channels)  # (B, h, w, p, q, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, q)
    return x.reshape(b, channels, gh * p, gw * p)  # (B, C, H, W)


def patch_stats(patches: Tensor) -> tuple[Tensor, Tensor]:
    """Per-patch mean and unbiased variance over the last axis: (B, N, P) -> 2 x (B, N, 1) (MAE uses ``var``)."""
    return patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)


def normalize_patches(patches: Tensor) -> Tensor:
    """MAE ``norm_pix_loss`` target: each patch standardised by its own mean and variance. (B, N, P) -> (B, N, P)."""
    mean, var = patch_stats(patches)
    return (patches - mean) / (var + NORM_PIX_EPS).sqrt()


def denormalize_patches(pred: Tensor, reference: Tensor) -> Tensor:
    """Undo :func:`normalize_patches` for display: rescale ``pred`` (B, N, P), predicted in per-patch normalised
    units, with the mean and variance of the ``reference`` patches (B, N, P), i.e. the original image's.

    The statistics of a masked patch come from the original image, so the low-frequency content (brightness and
    contrast of each patch) shown this way is not predicted by the model; only the structure within a patch is.
    """
    mean, var = patch_stats(reference)
    return pred * (var + NORM_PIX_EPS).sqrt() + mean

"""MAE: reconstruct the pixels of masked patches from the visible ones.

He, Chen, Xie, Li, Dollár, Girshick. "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022, §3: random
masking of 75 % of the patches (the batch's mask, ``masking.kind: random``, made by sorting per-patch noise), an
encoder that sees only the visible patches (the foundation's ``Tokens.select(ids_keep)`` path), an asymmetric
decoder (:mod:`modalities.image.model.mae_decoder`) with its own mask token and fixed 2-D sin-cos positions,
pixel targets with optional per-patch normalisation (``norm_pix_loss``), and MSE over the masked patches only.

Ref: facebookresearch/mae ``models_mae.py``@efb2a806 (``forward_encoder``, ``forward_decoder``, ``forward_loss``);
spec in masked-image-modeling.md §1.1. Parity with ``transformers.ViTMAEForPreTraining`` is tested through
:mod:`modalities.image.interop.convert_mae`.

Not reproduced: MAE decays the cls and mask tokens (timm ``add_weight_decay`` skips only 1-D parameters, and the
tokens are (1, 1, D)); the optimizer here keeps tokens and position tables out of weight decay for every objective
(:func:`unimim.train.optim.no_decay`, as BEiT's and data2vec's ``no_weight_decay``), a deliberate choice. MAE
initialises every Linear and the patch projection xavier-uniform; here the encoder and decoder
blocks keep the encoder's truncated-normal (std 0.02) init (the decoder's input and output maps are xavier).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from modalities.base import ObjectiveSpec, all_checks, one_mask_per_example, require, vit_objective
from modalities.image.model.adapter import ImageAdapter
from modalities.image.model.mae_decoder import MAEDecoder, MAEDecoderConfig
from modalities.image.model.patches import denormalize_patches, normalize_patches, patchify, unpatchify
from unimim.core.batch import Batch
from unimim.core.collapse import channel_std
from unimim.core.masking import MaskInfo
from unimim.nn.encoder import TransformerEncoder
from unimim.objectives.base import Objective, ObjectiveOutput, embed_visible


@dataclass
class MAEConfig:
    decoder: MAEDecoderConfig = field(default_factory=MAEDecoderConfig)
    norm_pix_loss: bool = True   # targets: each patch standardised by its own mean / variance (released models)


def image_geometry(adapter: ImageAdapter) -> tuple[tuple[int, int], int, int]:
    """(grid (H, W), patch_size, channels) of the image adapter."""
    return tuple(adapter.grid), int(adapter.cfg.patch_size), int(adapter.cfg.in_chans)


def check_mask(mask: Tensor, name: str) -> None:
    if mask.dim() != 2:
        raise ValueError(f"{name} takes one (B, N) mask per image, got {tuple(mask.shape)} (set masking.num_masks: 1)")
    if not bool(mask.any(dim=1).all()):
        raise ValueError(f"{name}: every image needs at least one masked patch (masking.ratio is too small)")


class MAE(Objective):
    """Encoder (adapter + transformer on visible patches) + :class:`MAEDecoder` predicting masked pixels."""

    def __init__(self, adapter: nn.Module, encoder: TransformerEncoder, cfg: MAEConfig) -> None:
        super().__init__(adapter, encoder)
        self.cfg = cfg
        self.grid, self.patch_size, self.channels = image_geometry(adapter)
        self.decoder = MAEDecoder(cfg.decoder, in_dim=encoder.cfg.dim, grid=self.grid,
                                  out_dim=self.patch_size**2 * self.channels,
                                  num_prefix_tokens=adapter.num_prefix_tokens)

    def predict(self, inputs: Tensor, mask: Tensor) -> Tensor:
        """inputs (B, C, S, S), mask (B, N) bool with the same count in every row -> predictions (B, N, p*p*C)
        (in per-patch normalised units when ``norm_pix_loss``)."""
        h = self.encode_visible(inputs, mask)  # (B, P + K, D): the encoder never sees a masked patch
        return self.decoder(h, MaskInfo.from_mask(mask).ids_restore)  # (B, N, p*p*C)

    def encode_visible(self, inputs: Tensor, mask: Tensor) -> Tensor:
        """The encoder on the visible patches only: (B, C, S, S), (B, N) -> (B, P + K, D), prefix tokens first;
        positions are added before the masked patches are dropped, and nothing of theirs reaches it."""
        return self.encoder(embed_visible(self.adapter, self.adapter.local(inputs), mask)).x

    def targets(self, inputs: Tensor) -> Tensor:
        """Pixel targets (B, N, p*p*C), float32, per-patch normalised when ``norm_pix_loss``."""
        target = patchify(inputs.float(), self.patch_size)  # (B, C, S, S) -> (B, N, p*p*C)
        return normalize_patches(target) if self.cfg.norm_pix_loss else target

    def forward(self, batch: Batch) -> ObjectiveOutput:
        inputs, mask = batch.inputs, batch.single_mask("MAE")  # (B, C, S, S), (B, N) bool, True = masked
        check_mask(mask, "MAE")
        pred = self.predict(inputs, mask).float()  # (B, N, P)
        target = self.targets(inputs)  # (B, N, P)
        per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, N)
        weight = mask.to(per_patch.dtype)
        loss = (per_patch * weight).sum() / weight.sum()  # mean over masked patches only
        logs = {"target_std": channel_std(target[mask]), "pred_std": channel_std(pred[mask]),
                "mask_ratio": weight.mean()}  # () each, on the device
        return ObjectiveOutput(loss=loss, logs=logs)

    def reconstruct(self, inputs: Tensor, mask: Tensor) -> Tensor:
        """Reconstructed images (B, C, S, S) in the inputs' (dataset-normalised) units, for display. With
        ``norm_pix_loss`` each predicted patch is rescaled by the original patch's mean / std
        (:func:`modalities.image.model.patches.denormalize_patches`)."""
        pred = self.predict(inputs, mask).float()  # (B, N, P)
        if self.cfg.norm_pix_loss:
            pred = denormalize_patches(pred, patchify(inputs.float(), self.patch_size))
        return unpatchify(pred, self.patch_size, self.grid, self.channels)  # (B, N, P) -> (B, C, S, S)


def _check(cfg: Any) -> None:
    require(cfg.masking.kind == "random", "MAE drops the masked patches and needs the same count in every image: "
                                          f"masking.kind: random (got {cfg.masking.kind!r})")


MAE_SPEC = ObjectiveSpec(
    config=MAEConfig,
    build=vit_objective(MAE),
    modalities=("image",),
    check=all_checks(one_mask_per_example("MAE"), _check),
    tiny=("method.decoder.dim=16", "method.decoder.depth=1", "method.decoder.num_heads=2"),
    logs=frozenset({"target_std", "pred_std", "mask_ratio"}),
)

"""SimMIM: predict the raw pixels of masked regions with a one-layer head, L1 loss on masked pixels.

Xie, Zhang, Cao, Lin, Bao, Yao, Dai, Hu. "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022, §3:
coarse random masking (32-px cells up-sampled to the patch grid, 60 %; ``masking.kind: simmim``), mask tokens
substituted at the encoder input (every token goes through the encoder), a linear prediction head (the reference's
1x1 conv + PixelShuffle: each output token predicts its ``stride x stride`` pixel block), and L1 between the
normalised input image and the reconstruction over masked pixels only, divided by the channel count.

Backbones: the ViT of the image adapter (``method.backbone: vit``; the reference uses BEiT's shared relative position
bias and layer scale 0.1, set in the recipe) or a timm Swin Transformer (``backbone: swin``,
:mod:`modalities.image.model.swin`; the recipe's ``encoder`` section is then unused).

Ref: microsoft/SimMIM ``models/simmim.py``@d3e29bca (``SimMIM.forward``, ``VisionTransformerForSimMIM``,
``SwinTransformerForSimMIM``); spec in masked-image-modeling.md §1.2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from modalities.base import ObjectiveSpec, build_vit, one_mask_per_example
from modalities.image.model.adapter import ImageAdapter
from modalities.image.model.patches import unpatchify
from modalities.image.model.swin import SwinBackbone, SwinConfig
from modalities.image.objectives.mae import check_mask, image_geometry
from unimim.core.batch import Batch
from unimim.core.collapse import channel_std
from unimim.nn.encoder import TransformerEncoder
from unimim.objectives.base import EncoderObjective, ObjectiveOutput, encode_with


@dataclass
class SimMIMConfig:
    backbone: Literal["vit", "swin"] = "vit"
    swin: SwinConfig = field(default_factory=SwinConfig)  # used when backbone: swin


def pixel_mask(mask: Tensor, grid: tuple[int, int], patch_size: int) -> Tensor:
    """(B, N) patch mask -> (B, 1, H*p, W*p) float pixel mask (SimMIM's ``repeat_interleave`` up-sampling)."""
    m = mask.reshape(mask.shape[0], 1, *grid).float()  # (B, N) -> (B, 1, H, W)
    return m.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)  # (B, 1, H*p, W*p)


class SimMIM(EncoderObjective):
    """ViT (image adapter + encoder) or Swin backbone + a linear pixel head; the loss is L1 on masked pixels.

    ``adapter`` is always the image adapter of the recipe (it defines the image and patch geometry); ``encoder`` is
    given for ``backbone: vit`` and ``None`` for ``backbone: swin``, which builds its own backbone from
    ``method.swin``.
    """

    def __init__(self, adapter: ImageAdapter, encoder: TransformerEncoder | None, cfg: SimMIMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid, self.patch_size, self.channels = image_geometry(adapter)
        if cfg.backbone == "swin":
            if encoder is not None:
                raise ValueError("SimMIM on Swin builds its own backbone; pass encoder=None")
            swin = SwinBackbone(cfg.swin, image_size=adapter.cfg.image_size, patch_size=self.patch_size,
                                in_chans=self.channels)
            self.backbone = nn.ModuleDict({"swin": swin})
            self.stride, self.out_grid, width = swin.stride, swin.out_grid, swin.num_features
            self.num_prefix_tokens, self.num_layers = 0, 0
        else:
            if encoder is None:
                raise ValueError("SimMIM on a ViT needs the transformer encoder")
            self.backbone = nn.ModuleDict({"adapter": adapter, "encoder": encoder})
            self.stride, self.out_grid, width = self.patch_size, self.grid, encoder.cfg.dim
            self.num_prefix_tokens, self.num_layers = adapter.num_prefix_tokens, encoder.cfg.depth
        self.head = nn.Linear(width, self.stride**2 * self.channels)  # = 1x1 conv to stride^2 * C channels

    def features(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, C, S, S) [+ (B, N) mask] -> (B, T, F) tokens; prefix tokens first (ViT), none for Swin."""
        if self.cfg.backbone == "swin":
            return self.backbone["swin"](inputs, mask)
        return self.backbone["encoder"](self.backbone["adapter"].embed(inputs, mask=mask)).x

    def encode(self, inputs: Tensor, padding_mask: Tensor | None = None,
               layers: Sequence[int] | None = None, *, mask: Tensor | None = None) -> Tensor:
        if padding_mask is not None:
            raise ValueError("images have no padding; padding_mask must be None")
        if self.cfg.backbone == "swin":
            if layers is not None:
                raise ValueError("probe.layers selects ViT blocks; SimMIM's Swin backbone has stages (leave it unset)")
            return self.features(inputs, mask)
        return encode_with(self.backbone["adapter"], self.backbone["encoder"], inputs, None, layers, mask=mask)

    def reconstruct(self, inputs: Tensor, mask: Tensor) -> Tensor:
        """inputs (B, C, S, S), mask (B, N) -> reconstruction (B, C, S, S) in the inputs' normalised units."""
        h = self.features(inputs, mask)[:, self.num_prefix_tokens:]  # (B, N_out, F)
        pred = self.head(h)  # (B, N_out, stride^2 * C)
        return unpatchify(pred.float(), self.stride, self.out_grid, self.channels)  # -> (B, C, S, S)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        inputs, mask = batch.inputs, batch.single_mask("SimMIM")  # (B, C, S, S), (B, N) bool, True = masked
        check_mask(mask, "SimMIM")
        rec = self.reconstruct(inputs, mask)  # (B, C, S, S)
        m = pixel_mask(mask, self.grid, self.patch_size)  # (B, 1, S, S)
        target = inputs.float()
        l1 = F.l1_loss(rec, target, reduction="none")  # (B, C, S, S)
        loss = (l1 * m).sum() / (m.sum() + 1e-5) / self.channels
        sel = m.expand_as(target).bool().permute(0, 2, 3, 1)  # (B, S, S, C)
        channels_last = (target.permute(0, 2, 3, 1), rec.detach().permute(0, 2, 3, 1))  # (B, S, S, C) each
        logs = {"target_std": channel_std(channels_last[0][sel].reshape(-1, self.channels)),
                "pred_std": channel_std(channels_last[1][sel].reshape(-1, self.channels)),
                "mask_ratio": mask.float().mean()}  # () each, on the device
        return ObjectiveOutput(loss=loss, logs=logs)


def build(cfg: Any, modality: Any) -> SimMIM:
    """ViT: the modality's adapter + the transformer encoder; Swin: its own backbone (the encoder section is not
    used), with the adapter kept for the image geometry only."""
    if cfg.method.backbone == "swin":
        return SimMIM(modality.build_adapter(cfg.adapter, cfg.encoder), None, cfg.method)
    adapter, encoder = build_vit(cfg, modality)
    return SimMIM(adapter, encoder, cfg.method)


SIMMIM_SPEC = ObjectiveSpec(
    config=SimMIMConfig,
    build=build,
    modalities=("image",),
    check=one_mask_per_example("SimMIM"),
    tiny=("masking.mask_patch_size=8", "method.swin.embed_dim=16", "method.swin.depths=[1,1]",
          "method.swin.num_heads=[2,2]", "method.swin.window_size=2"),
    logs=frozenset({"target_std", "pred_std", "mask_ratio"}),
)

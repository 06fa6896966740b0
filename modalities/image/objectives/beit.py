"""BEiT stage 2: masked image modeling against a frozen visual tokenizer's codes.

Bao, Dong, Piao, Wei. "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022, §2.2-2.3: block-wise masking of
~40 % of the patches (the data side: ``masking.kind: block``, min 16 patches per block), masked patch embeddings
replaced by a learned mask token at the encoder input, a linear softmax classifier (``lm_head``) over the visual
vocabulary at the masked positions, cross-entropy against the tokenizer's codes of the uncorrupted image. BEiT's ViT
style (shared relative position bias, layer scale 0.1, q/v-only bias) is set through the adapter / encoder options.
Ref: microsoft/unilm beit/modeling_pretrain.py and engine_for_pretraining.py@768a3c87
(../shared/reference/masked-image-modeling.md §1.3, §6).

The tokenizer (stage 1) is this project's own dVAE (:mod:`modalities.image.objectives.tokenizer.dvae`), trained with
``objective: dvae``; it is loaded from ``method.tokenizer`` (a tokenizer file or the dVAE's run directory), frozen, and
kept outside the module tree, so neither the optimizer nor the checkpoint holds it. When the tokenizer's image size
differs from the ViT's (BEiT ViT-B/16: 224 px ViT, 112 px dVAE), it sees a bilinear-resized copy of the same crop
(BEiT uses a separate lanczos-resized copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modalities.base import ObjectiveSpec, all_checks, one_mask_per_example, require, vit_objective
from modalities.image.objectives.tokenizer.dvae import DiscreteVAE, DVAEConfig, load_tokenizer
from unimim.core.batch import Batch
from unimim.nn.encoder import TransformerEncoder
from unimim.objectives.base import Objective, ObjectiveOutput


@dataclass
class BEiTConfig:
    tokenizer: str = "runs/dvae_fmnist"  # dVAE tokenizer file or dVAE pretraining run directory


class BEiT(Objective):
    """Student ViT (adapter + encoder) + ``head`` Linear(D, K); targets from the frozen tokenizer."""

    def __init__(self, adapter: nn.Module, encoder: TransformerEncoder, cfg: BEiTConfig,
                 tokenizer: DiscreteVAE | None = None) -> None:
        super().__init__(adapter, encoder)
        if adapter.num_prefix_tokens != 1:
            raise ValueError("BEiT needs an adapter with a cls token (adapter.cls_token: true)")
        self.cfg = cfg
        tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
        if tuple(tok.grid) != tuple(adapter.grid):
            raise ValueError(f"tokenizer grid {tuple(tok.grid)} differs from the ViT patch grid {tuple(adapter.grid)}: "
                             "BEiT predicts one code per patch")
        if tok.cfg.in_chans != adapter.cfg.in_chans:
            raise ValueError(f"tokenizer in_chans={tok.cfg.in_chans} differs from adapter.in_chans")
        self.tokenizer = [tok]  # a list keeps it out of the module tree (not trained, not checkpointed)
        self.head = nn.Linear(encoder.cfg.dim, tok.cfg.codebook_size)  # BEiT lm_head
        nn.init.trunc_normal_(self.head.weight, std=encoder.cfg.init_std)
        nn.init.zeros_(self.head.bias)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        super()._apply(fn, recurse)
        self.tokenizer[0]._apply(fn, recurse)
        self.tokenizer[0].float()  # the tokenizer stays fp32 whatever the student's dtype
        return self

    @torch.no_grad()
    def tokenize(self, images: Tensor) -> Tensor:
        """(B, C, S, S) -> (B, N) long codes of the uncorrupted images (fp32, no autocast)."""
        tok = self.tokenizer[0].eval()
        size = tok.cfg.image_size
        with torch.autocast(images.device.type, enabled=False):
            x = images.float()
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            return tok.codes(x)

    def logits(self, inputs: Tensor, mask: Tensor) -> Tensor:
        """Head logits at every patch: inputs (B, C, S, S), mask (B, N) -> (B, N, K)."""
        h = self.encoder(self.adapter.embed(inputs, mask=mask)).x  # (B, 1 + N, D), final norm applied
        return self.head(h[:, 1:])  # (B, N, D) -> (B, N, K)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        inputs, mask = batch.inputs, batch.single_mask("BEiT")  # (B, C, S, S), (B, N) bool, True = masked
        labels = self.tokenize(inputs)  # (B, N)
        h = self.encoder(self.adapter.embed(inputs, mask=mask)).x[:, 1:]  # (B, N, D)
        logits = self.head(h[mask])  # (B, N, D) -> (M, D) -> (M, K): the classifier runs at masked positions only
        target = labels[mask]  # (B, N) -> (M,)
        loss = F.cross_entropy(logits.float(), target)
        with torch.no_grad():
            acc = (logits.argmax(-1) == target).float().mean()
            k = self.head.out_features
            used = torch.bincount(labels.flatten(), minlength=k).gt(0).float().mean()
        logs = {"mlm_acc": acc, "mask_ratio": mask.float().mean(), "target_codes_used": used}  # () on the device
        return ObjectiveOutput(loss=loss, logs=logs)


def _check(cfg: Any) -> None:
    require(cfg.adapter.cls_token, "BEiT needs an adapter with a cls token (adapter.cls_token: true)")


def tiny_tokenizer(directory: Path, codebook_size: int = 16) -> Path:
    """A randomly initialised (seeded) dVAE tokenizer for the tiny image settings (16 px, 1 channel, 4 x 4 codes)."""
    cfg = DVAEConfig(image_size=16, in_chans=1, codebook_size=codebook_size, embed_dim=8, hidden=8, num_layers=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same tokenizer on every call
        model = DiscreteVAE(cfg)
    return model.save(Path(directory) / "tiny_tokenizer.safetensors")


BEIT_SPEC = ObjectiveSpec(
    config=BEiTConfig,
    build=vit_objective(BEiT),
    modalities=("image",),
    check=all_checks(one_mask_per_example("BEiT"), _check),
    tiny=("train.accumulate=1",),
    tiny_data=lambda directory: [f"method.tokenizer={tiny_tokenizer(directory)}"],
    logs=frozenset({"mlm_acc", "mask_ratio", "target_codes_used"}),
)

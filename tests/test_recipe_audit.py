"""Recipe audit: the key hyper-parameters of every paper-scale recipe against the reference value and where it comes
from. A change to a paper-scale recipe that departs from the reference must change this table, with its reason.

Each row is ``(key, reference value, source)``, or ``(key, reference value, source, recipe value, reason)`` for a
deliberate departure. ``key`` is a dotted path into the resolved config, or a ``(name, function of the config)``
pair for a derived value (the peak lr at the reference's batch). Sources: D2V = ../shared/reference/data2vec.md,
MIM = ../shared/reference/masked-image-modeling.md (each cites the reference file it was read from).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from unimim.app.experiment import load_recipe
from unimim.train.optim import peak_lr

ROOT = Path(__file__).resolve().parents[1]
D2V, MIM = "data2vec.md", "masked-image-modeling.md"
FAIRSEQ_V2 = "fairseq examples/data2vec/config/v2"


def lr_at(batch: int) -> tuple[str, Callable[[Any], float]]:
    return (f"peak lr at batch {batch}", lambda cfg: peak_lr(cfg.optim, batch))


AUDIT: dict[str, list[tuple]] = {
    "image/data2vec_vitb16_in1k.yaml": [
        ("encoder.depth", 12, f"{D2V} §2 vision (ViT-B/16)"),
        ("encoder.qkv_bias", "qv", f"{D2V} §2 vision: qkv with q/v bias only"),
        ("encoder.layer_scale_init", 1e-4, f"{D2V} §2 vision: layer-scale 1e-4 (B)"),
        ("encoder.drop_path", 0.25, f"{D2V} §2 vision regularisation"),
        ("encoder.attn_dropout", 0.05, f"{D2V} §2 vision regularisation"),
        ("adapter.positions", "relative", f"{D2V} §2 vision: shared relative position bias"),
        ("method.top_k", 6, f"{D2V} §2 vision K"),
        ("method.target_source", "block", f"{D2V} §2 vision: block output"),
        ("method.layer_norm", "layer", f"{D2V} §2 vision per-layer norm"),
        ("method.final_norm", "layer", f"{D2V} §2 vision final norm"),
        ("method.loss_beta", 2.0, f"{D2V} §2 vision loss"),
        ("method.loss_scale", "inv_dim", f"{D2V} §2 vision: reduction='mean' over all elements"),
        ("method.ema.decay", 0.9998, f"{D2V} §2 vision EMA"),
        ("method.ema.end_decay", 0.9998, f"{D2V} §2 vision EMA (constant)"),
        ("masking.kind", "block", f"{D2V} §5.2"),
        ("masking.ratio", pytest.approx(120 / 196, abs=1e-6), f"{D2V} §5.2: 120 of 196 patches"),
        ("masking.min_block", 16, f"{D2V} §5.2"),
        ("masking.min_aspect", 0.3, f"{D2V} §5.2"),
        ("data.color_jitter", 0.4, f"{D2V} §2 vision data aug: ColorJitter(0.4)"),
        ("data.crop_scale", (0.08, 1.0), f"{MIM} §1.3 (the BEiT transforms data2vec_vision forks)"),
        ("optim.weight_decay", 0.05, f"{D2V} §2 vision optimiser"),
        ("optim.clip_grad", 3.0, f"{D2V} §2 vision optimiser"),
        ("optim.min_lr", 1e-5, f"{D2V} §2 vision: cosine to 1e-5"),
        (*lr_at(2048), pytest.approx(2e-3), f"{D2V} §2 vision: 2e-3 at bs 2048"),
    ],
    "image/data2vec2_vitb16_in1k.yaml": [
        ("encoder.norm_first", False, f"{D2V} §4.2 image: post-LN"),
        ("encoder.depth", 12, f"{D2V} §4.2 image: depth 10 + prenet 2",
         12, "the 2 prenet blocks are the first 2 of 12 ordinary blocks (Data2Vec2 docstring: equivalent here)"),
        ("adapter.positions", "sincos", f"{D2V} §4.2 image misc"),
        ("adapter.input_norm", True, f"{FAIRSEQ_V2} image modality encoder: LayerNorm before the post-LN blocks"),
        ("adapter.cls_init_std", 1.0, f"{D2V} §4.2 image misc: cls token init normal"),
        ("method.top_k", 10, f"{D2V} §4.2 image K"),
        ("method.target_source", "ffn", f"{D2V} §4.1 (6)"),
        ("method.layer_norm", "instance", f"{D2V} §4.2 image target norm"),
        ("method.final_norm", "layer", f"{D2V} §4.2 image target norm"),
        ("method.loss_beta", 0.0, f"{D2V} §4.2 image loss: L2"),
        ("method.loss_scale", "inv_sqrt_dim", f"{D2V} §4.2 image loss: x 1/sqrt(D)"),
        ("method.cls_loss_weight", 0.01, f"{D2V} §4.2 image: CLS 0.01",
         2.56, "the reference's 0.01 multiplies a sum over 16 images x 16 masks per GPU (Data2Vec docstring)"),
        ("method.ema.decay", 0.9998, f"{D2V} §4.2 image EMA"),
        ("method.ema.end_decay", 0.99999, f"{D2V} §4.2 image EMA"),
        ("method.ema.anneal_steps", 100000, f"{D2V} §4.2 image EMA"),
        ("method.mask_noise_std", 0.01, f"{D2V} §4.1 (2)"),
        ("method.decoder.dim", 768, f"{D2V} §4.2 image decoder"),
        ("method.decoder.layers", 6, f"{D2V} §4.2 image decoder"),
        ("method.decoder.kernel", 3, f"{D2V} §4.2 image decoder"),
        ("method.decoder.groups", 16, f"{D2V} §4.2 image decoder"),
        ("masking.kind", "inverse_block", f"{D2V} §5.3"),
        ("masking.ratio", 0.8, f"{D2V} §4.2 image mask"),
        ("masking.adjust", 0.07, f"{D2V} §4.2 image mask"),
        ("masking.block_size", 3, f"{D2V} §4.2 image mask"),
        ("masking.num_masks", 16, f"{D2V} §4.2 image batch (x16 masks)"),
        ("data.crop_scale", (0.2, 1.0), "fairseq examples/data2vec/data/mae_image_dataset.py RandomResizedCrop"),
        ("optim.betas", (0.9, 0.95), f"{D2V} §4.2 image optimiser"),
        ("optim.weight_decay", 0.05, f"{D2V} §4.2 image optimiser"),
        ("optim.lr", 1e-3, f"{D2V} §4.2 image optimiser"),
        ("optim.warmup_steps", 50040, f"{D2V} §4.2 image optimiser"),
        ("optim.clip_grad", 4.0, f"{D2V} §4.2 image optimiser"),
        ("train.steps", 375300, f"{D2V} §4.2 image: 375 300 updates"),
    ],
    "image/mae_vitb16_in1k.yaml": [
        ("adapter.positions", "sincos", f"{MIM} §1.1 encoder: fixed 2-D sin-cos"),
        ("masking.kind", "random", f"{MIM} §1.1 masking"),
        ("masking.ratio", 0.75, f"{MIM} §1.1 masking"),
        ("method.norm_pix_loss", True, f"{MIM} §1.1 target (released checkpoints)"),
        ("method.decoder.dim", 512, f"{MIM} §1.1 decoder"),
        ("method.decoder.depth", 8, f"{MIM} §1.1 decoder"),
        ("method.decoder.num_heads", 16, f"{MIM} §1.1 decoder"),
        ("data.crop_scale", (0.2, 1.0), f"{MIM} §1.1 augmentation"),
        ("optim.betas", (0.9, 0.95), f"{MIM} §1.1 optimisation"),
        ("optim.weight_decay", 0.05, f"{MIM} §1.1 optimisation"),
        ("optim.min_lr", 0.0, f"{MIM} §1.1 optimisation"),
        ("optim.clip_grad", None, f"{MIM} §1.1: no grad clipping"),
        (*lr_at(4096), pytest.approx(2.4e-3), f"{MIM} §1.1: 1.5e-4 x 4096 / 256"),
    ],
    "image/simmim_vitb16_in1k.yaml": [
        ("encoder.layer_scale_init", 0.1, f"{MIM} §1.2 encoder: INIT_VALUES 0.1"),
        ("adapter.positions", "relative", f"{MIM} §1.2 encoder: USE_SHARED_RPB"),
        ("masking.kind", "simmim", f"{MIM} §1.2 mask generator"),
        ("masking.ratio", 0.6, f"{MIM} §1.2 mask generator"),
        ("masking.mask_patch_size", 32, f"{MIM} §1.2 mask generator"),
        ("encoder.drop_path", 0.1, f"{MIM} §1.2 ViT-B 800 ep"),
        ("data.crop_scale", (0.67, 1.0), f"{MIM} §1.2 augmentation"),
        ("optim.weight_decay", 0.05, f"{MIM} §1.2 optimisation"),
        ("optim.clip_grad", 5.0, f"{MIM} §1.2 optimisation"),
        (*lr_at(512), pytest.approx(1e-4), f"{MIM} §1.2 ViT-B 800 ep: 1e-4 per 512 (its multistep decay at "
         "epoch 700 is the one cosine schedule here)"),
    ],
    "image/simmim_swinb_in1k.yaml": [
        ("adapter.image_size", 192, f"{MIM} §1.2 Swin-B 100 ep"),
        ("method.swin.window_size", 6, f"{MIM} §1.2 Swin-B 100 ep"),
        ("masking.ratio", 0.6, f"{MIM} §1.2 mask generator"),
        ("masking.mask_patch_size", 32, f"{MIM} §1.2 mask generator"),
        ("optim.min_lr", 1e-5, f"{MIM} §1.2 Swin-B 100 ep: cosine to 1e-5"),
        ("optim.clip_grad", 5.0, f"{MIM} §1.2 optimisation"),
        (*lr_at(2048), pytest.approx(8e-4), f"{MIM} §1.2 Swin-B 100 ep: 8e-4 at 2048"),
    ],
    "image/beit_vitb16_in1k.yaml": [
        ("encoder.qkv_bias", "qv", f"{MIM} §1.3 model"),
        ("encoder.layer_scale_init", 0.1, f"{MIM} §1.3 model: layer scale 0.1 (base)"),
        ("encoder.drop_path", 0.1, f"{MIM} §1.3 model"),
        ("adapter.positions", "relative", f"{MIM} §1.3 model: shared relative position bias"),
        ("masking.kind", "block", f"{MIM} §1.3 block-wise masking"),
        ("masking.ratio", pytest.approx(75 / 196, abs=1e-6), f"{MIM} §1.3: --num_mask_patches 75"),
        ("masking.min_block", 16, f"{MIM} §1.3: --min_mask_patches_per_block 16"),
        ("data.color_jitter", 0.4, f"{MIM} §1.3 data: ColorJitter(0.4, 0.4, 0.4)"),
        ("data.crop_scale", (0.08, 1.0), f"{MIM} §1.3 data"),
        ("optim.weight_decay", 0.05, f"{MIM} §1.3 optimisation"),
        ("optim.clip_grad", 3.0, f"{MIM} §1.3 optimisation"),
        ("optim.min_lr", 1e-5, f"{MIM} §1.3 optimisation"),
        (*lr_at(2048), pytest.approx(1.5e-3), f"{MIM} §1.3: lr 1.5e-3 at batch 2048"),
    ],
    "image/dvae_in1k.yaml": [
        ("method.model.codebook_size", 8192, f"{MIM} §1.3 dVAE: vocab 8192"),
        ("adapter.image_size", 112, f"{MIM} §1.3 target: 112 x 112 second view"),
        ("adapter.patch_size", 8, f"{MIM} §1.3: the dVAE downsamples x 8 (14 x 14 codes)"),
    ],
    "image/ibot_vits16_in1k.yaml": [
        ("method.student_temp", 0.1, f"{MIM} §1.5 loss"),
        ("method.teacher_temp", 0.07, f"{MIM} §1.5 ViT-S recipe"),
        ("method.warmup_teacher_temp", 0.04, f"{MIM} §1.5 loss"),
        ("method.center_momentum", 0.9, f"{MIM} §1.5 loss"),
        ("method.head.out_dim", 8192, f"{MIM} §1.5 head"),
        ("method.head.bottleneck", 256, f"{MIM} §1.5 head"),
        ("method.head.norm_last_layer", False, f"{MIM} §1.5 ViT-S recipe"),
        ("method.ema.decay", 0.996, f"{MIM} §1.5 EMA: cosine 0.996 -> 1"),
        ("method.ema.end_decay", 1.0, f"{MIM} §1.5 EMA"),
        ("method.ema.schedule", "cosine", f"{MIM} §1.5 EMA"),
        ("data.views.local_views", 10, f"{MIM} §1.5 ViT-S recipe"),
        ("data.views.global_crop_scale", (0.25, 1.0), f"{MIM} §1.5 ViT-S recipe"),
        ("data.views.local_crop_scale", (0.05, 0.25), f"{MIM} §1.5 ViT-S recipe"),
        ("data.views.mask_prob", 0.5, f"{MIM} §1.5 masking"),
        ("data.views.mask_ratio_range", (0.1, 0.5), f"{MIM} §1.5 masking"),
        ("optim.weight_decay", 0.04, f"{MIM} §1.5: wd cosine 0.04 -> 0.4"),
        ("optim.weight_decay_end", 0.4, f"{MIM} §1.5: wd cosine 0.04 -> 0.4"),
        ("optim.clip_grad", 3.0, f"{MIM} §1.5: grad clip 3.0"),
        ("optim.clip_mode", "per_param", f"{MIM} §1.5: per-parameter norm clipping"),
        ("optim.min_lr", 1e-6, f"{MIM} §1.5: cosine to 1e-6"),
        ("encoder.drop_path", 0.1, f"{MIM} §1.5"),
        (*lr_at(1024), pytest.approx(2e-3), f"{MIM} §1.5: 0.0005 x batch / 256"),
    ],
    "image/ibot_vitb16_in1k.yaml": [
        ("method.student_temp", 0.1, f"{MIM} §1.5 loss"),
        ("method.teacher_temp", 0.07, f"{MIM} §1.5"),
        ("method.head.out_dim", 8192, f"{MIM} §1.5 head"),
        ("method.head.norm_last_layer", False, f"{MIM} §1.5 ViT-S recipe",
         True, "not verified for ViT-B; the DINO default (recipe header)"),
        ("method.ema.decay", 0.996, f"{MIM} §1.5 EMA"),
        ("optim.weight_decay", 0.04, f"{MIM} §1.5: wd cosine 0.04 -> 0.4"),
        ("optim.weight_decay_end", 0.4, f"{MIM} §1.5: wd cosine 0.04 -> 0.4"),
        ("optim.clip_grad", 3.0, f"{MIM} §1.5: grad clip 3.0"),
        ("optim.clip_mode", "per_param", f"{MIM} §1.5: per-parameter norm clipping"),
        (*lr_at(1024), pytest.approx(2e-3), f"{MIM} §1.5: 0.0005 x batch / 256"),
    ],
    "speech/data2vec_base_librispeech.yaml": [
        ("encoder.act_dropout", 0.0, "fairseq activation_dropout (default 0, not set by the data2vec configs)"),
        ("encoder.norm_first", False, f"{D2V} §2 speech: post-LN"),
        ("encoder.dropout", 0.1, f"{D2V} §2 speech regularisation"),
        ("adapter.conv_layers", [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2, f"{D2V} §2 speech encoder"),
        ("adapter.pos_conv_depth", 5, f"{D2V} §2 speech: pos_conv_depth 5"),
        ("adapter.pos_conv_kernel", 19, f"{D2V} §2 speech: conv_pos 95 / 5"),
        ("adapter.pos_conv_groups", 16, f"{D2V} §2 speech"),
        ("masking.kind", "span", f"{D2V} §5.1"),
        ("masking.prob", 0.65, f"{D2V} §2 speech masking"),
        ("masking.length", 10, f"{D2V} §2 speech masking"),
        ("method.top_k", 8, f"{D2V} §2 speech K"),
        ("method.target_source", "ffn", f"{D2V} §2 speech"),
        ("method.layer_norm", "instance", f"{D2V} §2 speech"),
        ("method.final_norm", "none", f"{D2V} §2 speech"),
        ("method.loss_beta", 0.0, f"{D2V} §2 speech: L2"),
        ("method.loss_scale", "inv_sqrt_dim", f"{D2V} §2 speech: x 1/sqrt(D)"),
        ("method.ema.decay", 0.999, f"{D2V} §2 speech EMA"),
        ("method.ema.end_decay", 0.9999, f"{D2V} §2 speech EMA"),
        ("method.ema.anneal_steps", 30000, f"{D2V} §2 speech EMA"),
        ("method.min_target_std", 0.1, f"{D2V} §2 speech: target_var < 0.1 (compute_var returns a std)"),
        ("method.min_pred_std", 0.01, f"{D2V} §2 speech: pred_var < 0.01 (a std too)"),
        ("method.collapse_after", 5000, f"{D2V} §2 speech: after 5 k updates"),
        ("optim.lr", 5e-4, f"{D2V} §2 speech"),
        ("optim.betas", (0.9, 0.98), f"{D2V} §2 speech"),
        ("optim.eps", 1e-6, f"{D2V} §2 speech"),
        ("optim.weight_decay", 0.01, f"{D2V} §2 speech"),
        ("train.steps", 400000, f"{D2V} §2 speech updates"),
    ],
    "text/data2vec_text_base.yaml": [
        ("encoder.act_dropout", 0.0, "fairseq activation_dropout (default 0, not set by the data2vec configs)"),
        ("encoder.norm_first", False, f"{D2V} §2 text: post-LN"),
        ("encoder.dropout", 0.1, f"{D2V} §2 text"),
        ("encoder.attn_dropout", 0.1, f"{D2V} §2 text"),
        ("adapter.max_positions", 512, f"{D2V} §2 text: tokens_per_sample 512"),
        ("masking.prob", 0.35, f"{D2V} §2 text shipped config"),
        ("masking.span_length", 4, f"{D2V} §2 text shipped config"),
        ("masking.random_token_prob", 0.0, f"{D2V} §2 text shipped config"),
        ("masking.leave_unmasked_prob", 0.0, f"{D2V} §2 text shipped config"),
        ("method.top_k", 10, f"{D2V} §2 text K"),
        ("method.target_source", "ffn", f"{D2V} §2 text"),
        ("method.layer_norm", "layer", f"{D2V} §2 text"),
        ("method.loss_beta", 4.0, f"{D2V} §2 text"),
        ("method.loss_scale", 1.0, f"{D2V} §2 text"),
        ("method.head_layers", 2, f"{D2V} §2 text head"),
        ("method.ema.anneal_steps", 300000, f"{D2V} §2 text EMA"),
        ("optim.lr", 2e-4, f"{D2V} §2 text"),
        ("optim.warmup_steps", 10000, f"{D2V} §2 text"),
        ("optim.clip_grad", 5.0, f"{D2V} §2 text"),
        ("train.steps", 1000000, f"{D2V} §2 text"),
    ],
    "text/data2vec2_text_base.yaml": [
        ("encoder.act_dropout", 0.0, "fairseq activation_dropout (default 0, not set by the data2vec configs)"),
        ("masking.kind", "random", f"{D2V} §5.4 v2"),
        ("masking.prob", 0.48, f"{D2V} §4.2 text mask"),
        ("masking.num_masks", 8, f"{FAIRSEQ_V2}/base_text_only_task.yaml clone_batch"),
        ("method.top_k", 12, f"{D2V} §4.2 text K"),
        ("method.layer_norm", "instance", f"{D2V} §4.2 text"),
        ("method.loss_beta", 0.0, f"{D2V} §4.2 text"),
        ("method.loss_scale", 1.0, f"{D2V} §4.2 text: loss_scale 1"),
        ("method.decoder.dim", 768, f"{D2V} §4.2 text decoder"),
        ("method.decoder.layers", 5, f"{D2V} §4.2 text decoder"),
        ("method.decoder.kernel", 9, f"{D2V} §4.2 text decoder"),
        ("method.decoder.groups", 1, f"{D2V} §4.2 text decoder"),
        ("method.decoder.residual", False, f"{D2V} §4.2 text decoder: no residual"),
        ("method.decoder.projection_layers", 2, f"{D2V} §4.2 text decoder: 2-layer projection"),
        ("method.decoder.projection_ratio", 2.0, f"{D2V} §4.2 text decoder: x2 ratio"),
        ("method.decoder.input_dropout", 0.1, f"{FAIRSEQ_V2}/base_text_only_task.yaml decoder.input_dropout"),
        ("method.ema.decay", 0.9999, f"{D2V} §4.2 text EMA"),
        ("method.ema.end_decay", 0.99999, f"{D2V} §4.2 text EMA"),
        ("optim.lr", 2e-4, f"{D2V} §4.2 text"),
        ("optim.warmup_steps", 4000, f"{D2V} §4.2 text"),
        ("optim.clip_grad", 1.0, f"{D2V} §4.2 text"),
    ],
}


def resolve(cfg: Any, key: str | Callable[[Any], Any]) -> Any:
    if callable(key):
        return key(cfg)
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    if isinstance(value, list):
        value = [tuple(v) if isinstance(v, list) else v for v in value]
    return value


def rows():
    for recipe, table in AUDIT.items():
        for row in table:
            if isinstance(row[0], str) and not callable(row[1]):
                yield pytest.param(recipe, row[0], *row[1:], id=f"{recipe}:{row[0]}")
            else:  # a derived value: (name, function, reference, source, ...)
                yield pytest.param(recipe, row[1], *row[2:], id=f"{recipe}:{row[0]}")


@pytest.mark.parametrize(("recipe", "key", "reference", "source", "value", "reason"),
                         [p if len(p.values) == 6 else pytest.param(*p.values, None, None, id=p.id)
                          for p in rows()])
def test_paper_recipe_matches_the_reference(recipe, key, reference, source, value, reason):
    cfg = load_recipe(ROOT / "recipes" / recipe)
    actual = resolve(cfg, key)
    if value is None and reason is None:
        assert actual == reference, f"{recipe}: {key} = {actual!r}, the reference has {reference!r} ({source})"
    else:  # a deliberate departure: the recipe keeps the value the table names, for the reason it gives
        assert reason, f"{recipe}: {key} departs from the reference without a reason"
        assert actual == value, f"{recipe}: {key} = {actual!r}; the audit table records {value!r} ({reason})"


def test_every_paper_scale_recipe_is_audited():
    recipes = {str(p.relative_to(ROOT / "recipes")) for d in ("image", "speech", "text")
               for p in (ROOT / "recipes" / d).glob("*.yaml")
               if not p.stem.endswith("_cpu") and not p.stem.startswith("finetune_")}
    assert recipes == set(AUDIT), f"not audited: {sorted(recipes - set(AUDIT))}; gone: {sorted(set(AUDIT) - recipes)}"

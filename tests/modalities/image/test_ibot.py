"""iBOT: multi-view examples and masks, the loss against a per-image loop, centring, EMA of backbone + head,
last-layer freezing, local crops and the entropy floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modalities.image.data.dataset import ImageDataConfig
from modalities.image.data.source import build_pretrain_source
from modalities.image.data.views import ViewMasker, ViewsConfig
from modalities.image.masking import ImageMaskConfig
from modalities.image.model.adapter import ImageAdapter, ImageAdapterConfig
from modalities.image.objectives.ibot import IBOT, IBOTConfig, teacher_temp_at
from modalities.image.objectives.ibot_head import HeadConfig
from unimim.core.batch import Batch, Views
from unimim.core.collapse import CollapseError
from unimim.core.ema import EMAConfig
from unimim.nn.encoder import EncoderConfig, TransformerEncoder

HEAD = HeadConfig(hidden=32, bottleneck=16, out_dim=64)


def _ibot(positions="learned", **kw) -> IBOT:
    torch.manual_seed(0)
    acfg = ImageAdapterConfig(image_size=16, patch_size=4, in_chans=1, positions=positions)
    cfg = IBOTConfig(head=kw.pop("head", HEAD), **kw)
    return IBOT(ImageAdapter(acfg, dim=32, num_heads=2), TransformerEncoder(EncoderConfig(dim=32, depth=2,
                                                                                       num_heads=2)), cfg)


def _batch(b=3, v=2, local=0, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views, mask = torch.randn(b, v, 1, 16, 16, generator=g), torch.rand(b, v, 16, generator=g) < 0.4
    mask[0, 0] = False  # an unmasked view
    loc = torch.randn(b, local, 1, 8, 8, generator=g) if local else None
    return Batch(inputs=None, views=Views(global_=views, mask=mask, local=loc))


def test_view_masker_ratio_range_and_unmasked_views():
    cfg = ViewsConfig(enabled=True, mask_prob=0.5, mask_ratio_range=(0.1, 0.5))
    masker = ViewMasker((7, 7), cfg, min_block=4, max_block=None, min_aspect=0.3)
    rng = np.random.default_rng(0)
    counts = np.array([masker(rng).sum() for _ in range(600)])
    assert 0.43 < (counts == 0).mean() < 0.57  # about half of the views stay unmasked
    masked = counts[counts > 0]
    assert masked.max() <= round(0.5 * 49) and masked.min() >= 1
    assert 0.2 * 49 < masked.mean() < 0.35 * 49  # ratio ~ U(0.1, 0.5): mean 0.3 (block masks may fall short)
    none = ViewMasker((7, 7), ViewsConfig(mask_prob=0.0), min_block=4, max_block=None, min_aspect=0.3)
    assert not none(rng).any()


def test_multi_view_source_shapes():
    data = ImageDataConfig(source="synthetic", image_size=16, synthetic_size=8, mean=(0.5,), std=(0.25,),
                           views=ViewsConfig(enabled=True, global_views=2, local_views=3, local_size=8,
                                             color_jitter=0.4))
    source = build_pretrain_source(data, ImageMaskConfig(kind="block", min_block=2),
                                   ImageAdapterConfig(image_size=16, patch_size=4, in_chans=1))
    ex = source.example(0, np.random.default_rng(0))
    assert ex["views"].shape == (2, 1, 16, 16) and ex["view_mask"].shape == (2, 16)
    assert ex["view_mask"].dtype == torch.bool
    assert ex["local"].shape == (3, 1, 8, 8) and ex["skipped"] == 0
    assert not torch.equal(ex["views"][0], ex["views"][1])  # two different random views
    batch = source.collate([ex, source.example(1, np.random.default_rng(1))])
    assert batch.views.global_.shape == (2, 2, 1, 16, 16) and batch.views.local.shape == (2, 3, 1, 8, 8)
    with pytest.raises(ValueError, match="block masks"):
        build_pretrain_source(data, ImageMaskConfig(kind="random"), ImageAdapterConfig(image_size=16, patch_size=4,
                                                                                        in_chans=1))


def test_teacher_temperature_warmup_hand_values():
    cfg = IBOTConfig(warmup_teacher_temp=0.04, teacher_temp=0.07, teacher_temp_warmup_steps=30)
    assert teacher_temp_at(cfg, 0) == pytest.approx(0.04)
    assert teacher_temp_at(cfg, 15) == pytest.approx(0.055)
    assert teacher_temp_at(cfg, 30) == teacher_temp_at(cfg, 999) == pytest.approx(0.07)


def test_loss_matches_a_per_image_loop():
    model = _ibot()
    with torch.no_grad():  # a non-zero centre, so that centring is part of what is checked
        model.center.normal_()
        model.center_patch.normal_()
    model.eval()  # no centre update, no drop path
    batch = _batch(local=2)
    out = model(batch)
    assert float(out.loss.detach()) == pytest.approx(_loss_by_loop(model, batch), rel=1e-4)


@torch.no_grad()
def _loss_by_loop(model: IBOT, batch: Batch) -> float:
    """The iBOT loss recomputed one image and one view pair at a time (teacher temperature 0.04 at step 0)."""
    tt, st, v = 0.04, 0.1, 2
    t_mod, c, cp = model.teacher.module, model.center[0], model.center_patch[0, 0]
    total_cls, n_cls, total_patch = 0.0, 0, 0.0
    for b in range(3):
        teach, stud = [], []
        for i in range(v):
            x, m = batch.views.global_[b, i : i + 1], batch.views.mask[b, i : i + 1]
            teach.append(t_mod["head"](t_mod["backbone"]["encoder"](t_mod["backbone"]["adapter"].embed(x)).x)[0])
            stud.append(model.head(model.encoder(model.adapter.embed(x, mask=m)).x)[0])
        locs = [model.head(model.encoder(model.adapter.embed(batch.views.local[b, j : j + 1])).x)[0, 0]
                for j in range(2)]
        s_cls = [s[0] for s in stud] + locs
        for q in range(v):
            pt = torch.softmax((teach[q][0] - c) / tt, -1)
            for w, sc in enumerate(s_cls):
                if w != q:
                    total_cls += float(-(pt * torch.log_softmax(sc / st, -1)).sum())
                    n_cls += 1
            m = batch.views.mask[b, q]
            per_tok = [float(-(torch.softmax((teach[q][1 + n] - cp) / tt, -1)
                               * torch.log_softmax(stud[q][1 + n] / st, -1)).sum()) for n in range(16) if m[n]]
            total_patch += sum(per_tok) / max(len(per_tok), 1)
    return total_cls / n_cls + total_patch / (3 * v)


def test_centres_follow_the_teacher_batch_mean():
    model = _ibot(center_momentum=0.9)
    batch = _batch()
    x = batch.views.global_.transpose(0, 1).flatten(0, 1)
    t = model.teacher_scores(x)
    model.train()
    model(batch)
    assert torch.allclose(model.center, 0.1 * t[:, 0].mean(0, keepdim=True), atol=1e-6)
    assert torch.allclose(model.center_patch, 0.1 * t[:, 1:].mean((0, 1)).view(1, 1, -1), atol=1e-6)


def test_teacher_is_an_ema_of_backbone_and_head():
    model = _ibot(ema=EMAConfig(decay=0.9, end_decay=1.0, anneal_steps=10, schedule="cosine"))
    names = {n for n, _ in model.teacher.module.named_parameters()}
    assert "head.weight_v" in names and "backbone.encoder.blocks.0.attn.qkv.weight" in names
    t0 = model.teacher.module["head"].weight_v.clone()
    with torch.no_grad():
        model.head.weight_v.add_(1.0)
        model.backbone["encoder"].norm.bias.add_(1.0)
    assert model.update_teacher(0)["ema_decay"] == pytest.approx(0.9)
    assert torch.allclose(model.teacher.module["head"].weight_v, 0.9 * t0 + 0.1 * model.head.weight_v)
    assert torch.allclose(model.teacher.module["backbone"]["encoder"].norm.bias, torch.full((32,), 0.1))
    assert model.update_teacher(10)["ema_decay"] == pytest.approx(1.0)  # cosine to 1


def test_last_layer_is_frozen_for_the_first_steps():
    model = _ibot(freeze_last_layer_steps=2)
    model.train()
    model(_batch()).loss.backward()
    assert model.head.weight_v.grad is None and model.head.mlp[0].weight.grad is not None
    model.zero_grad()
    model.update_teacher(2)
    model(_batch()).loss.backward()
    assert model.head.weight_v.grad is not None


def test_learned_last_layer_norm():
    model = _ibot(head=HeadConfig(hidden=32, bottleneck=16, out_dim=64, norm_last_layer=False))
    model(_batch()).loss.backward()
    assert model.head.weight_g is not None and model.head.weight_g.grad is not None


def test_local_crops_interpolate_learned_and_sincos_positions():
    for positions in ("learned", "sincos"):
        model = _ibot(positions=positions)
        assert torch.equal(model.adapter.positions((4, 4)), model.adapter.positions(model.adapter.grid))  # own size
        assert model.adapter.embed(torch.randn(2, 1, 8, 8)).x.shape == (2, 1 + 4, 32)
    with pytest.raises(ValueError, match="absolute positions"):
        _ibot(positions="relative").adapter.embed(torch.randn(2, 1, 8, 8))


def test_resized_learned_positions_match_timm():
    from timm.layers import resample_abs_pos_embed

    model = _ibot(positions="learned")
    with torch.no_grad():
        table = model.adapter.pos_embed  # (1, 1 + 16, 32) on the 4 x 4 grid
        for grid in ((2, 2), (3, 5), (6, 6)):
            peer = resample_abs_pos_embed(table, list(grid), [4, 4], num_prefix_tokens=1, interpolation="bicubic",
                                          antialias=False)
            torch.testing.assert_close(model.adapter.positions(grid), peer)
        ours = model.adapter.embed(torch.randn(2, 1, 8, 20)).x  # a 2 x 5 grid: any multiple of the patch size
        assert ours.shape == (2, 1 + 10, 32)


def test_encode_uses_the_teacher_or_the_student():
    model = _ibot()
    with torch.no_grad():
        model.backbone["encoder"].norm.bias.add_(1.0)  # student and teacher now differ
    x = torch.randn(2, 1, 16, 16)
    t = model.teacher.module["backbone"]
    assert torch.equal(model.encode(x), t["encoder"](t["adapter"].embed(x)).x)
    model.cfg.encode_with = "student"
    assert torch.equal(model.encode(x), model.encoder(model.adapter.embed(x)).x)


def test_single_view_batches_are_refused():
    with pytest.raises(ValueError, match="data.views.enabled"):
        _ibot()(Batch(inputs=torch.randn(2, 1, 16, 16), mask=torch.zeros(2, 16, dtype=torch.bool)))


def test_collapsed_outputs_stop_the_run():
    model = _ibot(min_entropy=0.1, student_temp=0.1)
    with torch.no_grad():  # every input maps onto prototype 0: the head's bottleneck is a constant
        last = model.head.mlp[-1]
        last.weight.zero_()
        last.bias.copy_(torch.randn(16))
        model.head.weight_v[0] = last.bias * 100
    model.teacher.module.load_state_dict({"backbone." + k: v for k, v in model.backbone.state_dict().items()}
                                         | {"head." + k: v for k, v in model.head.state_dict().items()})
    model.train()
    with pytest.raises(CollapseError, match=r"iBOT collapse at step 0.*teacher_entropy=0\.0"):
        model(_batch())
    healthy = _ibot(min_entropy=0.1)
    healthy.train()
    logs = healthy(_batch()).logs
    assert logs["teacher_entropy"] > 0.1 and logs["student_entropy"] <= math.log(64) + 1e-5

import copy
import math

import numpy as np
import pytest
import torch

from unimim.train.engine import SingleProcessEngine
from unimim.train.optim import OptimConfig, build_optimizer, peak_lr, weight_decay_schedule
from unimim.train.schedules import cosine_with_warmup


def test_cosine_with_warmup_endpoints():
    s = cosine_with_warmup(1.0, 0.1, total_steps=110, warmup_steps=10)
    assert len(s) == 110
    np.testing.assert_allclose(s[:10], np.arange(10) / 10)  # linear warm-up from 0, one value per step
    assert s[10] == pytest.approx(1.0)  # peak right after warm-up
    assert s[60] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert s[-1] == pytest.approx(0.1, abs=1e-3)
    assert np.all(np.diff(s[10:]) <= 0)


def test_short_runs_and_bad_lengths():
    assert len(cosine_with_warmup(1.0, 0.0, total_steps=3, warmup_steps=10)) == 3
    with pytest.raises(ValueError):
        cosine_with_warmup(1.0, 0.0, total_steps=0, warmup_steps=0)


def test_lr_scaling_rule():
    assert peak_lr(OptimConfig(base_lr=1.5e-4), 4096) == pytest.approx(2.4e-3)  # MAE: 1.5e-4 * 4096 / 256
    assert peak_lr(OptimConfig(lr=1e-3, base_lr=None), 4096) == 1e-3
    with pytest.raises(ValueError, match="exactly one"):
        OptimConfig(lr=1e-3, base_lr=1e-4)


def test_no_weight_decay_on_biases_norms_and_tokens():
    from modalities.image.model.adapter import ImageAdapter, ImageAdapterConfig
    from unimim.nn.encoder import EncoderConfig, TransformerEncoder
    from unimim.objectives.data2vec import Data2Vec, Data2VecConfig

    adapter = ImageAdapter(ImageAdapterConfig(image_size=8, patch_size=4, in_chans=1, positions="relative"),
                           dim=8, num_heads=2)
    model = Data2Vec(adapter, TransformerEncoder(EncoderConfig(dim=8, depth=1, num_heads=2, layer_scale_init=0.1)),
                     Data2VecConfig(top_k=1))
    opt = build_optimizer(model, OptimConfig(weight_decay=0.05))
    decayed, plain = ({id(p) for p in g["params"]} for g in opt.param_groups)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in decayed} == {
        "backbone.adapter.patch_embed.weight", "backbone.encoder.blocks.0.attn.qkv.weight",
        "backbone.encoder.blocks.0.attn.proj.weight", "backbone.encoder.blocks.0.mlp.fc1.weight",
        "backbone.encoder.blocks.0.mlp.fc2.weight", "head.weight",
    }
    assert "backbone.adapter.rel_pos.table" in {names[i] for i in plain}
    assert opt.param_groups[0]["weight_decay"] == 0.05 and opt.param_groups[1]["weight_decay"] == 0.0
    assert len(decayed) + len(plain) == sum(1 for p in model.parameters())


def test_fp16_needs_cuda():
    import torch

    from unimim.train.engine import SingleProcessEngine

    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="fp16 training needs a CUDA device"):
        SingleProcessEngine(model, torch.optim.SGD(model.parameters(), lr=0.1), np.zeros(1),
                            device=torch.device("cpu"), precision="fp16")


def test_weight_decay_schedule_is_ibots_cosine():
    """iBOT / DINO ``cosine_scheduler(0.04, 0.4, ...)``: 0.04 at step 0, then wd_end + (wd - wd_end) / 2 (1 + cos(pi
    i / n))."""
    assert weight_decay_schedule(OptimConfig(weight_decay=0.04), 10) is None  # constant: nothing scheduled
    s = weight_decay_schedule(OptimConfig(weight_decay=0.04, weight_decay_end=0.4), 11)
    assert len(s) == 11 and s[0] == pytest.approx(0.04)
    assert s[10] == pytest.approx(0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * 10 / 11)))
    assert np.all(np.diff(s) > 0)
    with pytest.raises(ValueError, match="weight_decay_end"):
        OptimConfig(weight_decay_end=-0.1)
    with pytest.raises(ValueError, match="clip_mode"):
        OptimConfig(clip_mode="norm")


def _engine(model, **kw):
    opt = build_optimizer(model, OptimConfig(lr=1.0, base_lr=None, weight_decay=0.04))
    return opt, SingleProcessEngine(model, opt, np.full(5, 0.1), device=torch.device("cpu"), precision="fp32", **kw)


def test_engine_sets_the_scheduled_weight_decay_on_the_decayed_group_only():
    model = torch.nn.Linear(3, 2)
    wd = np.array([0.04, 0.2, 0.4])
    opt, engine = _engine(model, wd_schedule=wd)
    for step in range(3):
        model(torch.randn(4, 3)).sum().backward()
        out = engine.step(step)
        assert out["weight_decay"] == pytest.approx(wd[step])
        decayed, plain = opt.param_groups
        assert decayed["weight_decay"] == pytest.approx(wd[step]) and plain["weight_decay"] == 0.0
    # the decay really acts: a zero gradient leaves w * (1 - lr * wd) after the AdamW step with the last value
    model.weight.grad, model.bias.grad = torch.zeros_like(model.weight), torch.zeros_like(model.bias)
    w = model.weight.detach().clone()
    engine.step(4)  # past the schedule's end: its last value
    state = opt.state[model.weight]
    m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
    expected = w * (1 - 0.1 * 0.4) - 0.1 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    torch.testing.assert_close(model.weight.detach(), expected)


def test_per_parameter_clipping_clips_each_gradient_on_its_own():
    """iBOT ``clip_gradients``: each gradient whose norm exceeds 3 is scaled to 3 / (norm + 1e-6); the others stay;
    the global mode scales all of them by one factor instead."""
    a, b = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2))
    model = torch.nn.ParameterList([a, b])
    ga, gb = torch.tensor([6.0, 8.0, 0.0, 0.0]), torch.tensor([0.6, 0.8])  # norms 10 and 1
    seen = {}
    for mode in ("per_param", "global"):
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        engine = SingleProcessEngine(model, opt, np.ones(1), device=torch.device("cpu"), precision="fp32",
                                     clip_grad=3.0, clip_mode=mode)
        a.grad, b.grad = ga.clone(), gb.clone()
        with torch.no_grad():
            a.zero_(), b.zero_()
        out = engine.step(0)
        assert out["grad_norm"] == pytest.approx(math.sqrt(101.0))  # the norm before clipping, in both modes
        seen[mode] = (-a.detach().clone(), -b.detach().clone())  # SGD lr 1 from 0: minus the clipped gradient
    torch.testing.assert_close(seen["per_param"][0], ga * 3.0 / (10.0 + 1e-6))
    torch.testing.assert_close(seen["per_param"][1], gb)
    scale = 3.0 / (math.sqrt(101.0) + 1e-6)
    torch.testing.assert_close(seen["global"][0], ga * scale)
    torch.testing.assert_close(seen["global"][1], gb * scale)


def test_adamw_kernel_is_what_torch_reports_and_matches_the_plain_loop():
    """build_optimizer picks fused (CPU, CUDA) or foreach AdamW from torch's lists of supported devices; 5 steps of
    it equal torch's plain per-parameter AdamW (foreach=False) on the same gradients, with weight decay on one
    group only."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    from unimim.train.optim import adamw_kernel

    assert adamw_kernel([torch.nn.Parameter(torch.zeros(2))]) == (
        {"fused": True} if "cpu" in _get_fused_kernels_supported_devices() else {"foreach": True})
    assert adamw_kernel([]) == {}
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    ours = copy.deepcopy(ref)
    cfg = OptimConfig(lr=1e-2, base_lr=None, weight_decay=0.1)
    opt = build_optimizer(ours, cfg)
    assert opt.defaults["fused"] or opt.defaults["foreach"]
    plain = torch.optim.AdamW([{"params": [p for n, p in ref.named_parameters() if p.ndim >= 2], "weight_decay": 0.1},
                               {"params": [p for n, p in ref.named_parameters() if p.ndim < 2], "weight_decay": 0.0}],
                              lr=1e-2, betas=cfg.betas, eps=cfg.eps, foreach=False, fused=False)
    for g in opt.param_groups:
        g["lr"] = 1e-2
    for _ in range(5):
        x = torch.randn(4, 6)
        for model, o in ((ours, opt), (ref, plain)):
            o.zero_grad()
            model(x).square().sum().backward()
            o.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

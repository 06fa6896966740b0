import numpy as np
import pytest

from unimim.train.optim import OptimConfig, build_optimizer, peak_lr
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

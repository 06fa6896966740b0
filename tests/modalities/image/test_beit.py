"""BEiT stage 2: the loss against an independent computation, the frozen tokenizer, and parity with
``transformers.BeitForMaskedImageModeling`` through the converter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modalities.image.interop.convert_hf_beit import beit_config_to_unimim, from_hf_beit_mim
from modalities.image.model.adapter import ImageAdapter, ImageAdapterConfig
from modalities.image.objectives.beit import BEiT, BEiTConfig
from modalities.image.objectives.tokenizer.dvae import DiscreteVAE, DVAEConfig, freeze
from unimim.core.batch import Batch
from unimim.nn.encoder import EncoderConfig, TransformerEncoder
from unimim.train.optim import OptimConfig, build_optimizer

ATOL = 1e-4


def _tokenizer(image_size=16, codebook_size=32) -> DiscreteVAE:
    cfg = DVAEConfig(image_size=image_size, in_chans=1, codebook_size=codebook_size, embed_dim=8, hidden=8,
                     num_layers=2)
    return freeze(DiscreteVAE(cfg))


def _beit(tokenizer: DiscreteVAE, image_size=16, patch_size=4) -> BEiT:
    ecfg = EncoderConfig(dim=32, depth=2, num_heads=2, qkv_bias="qv", layer_scale_init=0.1)
    acfg = ImageAdapterConfig(image_size=image_size, patch_size=patch_size, in_chans=1, positions="relative")
    return BEiT(ImageAdapter(acfg, dim=32, num_heads=2), TransformerEncoder(ecfg), BEiTConfig(tokenizer="unused"),
                tokenizer=tokenizer)


def test_loss_is_cross_entropy_at_masked_positions_against_the_codes():
    torch.manual_seed(0)
    tok = _tokenizer()
    model = _beit(tok).eval()
    x = torch.randn(3, 1, 16, 16)
    mask = torch.rand(3, 16) < 0.4
    mask[:, 0] = True
    out = model(Batch(inputs=x, mask=mask))
    logits = model.logits(x, mask)  # (B, N, K) at every position
    labels = tok.codes(x)
    expected = torch.stack([F.cross_entropy(logits[b, n], labels[b, n], reduction="sum")
                            for b in range(3) for n in range(16) if mask[b, n]]).mean()
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    acc = sum(int(logits[b, n].argmax() == labels[b, n]) for b in range(3) for n in range(16) if mask[b, n])
    assert out.logs["mlm_acc"] == pytest.approx(acc / int(mask.sum()))


def test_tokenizer_is_frozen_outside_optimizer_and_checkpoint():
    torch.manual_seed(0)
    tok = _tokenizer()
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    model = _beit(tok)
    opt_params = {id(p) for g in build_optimizer(model, OptimConfig()).param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in tok.parameters()}
    assert not any(k.startswith("tokenizer") for k in model.state_dict())
    out = model(Batch(inputs=torch.randn(2, 1, 16, 16), mask=torch.rand(2, 16) < 0.5))
    out.loss.backward()
    assert all(p.grad is None for p in tok.parameters())
    assert all(torch.equal(v, before[k]) for k, v in tok.state_dict().items())
    model.double()
    assert next(tok.parameters()).dtype == torch.float32  # the tokenizer stays fp32


def test_tokenizer_of_another_size_sees_a_resized_copy():
    torch.manual_seed(0)
    tok = _tokenizer(image_size=16)  # 4 x 4 codes
    model = _beit(tok, image_size=32, patch_size=8)  # 4 x 4 patches
    x = torch.randn(2, 1, 32, 32)
    small = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(model.tokenize(x), tok.codes(small))


def test_grid_and_channel_mismatches_are_clear_errors():
    with pytest.raises(ValueError, match=r"tokenizer grid \(4, 4\) differs from the ViT patch grid \(8, 8\)"):
        _beit(_tokenizer(), image_size=16, patch_size=2)
    model = _beit(_tokenizer())
    with pytest.raises(ValueError, match="one mask per example"):
        model(Batch(inputs=torch.randn(2, 1, 16, 16), mask=torch.zeros(2, 3, 16, dtype=torch.bool)))


def test_missing_tokenizer_file_names_the_stage_one_recipe(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvae_fmnist_cpu.yaml"):
        BEiT(ImageAdapter(ImageAdapterConfig(image_size=16, patch_size=4, in_chans=1), dim=32, num_heads=2),
             TransformerEncoder(EncoderConfig(dim=32, depth=1, num_heads=2)),
             BEiTConfig(tokenizer=str(tmp_path / "nope")))


# ------------------------------------------------------------------------------ transformers interop

transformers = pytest.importorskip("transformers")


def _hf_model(**overrides) -> "transformers.BeitForMaskedImageModeling":
    kwargs = dict(
        image_size=32, patch_size=8, num_channels=1, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=128, hidden_act="gelu", layer_norm_eps=1e-6, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, drop_path_rate=0.0, use_shared_relative_position_bias=True,
        use_relative_position_bias=False, use_absolute_position_embeddings=False, use_mask_token=True,
        use_mean_pooling=True, layer_scale_init_value=0.1, vocab_size=32, attn_implementation="eager",
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = transformers.BeitForMaskedImageModeling(transformers.BeitConfig(**kwargs)).eval()
    with torch.no_grad():  # HF zero-inits tokens, biases and the bias table: perturb all so layout bugs show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("positions", ["relative", "absolute"])
def test_hf_beit_mim_logits_match_after_conversion(positions):
    absolute = positions == "absolute"
    hf = _hf_model(use_shared_relative_position_bias=not absolute, use_absolute_position_embeddings=absolute)
    adapter_cfg, encoder_cfg, vocab = beit_config_to_unimim(hf.config)
    tok = _tokenizer(image_size=16, codebook_size=vocab)  # any tokenizer with the right grid and vocabulary
    model = BEiT(ImageAdapter(adapter_cfg, dim=encoder_cfg.dim, num_heads=encoder_cfg.num_heads),
                 TransformerEncoder(encoder_cfg), BEiTConfig(tokenizer="unused"), tokenizer=tok).eval()
    model.load_state_dict(from_hf_beit_mim(hf.state_dict(), depth=encoder_cfg.depth), strict=True)

    x = torch.randn(2, 1, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [1, 2, 5, 6, 9]] = True
    mask[1, [12, 13, 14, 15]] = True
    with torch.no_grad():
        ours = model.logits(x, mask)  # (B, N, K)
        ref = hf(pixel_values=x, bool_masked_pos=mask).logits  # (B, N, K)
    assert ours.shape == ref.shape == (2, 16, 32)
    assert torch.allclose(ours, ref, atol=ATOL, rtol=0), float((ours - ref).abs().max())
    # and the loss BEiT trains with equals HF's masked-LM loss on the same labels
    labels = tok.codes(F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True))
    hf_loss = F.cross_entropy(ref[mask], labels[mask])
    with torch.no_grad():
        assert float(model(Batch(inputs=x, mask=mask)).loss) == pytest.approx(float(hf_loss), abs=ATOL)


def test_double_final_norm_is_refused():
    hf = _hf_model(use_mean_pooling=False)
    with pytest.raises(ValueError, match="two final"):
        from_hf_beit_mim(hf.state_dict(), depth=3)
    with pytest.raises(ValueError, match="normalises twice"):
        beit_config_to_unimim(hf.config)

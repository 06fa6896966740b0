import pytest
import torch
from torch import nn

from unimim.nn.encoder import EncoderConfig, TransformerEncoder
from unimim.nn.tokens import Tokens


def _encoder(**kw):
    torch.manual_seed(0)
    cfg = EncoderConfig(dim=16, depth=3, num_heads=2, **kw)
    return TransformerEncoder(cfg).eval()


def test_output_shapes():
    enc = _encoder()
    out = enc(Tokens(torch.randn(2, 5, 16)))
    assert out.x.shape == (2, 5, 16)
    assert len(out.layers) == len(out.ffn) == 3
    assert all(t.shape == (2, 5, 16) for t in out.layers + out.ffn)


@pytest.mark.parametrize("norm_first", [True, False])
def test_matches_torch_transformer_layer(norm_first):
    """Block numerics against torch.nn.TransformerEncoderLayer (an independent implementation)."""
    enc = _encoder(norm_first=norm_first, final_norm=False, norm_eps=1e-5)
    ref = nn.TransformerEncoderLayer(16, 2, dim_feedforward=64, dropout=0.0, activation="gelu",
                                     batch_first=True, norm_first=norm_first).eval()
    blk = enc.blocks[0]
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(blk.attn.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(blk.attn.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(blk.attn.proj.weight)
        ref.self_attn.out_proj.bias.copy_(blk.attn.proj.bias)
        ref.linear1.load_state_dict(blk.mlp.fc1.state_dict())
        ref.linear2.load_state_dict(blk.mlp.fc2.state_dict())
        ref.norm1.load_state_dict(blk.norm1.state_dict())
        ref.norm2.load_state_dict(blk.norm2.state_dict())
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    ours, ffn = blk(x, pad)
    theirs = ref(x, src_key_padding_mask=pad)
    torch.testing.assert_close(ours[~pad], theirs[~pad], atol=1e-5, rtol=1e-5)
    # the FFN output is the residual branch: block output = norm2?(input_to_ffn + ffn)
    if norm_first:
        h = x + blk.attn(blk.norm1(x), pad)
        torch.testing.assert_close(ours, h + ffn, atol=1e-5, rtol=1e-5)


def test_padding_does_not_leak():
    enc = _encoder()
    x = torch.randn(1, 4, 16)
    padded = torch.cat([x, torch.randn(1, 3, 16) * 100], dim=1)
    pad = torch.tensor([[False] * 4 + [True] * 3])
    a = enc(Tokens(x)).x
    b = enc(Tokens(padded, padding_mask=pad)).x[:, :4]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_visible_subset_with_bias_is_permutation_consistent():
    """Tokens.select gathers the additive bias on both axes: selecting a permutation permutes the output."""
    enc = _encoder()
    x = torch.randn(2, 5, 16)
    bias = torch.randn(1, 2, 5, 5)
    full = enc(Tokens(x, attn_bias=bias)).x
    perm = torch.stack([torch.randperm(5), torch.randperm(5)])
    sub = enc(Tokens(x, attn_bias=bias).select(perm)).x
    torch.testing.assert_close(sub, torch.stack([full[b, perm[b]] for b in range(2)]), atol=1e-5, rtol=1e-5)
    keep = perm[:, :3]
    part = Tokens(x, attn_bias=bias).select(keep)
    assert part.x.shape == (2, 3, 16) and part.attn_bias.shape == (2, 2, 3, 3)
    torch.testing.assert_close(part.attn_bias[1], bias[0][:, keep[1]][:, :, keep[1]])


def test_layer_scale_and_drop_path():
    enc = _encoder(layer_scale_init=0.1, drop_path=0.5)
    assert torch.allclose(enc.blocks[0].ls1.gamma, torch.full((16,), 0.1))
    assert enc.blocks[0].drop_path.__class__.__name__ == "Identity"  # rate 0 at the first block
    assert enc.blocks[-1].drop_path.p == pytest.approx(0.5)
    enc.train()
    x = Tokens(torch.randn(64, 3, 16))
    torch.manual_seed(1)
    a = enc(x).x
    torch.manual_seed(2)
    b = enc(x).x
    assert not torch.allclose(a, b)  # stochastic in training
    enc.eval()
    torch.testing.assert_close(enc(x).x, enc(x).x)


def test_qv_bias_has_no_key_bias():
    enc = _encoder(qkv_bias="qv")
    attn = enc.blocks[0].attn
    assert attn.qkv.bias is None and attn.q_bias.shape == (16,) and attn.v_bias.shape == (16,)


def test_bad_config():
    with pytest.raises(ValueError, match="divisible"):
        EncoderConfig(dim=10, num_heads=3)


def test_grad_checkpointing_gives_the_same_outputs_and_gradients():
    import copy

    torch.manual_seed(0)
    cfg = EncoderConfig(dim=32, depth=3, num_heads=2, drop_path=0.2, dropout=0.1)
    plain = TransformerEncoder(cfg).train()
    ckpt = copy.deepcopy(plain)
    ckpt.cfg = EncoderConfig(**{**vars(cfg), "grad_checkpointing": True})
    x = torch.randn(4, 7, 32)
    outs, grads = [], []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # the same dropout / drop-path draws in both
        out = model(Tokens(x=x))
        (out.x.square().mean() + sum(h.mean() for h in out.ffn)).backward()
        outs.append(out.x.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    calls, forward = [], ckpt.blocks[0].forward

    def counted(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return forward(*args, **kwargs)

    ckpt.blocks[0].forward = counted
    ckpt(Tokens(x=x)).x.sum().backward()
    assert len(calls) == 2  # the block ran again in the backward pass: its activations were not kept


def test_act_dropout_is_separate_from_the_output_dropout():
    """``act_dropout: 0`` (fairseq speech/text): fc2(gelu(fc1 x)) then dropout, the same draws as written out here;
    the default drops after the activation too (timm's ViT)."""
    from unimim.nn.block import Mlp

    torch.manual_seed(0)
    mlp = Mlp(8, 16, dropout=0.5, act_dropout=0.0).train()
    x = torch.randn(4, 8)
    torch.manual_seed(1)
    out = mlp(x)
    torch.manual_seed(1)
    expected = torch.nn.functional.dropout(mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x))), 0.5)
    torch.testing.assert_close(out, expected)
    assert Mlp(8, 16, dropout=0.3).act_drop.p == 0.3
    assert TransformerEncoder(EncoderConfig(dim=8, depth=1, num_heads=2, dropout=0.1, act_dropout=0.0)) \
        .blocks[0].mlp.act_drop.p == 0.0

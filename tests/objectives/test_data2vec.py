import pytest
import torch

from modalities.image.model.adapter import ImageAdapter, ImageAdapterConfig
from unimim.core.batch import Batch
from unimim.core.ema import EMAConfig
from unimim.nn.decoder import ConvDecoder, DecoderConfig, fill_masked
from unimim.nn.encoder import EncoderConfig, TransformerEncoder
from unimim.objectives.data2vec import Data2Vec, Data2VecConfig
from unimim.objectives.data2vec2 import Data2Vec2, Data2Vec2Config


def make(mode="v1", **kw):
    """data2vec 1.0 (``v1``) or 2.0 (``v2``) on a tiny image adapter."""
    torch.manual_seed(0)
    enc = EncoderConfig(dim=32, depth=3, num_heads=2)
    adapter = ImageAdapter(ImageAdapterConfig(image_size=16, patch_size=4, in_chans=1), dim=32, num_heads=2)
    if mode == "v1":
        return Data2Vec(adapter, TransformerEncoder(enc), Data2VecConfig(top_k=2, **kw)).eval()
    decoder = DecoderConfig(dim=32, layers=2, kernel=3, groups=4)
    cfg = Data2Vec2Config(top_k=2, mask_noise_std=0.0, decoder=decoder, **kw)
    return Data2Vec2(adapter, TransformerEncoder(enc), cfg).eval()


def exact_mask(b, n=16, m=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, generator=g).argsort(dim=1) < m  # exactly m masked per row


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_student_never_sees_masked_content(mode):
    model = make(mode)
    x = torch.randn(2, 1, 16, 16)
    mask = exact_mask(2)
    x2 = x.clone()
    # change the pixels of every masked patch (patch (r, c) covers rows 4r..4r+3, cols 4c..4c+3)
    for b in range(2):
        for i in mask[b].nonzero().flatten().tolist():
            r, c = divmod(i, 4)
            x2[b, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = torch.randn(1, 4, 4) * 10
    student = model.student
    a, cls_a, _ = student(model.adapter.local(x), mask)
    b_, cls_b, _ = student(model.adapter.local(x2), mask)
    torch.testing.assert_close(a, b_)
    torch.testing.assert_close(cls_a, cls_b)
    assert not torch.allclose(model.targets(x, None), model.targets(x2, None))  # the teacher sees everything


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_multi_mask_loss_is_the_mean_over_masks(mode):
    model = make(mode)
    x = torch.randn(3, 1, 16, 16)
    masks = torch.stack([exact_mask(3, seed=s) for s in range(4)], dim=1)  # (B, R, N)
    joint = model(Batch(inputs=x, mask=masks)).loss
    single = torch.stack([model(Batch(inputs=x, mask=masks[:, r])).loss for r in range(4)])
    torch.testing.assert_close(joint, single.mean(), atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_student_only():
    model = make("v1").train()
    model(Batch(inputs=torch.randn(2, 1, 16, 16), mask=exact_mask(2))).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "mask_token" not in n)
    assert all(p.grad is None for p in model.teacher.module.parameters())
    assert not model.teacher.module.training


def test_v2_needs_equal_mask_counts():
    model = make("v2")
    mask = exact_mask(2)
    mask[0, mask[0].nonzero()[0]] = False  # row 0 now masks one fewer
    with pytest.raises(ValueError, match="same number of masked tokens"):
        model(Batch(inputs=torch.randn(2, 1, 16, 16), mask=mask))


def test_teacher_update_and_checkpoint_state():
    model = make("v1", ema=EMAConfig(decay=0.5, end_decay=0.5, schedule="constant"))
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    before = model.teacher.module["encoder"].blocks[0].mlp.fc1.weight.clone()
    logs = model.update_teacher(7)
    assert logs == {"ema_decay": 0.5}
    student_w = model.backbone["encoder"].blocks[0].mlp.fc1.weight
    torch.testing.assert_close(model.teacher.module["encoder"].blocks[0].mlp.fc1.weight,
                               0.5 * before + 0.5 * student_w)
    other = make("v1")
    other.load_state_dict(model.state_dict())
    assert other.num_updates == 7
    torch.testing.assert_close(other.teacher.module["encoder"].blocks[0].mlp.fc1.weight,
                               model.teacher.module["encoder"].blocks[0].mlp.fc1.weight)
    assert not any(k.startswith("teacher") for k in model.state_dict())  # teacher only via the extra state
    assert all(not n.startswith("teacher") for n, _ in model.named_parameters())  # optimizer never sees it


def test_top_k_larger_than_depth():
    adapter = ImageAdapter(ImageAdapterConfig(image_size=16, patch_size=4, in_chans=1), dim=32, num_heads=2)
    with pytest.raises(ValueError, match="exceeds encoder.depth"):
        Data2Vec(adapter, TransformerEncoder(EncoderConfig(dim=32, depth=1, num_heads=2)), Data2VecConfig(top_k=2))


def test_fill_masked_and_decoder_shapes():
    mask = torch.tensor([[True, False, True, False]])
    from unimim.core.masking import MaskInfo

    visible = torch.tensor([[[1.0], [2.0]]])  # tokens 1 and 3
    full = fill_masked(visible, MaskInfo.from_mask(mask).ids_restore, noise_std=0.0)
    assert full[0, :, 0].tolist() == [0.0, 1.0, 0.0, 2.0]
    dec2 = ConvDecoder(DecoderConfig(dim=8, layers=2, kernel=3, groups=2), in_dim=6, grid=(2, 2))
    assert dec2(torch.randn(3, 4, 6)).shape == (3, 4, 6)
    dec1 = ConvDecoder(DecoderConfig(dim=8, layers=2, kernel=5, groups=1), in_dim=8)
    assert dec1(torch.randn(3, 7, 8)).shape == (3, 7, 8)
    with pytest.raises(ValueError, match="grid"):
        dec2(torch.randn(1, 5, 6))


def test_two_layer_text_style_head():
    model = make("v1", head_layers=2)
    assert [m.out_features for m in model.head if hasattr(m, "out_features")] == [64, 32]
    out = model(Batch(inputs=torch.randn(2, 1, 16, 16), mask=exact_mask(2)))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_cls_loss_adds_weighted_regression_to_the_mean_target(mode):
    with torch.no_grad():
        x, mask = torch.randn(2, 1, 16, 16), exact_mask(2)
        plain = make(mode)(Batch(inputs=x, mask=mask))
        model = make(mode, cls_loss_weight=2.5)
        out = model(Batch(inputs=x, mask=mask))
        _, cls, _ = model.student(model.adapter.local(x), mask)
        y = model.targets(x, None)  # (B, N, D)
        per_elem = torch.nn.functional.smooth_l1_loss(cls, y.mean(1), beta=2.0, reduction="none")  # (B, D)
        expected = per_elem.sum(-1).mean() / 32  # scale 1/D (inv_dim), mean over rows
        assert out.logs["cls_loss"] == pytest.approx(float(expected), rel=1e-4)
        assert float(out.loss) == pytest.approx(float(plain.loss) + 2.5 * float(expected), rel=1e-4)


def test_decoder_options_match_a_hand_written_decoder():
    """``residual: false`` and ``projection_layers: 2`` (the 2.0 text base): conv -> LN -> GELU per layer with no
    residual, then Linear(dim, 2 dim) - GELU - Linear(2 dim, in_dim), written out here with the module's weights."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    dec = ConvDecoder(DecoderConfig(dim=16, layers=3, kernel=3, groups=1, residual=False, projection_layers=2),
                      in_dim=16)
    assert [m.weight.shape for m in dec.proj if isinstance(m, torch.nn.Linear)] == [(32, 16), (16, 32)]
    x = torch.randn(2, 7, 16)
    h = x.transpose(1, 2)
    for conv in dec.convs:
        h = F.gelu(F.layer_norm(conv(h).transpose(1, 2), (16,)).transpose(1, 2))  # no residual
    lin1, lin2 = dec.proj[0], dec.proj[2]
    expected = lin2(F.gelu(lin1(h.transpose(1, 2))))
    torch.testing.assert_close(dec(x), expected)
    with_res = ConvDecoder(DecoderConfig(dim=16, layers=3, kernel=3, groups=1), in_dim=16)
    assert with_res.residual == [True, True, True] and dec.residual == [False, False, False]
    with pytest.raises(ValueError, match="projection_layers"):
        DecoderConfig(projection_layers=0)


def test_decoder_input_dropout_drops_visible_outputs_only():
    model = make("v2")
    model.cfg.decoder.input_dropout = 0.5
    model.cfg.mask_noise_std = 0.01
    seen = []
    model.decoder.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x, mask = torch.randn(4, 1, 16, 16), exact_mask(4)
    for train in (True, False):
        model.train(train)
        model.student(model.adapter.local(x), mask)
    zero = seen[0] == 0  # (B, N, D)
    frac = zero[~mask].float().mean()
    assert 0.4 < frac < 0.6 and not zero[mask].any()  # about half of the visible outputs, none of the noise
    assert not (seen[1] == 0).any()  # off in eval mode

"""The speech adapter: exact frame geometry, padding, mask embedding, norm modes (group mode against HF wav2vec 2.0),
and the teacher/student sharing of the data2vec speech recipe."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modalities.speech.model.adapter import SHARED_WITH_TEACHER, SpeechAdapter, SpeechAdapterConfig
from modalities.speech.model.feature_encoder import (
    WAV2VEC2_CONV,
    ConvFeatureEncoder,
    conv_output_lengths,
    frame_padding_mask,
    receptive_field,
)
from unimim.core.batch import Batch
from unimim.core.ema import EMAConfig
from unimim.nn.encoder import EncoderConfig, TransformerEncoder
from unimim.objectives.data2vec import Data2Vec, Data2VecConfig

SMALL = [[16, 10, 5], [16, 3, 2], [24, 2, 2]]


def _adapter(**kw) -> SpeechAdapter:
    torch.manual_seed(0)
    cfg = SpeechAdapterConfig(conv_layers=SMALL, pos_conv_depth=kw.pop("depth", 2), pos_conv_kernel=5,
                              pos_conv_groups=4, **kw)
    return SpeechAdapter(cfg, dim=32).eval()


def test_wav2vec2_geometry():
    assert receptive_field(WAV2VEC2_CONV) == 400
    assert SpeechAdapterConfig().frame_stride == 320
    # one second -> 49 frames (the wav2vec 2.0 / HF count); 399 samples -> none
    assert conv_output_lengths(torch.tensor([16000, 400, 399, 720]), WAV2VEC2_CONV).tolist() == [49, 1, 0, 2]


@pytest.mark.parametrize("samples", [30, 31, 49, 50, 100, 333, 1000])
def test_output_lengths_match_the_convolutions(samples):
    enc = ConvFeatureEncoder(SMALL)
    assert enc(torch.randn(1, samples)).shape[-1] == int(conv_output_lengths(torch.tensor([samples]), SMALL)[0])


def test_frame_padding_mask_is_exact_and_checked():
    pad = torch.zeros(3, 1000, dtype=torch.bool)
    pad[1, 700:] = True
    pad[2, 44:] = True
    n = int(conv_output_lengths(torch.tensor([1000]), SMALL)[0])
    frames = frame_padding_mask(pad, n, SMALL)
    expected = conv_output_lengths(torch.tensor([1000, 700, 44]), SMALL)
    assert ((~frames).sum(dim=1) == expected).all() and expected[2] == 1
    with pytest.raises(ValueError, match="suffix"):
        frame_padding_mask(torch.flip(pad, dims=[1]), n, SMALL)
    pad[2, 20:] = True
    with pytest.raises(ValueError, match="receptive field"):
        frame_padding_mask(pad, n, SMALL)


def test_padded_row_equals_the_row_alone():
    # with one positional conv layer, zeroed padded frames are exactly the conv's own zero padding, and attention
    # ignores padded keys: a padded row's real frames equal the same waveform encoded alone
    adapter = _adapter(depth=1)
    encoder = TransformerEncoder(EncoderConfig(dim=32, depth=2, num_heads=4, norm_first=False, final_norm=False)).eval()
    wave = torch.randn(2, 1000)
    pad = torch.zeros(2, 1000, dtype=torch.bool)
    pad[1, 613:] = True
    with torch.no_grad():
        tokens = adapter.embed(wave.masked_fill(pad, 0.0), padding_mask=pad)
        batch = encoder(tokens).x
        alone_tokens = adapter.embed(wave[1:, :613])
        alone = encoder(alone_tokens).x
    n = alone.shape[1]
    assert (~tokens.padding_mask[1]).sum() == n
    assert torch.allclose(batch[1, :n], alone[0], atol=1e-5)


def test_mask_embedding_replaces_masked_frames_before_positions():
    adapter = _adapter()
    seen = {}
    adapter.pos_conv.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    wave = torch.randn(2, 500)
    n = int(conv_output_lengths(torch.tensor([500]), SMALL)[0])
    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[0, 3:7] = True
    with torch.no_grad():
        out = adapter.embed(wave, mask=mask).x
        plain = adapter.embed(wave).x
    x = seen["x"]
    assert torch.equal(x[mask], adapter.mask_emb.expand(int(mask.sum()), -1))
    assert not torch.equal(x[~mask][:3], adapter.mask_emb.expand(3, -1))
    assert torch.allclose(out[1], plain[1]) and not torch.allclose(out[0], plain[0])
    with pytest.raises(ValueError, match="does not match"):
        adapter.embed(wave, mask=mask[:, :-1])


def test_bad_inputs_are_clear_errors():
    adapter = _adapter()
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        adapter.embed(torch.randn(2, 1, 500))
    with pytest.raises(ValueError, match="receptive field"):
        adapter.embed(torch.randn(2, 20))
    with pytest.raises(ValueError, match="must match the waveforms"):
        adapter.embed(torch.randn(2, 500), padding_mask=torch.zeros(2, 400, dtype=torch.bool))
    with pytest.raises(ValueError, match="conv_layers"):
        SpeechAdapterConfig(conv_layers=[[16, 10]])
    with pytest.raises(ValueError, match="pos_conv_groups"):
        SpeechAdapter(SpeechAdapterConfig(conv_layers=SMALL, pos_conv_groups=5), dim=32)


def test_group_norm_mode_matches_hf_wav2vec2_feature_encoder():
    transformers = pytest.importorskip("transformers")
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeatureEncoder

    dims, kernels, strides = zip(*SMALL)
    cfg = transformers.Wav2Vec2Config(conv_dim=list(dims), conv_kernel=list(kernels), conv_stride=list(strides),
                                      conv_bias=False, feat_extract_norm="group")
    torch.manual_seed(0)
    hf = Wav2Vec2FeatureEncoder(cfg).eval()
    ours = ConvFeatureEncoder(SMALL, norm="group").eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = {k.replace("conv_layers", "layers").replace("layer_norm", "norm"): v for k, v in hf.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    assert isinstance(ours.layers[0].norm, nn.GroupNorm) and isinstance(ours.layers[1].norm, nn.Identity)
    wave = torch.randn(2, 700)
    with torch.no_grad():
        assert torch.allclose(ours(wave), hf(wave), atol=1e-5)


def test_teacher_shares_the_cnn_and_copies_positions_but_averages_the_rest():
    adapter = _adapter()
    encoder = TransformerEncoder(EncoderConfig(dim=32, depth=2, num_heads=4, norm_first=False, final_norm=False,
                                               norm_eps=1e-5))
    cfg = Data2VecConfig(top_k=2, target_source="ffn", layer_norm="instance", final_norm="none", loss_beta=0.0,
                         loss_scale="inv_sqrt_dim",
                         ema=EMAConfig(decay=0.5, end_decay=0.5, schedule="constant", copy=list(SHARED_WITH_TEACHER)))
    model = Data2Vec(adapter.train(), encoder, cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    wave = torch.randn(2, 600)
    n = int(conv_output_lengths(torch.tensor([600]), SMALL)[0])
    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[:, 4:12] = True
    model(Batch(inputs=wave, mask=mask)).loss.backward()
    opt.step()
    model.update_teacher(1)
    teacher = dict(model.teacher.module.named_parameters())
    for name, p in model.backbone.named_parameters():
        if name.startswith(SHARED_WITH_TEACHER):
            assert torch.equal(teacher[name], p), name  # shared CNN / projection, copied positional conv
        elif name != "adapter.mask_emb" and p.grad is not None and p.grad.abs().sum() > 0:
            assert not torch.equal(teacher[name], p), name  # averaged with decay 0.5
    with torch.no_grad():  # so the teacher's local features are the student's
        assert torch.equal(model.teacher.module["adapter"].frames(wave), model.adapter.frames(wave))

"""Students that drop the masked tokens (data2vec 2.0 on every modality, MAE) never see what is masked: changing the
raw input that feeds only masked positions leaves the student's visible encoder outputs and its predictions exactly
unchanged (the reference zeroes masked frames before the speech positional conv, fairseq
examples/data2vec/models/modalities/base.py ``encoder_zero_mask``), while the teacher does see the change; and the
R masks of an example share one run of the local encoder without changing the loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modalities.speech.model.feature_encoder import receptive_field
from tests.conftest import tiny_overrides
from unimim.app.experiment import load_recipe
from unimim.app.registry import build_objective
from unimim.core.batch import Batch
from unimim.core.losses import regression_loss

ROOT = Path(__file__).resolve().parents[2]


def build(recipe: str, *extra: str):
    cfg = load_recipe(ROOT / "recipes" / recipe)
    cfg = load_recipe(ROOT / "recipes" / recipe, tiny_overrides(cfg.modality, cfg.objective) + list(extra))
    torch.manual_seed(0)
    return build_objective(cfg).eval(), cfg


def exact_mask(b: int, n: int, m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, generator=g).argsort(dim=1) < m  # (B, N), exactly m masked per row


def image_case(cfg, b: int = 2):
    x = torch.randn(b, 1, 16, 16)
    mask = exact_mask(b, 16, 11)
    x2 = x.clone()
    p = cfg.adapter.patch_size  # 4 x 4 grid of 4-pixel patches: patch i covers rows 4r.., cols 4c..
    for row in range(b):
        for i in mask[row].nonzero().flatten().tolist():
            r, c = divmod(i, 4)
            x2[row, :, p * r:p * (r + 1), p * c:p * (c + 1)] = torch.randn(1, p, p) * 5
    return x, x2, mask


def speech_case(cfg, b: int = 2):
    conv = cfg.adapter.conv_layers
    stride, field = cfg.adapter.frame_stride, receptive_field(conv)
    samples = 60 * stride + field
    n = (samples - field) // stride + 1  # frames of the conv encoder
    x = torch.randn(b, samples)
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[0, 20:29] = True  # a long run in the middle, reaching into the positional conv's neighbourhood
    mask[0, 40:41] = True  # and an isolated frame
    mask[1, n - 10:] = True  # the end of row 1
    x2 = x.clone()
    for row in range(b):
        seen = torch.zeros(samples, dtype=torch.bool)  # samples in the receptive field of a visible frame
        for t in (~mask[row]).nonzero().flatten().tolist():
            seen[t * stride:t * stride + field] = True
        x2[row, ~seen] = torch.randn(int((~seen).sum())) * 5  # audio that feeds only masked frames
    assert (x2 != x).any(dim=1).all()
    return x, x2, mask


def text_case(cfg, b: int = 2):
    t = 32
    x = torch.randint(5, cfg.adapter.vocab_size, (b, t))
    mask = exact_mask(b, t, 15)
    x2 = torch.where(mask, torch.randint(5, cfg.adapter.vocab_size, (b, t)), x)
    assert (x2 != x).any()
    return x, x2, mask


CASES = {"image": image_case, "speech": speech_case, "text": text_case}
DATA2VEC2 = ["image/data2vec2_fmnist_cpu.yaml", "speech/data2vec2_tuxpaint_cpu.yaml", "text/data2vec2_text_cpu.yaml"]


@pytest.mark.parametrize("recipe", DATA2VEC2)
def test_data2vec2_student_never_sees_masked_content(recipe):
    model, cfg = build(recipe)
    x, x2, mask = CASES[cfg.modality](cfg)

    def student(inputs):
        local = model.adapter.local(inputs)
        h = model.encode_visible(local, mask)  # (B, P + N_keep, D)
        torch.manual_seed(1)  # the decoder's noise in the masked slots
        pred, cls, _ = model.student(local, mask)
        return h, pred, cls

    with torch.no_grad():
        (h, pred, cls), (h2, pred2, cls2) = student(x), student(x2)
        assert h.shape[1] == model.num_prefix_tokens + int((~mask[0]).sum())
        torch.testing.assert_close(h2, h, rtol=0, atol=1e-6)
        torch.testing.assert_close(pred2, pred, rtol=0, atol=1e-6)
        if cls is not None:
            torch.testing.assert_close(cls2, cls, rtol=0, atol=1e-6)
        # the change is real: the teacher, which sees the whole input, sees it at visible positions too
        changed = (model.targets(x, None) - model.targets(x2, None)).abs().amax(-1)  # (B, N)
        assert bool((changed[~mask] > 1e-4).any())


def test_the_speech_leak_is_what_zeroing_prevents():
    """Replacing masked frames by the mask embedding *after* the local encoder but keeping their real content in
    the positional conv's input (the old embed-everything-then-select path) does change the visible outputs."""
    model, cfg = build(DATA2VEC2[1])
    x, x2, mask = speech_case(cfg)
    keep = (~mask[0]).nonzero().flatten()

    def leaky(inputs):  # the full input embedded without the mask, then the visible frames kept
        return model.encoder(model.adapter.embed(inputs[:1])).x[0, keep]

    with torch.no_grad():
        assert (leaky(x) - leaky(x2)).abs().max() > 1e-3


def test_mae_encoder_and_prediction_never_see_masked_content():
    model, cfg = build("image/mae_fmnist_cpu.yaml")
    x, x2, mask = image_case(cfg)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_visible(x2, mask), model.encode_visible(x, mask), rtol=0, atol=1e-6)
        torch.testing.assert_close(model.predict(x2, mask), model.predict(x, mask), rtol=0, atol=1e-6)


@pytest.mark.parametrize("recipe", DATA2VEC2)
def test_r_masks_share_one_local_encoder_run_with_the_same_loss(recipe):
    """The loss with the local encoder run once and its output repeated R times equals the loss of the path that
    repeats the raw input R times first and runs the local encoder on every copy (computed here by hand)."""
    model, cfg = build(recipe)
    r = 3
    x, _, m = CASES[cfg.modality](cfg)
    masks = torch.stack([m.roll(s, dims=1) for s in range(r)], dim=1)  # (B, R, N), same count per row
    calls = []
    model.adapter.local = _counting(model.adapter.local, calls)
    torch.manual_seed(2)
    with torch.no_grad():
        loss = model(Batch(inputs=x, mask=masks)).loss
    assert [c.shape[0] for c in calls] == [x.shape[0]]  # one run, on the B examples (the teacher embeds its own)

    # the old path: raw inputs repeated, local encoder on B*R copies, then the same student and loss
    flat = masks.flatten(0, 1)  # (B*R, N)
    with torch.no_grad():
        torch.manual_seed(2)
        y = model.targets(x, None).repeat_interleave(r, 0)  # (B*R, N, D)
        local = _unwrapped(model.adapter.local)(x.repeat_interleave(r, 0))  # Tokens (B*R, N, D)
        pred, cls, _ = model.student(local, flat)
        expected = regression_loss(pred[flat], y[flat], beta=model.cfg.loss_beta, scale=model.loss_scale)
        if model.cfg.cls_loss_weight > 0:
            cls_loss = regression_loss(cls, y.mean(1), beta=model.cfg.loss_beta, scale=model.loss_scale)
            expected = expected + model.cfg.cls_loss_weight * cls_loss
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def _counting(fn, calls):
    def wrapped(inputs, padding_mask=None):
        calls.append(inputs)
        return fn(inputs, padding_mask)

    wrapped.__wrapped__ = fn
    return wrapped


def _unwrapped(fn):
    return getattr(fn, "__wrapped__", fn)

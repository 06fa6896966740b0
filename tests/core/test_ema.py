import math

import pytest
import torch
from torch import nn

from unimim.core.ema import EMAConfig, EMATeacher, ema_decay


def test_decay_schedules():
    lin = EMAConfig(decay=0.999, end_decay=0.9999, anneal_steps=30_000, schedule="linear")
    assert ema_decay(lin, 0) == pytest.approx(0.999)
    assert ema_decay(lin, 15_000) == pytest.approx(0.99945)
    assert ema_decay(lin, 30_000) == pytest.approx(0.9999)
    assert ema_decay(lin, 90_000) == pytest.approx(0.9999)  # constant after the anneal
    const = EMAConfig(decay=0.9998, schedule="constant")
    assert ema_decay(const, 123_456) == 0.9998
    cos = EMAConfig(decay=0.996, end_decay=1.0, anneal_steps=100, schedule="cosine")
    assert ema_decay(cos, 0) == pytest.approx(0.996)
    assert ema_decay(cos, 50) == pytest.approx(0.998)
    assert ema_decay(cos, 100) == pytest.approx(1.0)
    assert ema_decay(cos, 25) == pytest.approx(1.0 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    return net


def test_update_math_and_copy_keys():
    student = _net()
    teacher = EMATeacher(student, EMAConfig(decay=0.9, end_decay=0.9, schedule="constant", copy=["2."]))
    before = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(5.0)
    assert teacher.update(student, step=1) == pytest.approx(0.9)
    s = student.state_dict()
    t = teacher.module.state_dict()
    # averaged: 0.9 * old + 0.1 * new
    torch.testing.assert_close(t["0.weight"], 0.9 * before["0.weight"] + 0.1 * s["0.weight"])
    torch.testing.assert_close(t["1.weight"], 0.9 * before["1.weight"] + 0.1 * s["1.weight"])
    # copied parameters and buffers follow the student exactly
    torch.testing.assert_close(t["2.weight"], s["2.weight"])
    torch.testing.assert_close(t["1.running_mean"], torch.full((4,), 5.0))


def test_decay_one_freezes():
    student = _net()
    teacher = EMATeacher(student, EMAConfig(decay=1.0, end_decay=1.0, schedule="constant"))
    before = teacher.module[0].weight.clone()
    with torch.no_grad():
        student[0].weight.add_(1.0)
    teacher.update(student, 10)
    assert torch.equal(teacher.module[0].weight, before)


def test_teacher_is_frozen_fp32_eval_and_untouched_by_backward():
    student = _net().bfloat16()
    teacher = EMATeacher(student, EMAConfig())
    assert all(p.dtype == torch.float32 for p in teacher.module.parameters())
    assert not any(p.requires_grad for p in teacher.module.parameters())
    assert not teacher.module.training
    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randn(8, 3)
    out = student(x.bfloat16()).float().sum() + teacher.module(x).sum()  # teacher output joins the graph
    out.backward()
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    opt.step()
    assert all(p.grad is None for p in teacher.module.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, snapshot[k]), k


def test_state_round_trip():
    student = _net()
    a = EMATeacher(student, EMAConfig())
    with torch.no_grad():
        student[0].weight.add_(3.0)
    a.update(student, 5)
    b = EMATeacher(_net(), EMAConfig())
    b.load_state_dict(a.state_dict())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_bad_config():
    with pytest.raises(ValueError, match="ema.decay"):
        EMAConfig(decay=1.5)
    with pytest.raises(ValueError, match="matches no parameter"):
        EMATeacher(_net(), EMAConfig(copy=["encoder.embed"]))


def test_update_follows_a_bf16_student_and_later_in_place_changes():
    student = _net()
    teacher = EMATeacher(student, EMAConfig(decay=0.5, end_decay=0.5, schedule="constant"))
    teacher.update(student, 0)
    student.bfloat16()  # moves parameter data; the cached pairing must still see the new tensors
    with torch.no_grad():
        student[0].weight.fill_(2.0)
    before = teacher.module[0].weight.clone()
    teacher.update(student, 1)
    assert teacher.module[0].weight.dtype == torch.float32
    torch.testing.assert_close(teacher.module[0].weight, 0.5 * before + 0.5 * 2.0)

import math

import pytest
import torch

from unimim.core.losses import regression_loss, resolve_scale


def test_l2_hand_computed():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    # per position sums: 1 + 4 = 5 and 9 -> mean 7
    assert regression_loss(pred, target, beta=0.0).item() == pytest.approx(7.0)
    assert regression_loss(pred, target, beta=0.0, scale=1 / math.sqrt(2)).item() == pytest.approx(7 / math.sqrt(2))


def test_smooth_l1_hand_computed():
    # beta = 2: |x| = 1 < 2 -> 0.5 * 1 / 2 = 0.25 ; |x| = 3 >= 2 -> 3 - 1 = 2
    pred = torch.tensor([[1.0, 3.0]])
    target = torch.zeros(1, 2)
    assert regression_loss(pred, target, beta=2.0).item() == pytest.approx(2.25)


def test_inv_dim_scale_is_element_mean():
    pred, target = torch.randn(10, 6), torch.randn(10, 6)
    loss = regression_loss(pred, target, beta=2.0, scale=resolve_scale("inv_dim", 6))
    ref = torch.nn.functional.smooth_l1_loss(pred, target, beta=2.0)  # reduction="mean" (vision 1.0 reference)
    torch.testing.assert_close(loss, ref)


def test_scales():
    assert resolve_scale("inv_sqrt_dim", 16) == 0.25
    assert resolve_scale("inv_dim", 16) == 1 / 16
    assert resolve_scale(2, 16) == 2.0
    with pytest.raises(ValueError):
        resolve_scale("sqrt", 16)


def test_empty_and_mismatched():
    with pytest.raises(ValueError, match="no masked positions"):
        regression_loss(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="shapes differ"):
        regression_loss(torch.zeros(2, 3), torch.zeros(2, 4))

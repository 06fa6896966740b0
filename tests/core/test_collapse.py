import pytest
import torch

from unimim.core.collapse import CollapseError, channel_std, check_collapse


def test_channel_std_hand_computed():
    x = torch.tensor([[0.0, 1.0], [2.0, 1.0]])  # channel 0: var 2 (unbiased), channel 1: var 0
    expected = ((2.0 + 1e-6) ** 0.5 + (1e-6) ** 0.5) / 2
    assert channel_std(x).item() == pytest.approx(expected, rel=1e-5)


def test_check_collapse():
    check_collapse({"target_std": 0.5}, {"target_std": 0.1}, step=10)
    check_collapse({"target_std": 0.0}, {"target_std": 0.0}, step=10)  # a zero floor is off
    with pytest.raises(CollapseError, match="step 7: target_std=0.05 < 0.1"):
        check_collapse({"target_std": 0.05, "pred_std": 1.0}, {"target_std": 0.1, "pred_std": 0.01}, step=7)

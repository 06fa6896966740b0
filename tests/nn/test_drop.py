"""Drop path: each sample's branch is zeroed with probability p, otherwise scaled by 1 / (1 - p); eval is identity."""

import pytest
import torch

from unimim.nn.drop import DropPath


def test_drop_path_drops_whole_samples_with_probability_p():
    torch.manual_seed(0)
    p, n = 0.25, 4000
    x = torch.rand(n, 3, 5) + 0.5  # never 0
    y = DropPath(p).train()(x)
    dropped = (y == 0).flatten(1)
    assert torch.equal(dropped.all(1), dropped.any(1))  # a sample is dropped whole or not at all
    kept = ~dropped.all(1)
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    assert abs((~kept).float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5  # within 4 sigma
    assert torch.equal(DropPath(p).eval()(x), x)


def test_drop_path_refuses_a_probability_of_one():
    with pytest.raises(ValueError, match=r"drop path probability must be in \[0, 1\)"):
        DropPath(1.0)

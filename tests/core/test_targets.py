import pytest
import torch
import torch.nn.functional as F

from unimim.core.targets import build_targets, instance_norm_time, layer_norm_tokens


def test_instance_norm_hand_computed():
    # one sequence, T=4, D=1: values 1,2,3,4 -> mean 2.5, biased var 1.25
    x = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    y = instance_norm_time(x, eps=0.0)
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.5) / 1.25**0.5
    torch.testing.assert_close(y[0, :, 0], expected)


def test_instance_norm_matches_torch_without_padding():
    x = torch.randn(3, 7, 5)
    ref = F.instance_norm(x.transpose(1, 2), eps=1e-5).transpose(1, 2)  # the reference's B x C x T call
    torch.testing.assert_close(instance_norm_time(x), ref, atol=1e-5, rtol=1e-5)


def test_instance_norm_ignores_padding():
    x = torch.randn(2, 6, 4)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    garbage = x.clone()
    garbage[1, 4:] = 1e6  # padded values must not enter the statistics
    y = instance_norm_time(garbage, pad)
    torch.testing.assert_close(y[1, :4], instance_norm_time(x[1:2, :4])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[0], instance_norm_time(x[0:1])[0], atol=1e-5, rtol=1e-5)
    assert torch.all(y[1, 4:] == 0)


def test_layer_norm_hand_computed():
    x = torch.tensor([[[1.0, 3.0]]])  # mean 2, var 1
    torch.testing.assert_close(layer_norm_tokens(x, eps=0.0), torch.tensor([[[-1.0, 1.0]]]))


def test_top_k_average_hand_computed():
    layers = [torch.full((1, 2, 2), float(v)) for v in (1, 2, 3, 4)]
    y = build_targets(layers, top_k=2, layer_norm="none", final_norm="none")
    torch.testing.assert_close(y, torch.full((1, 2, 2), 3.5))


def test_norms_applied_per_layer_then_final():
    torch.manual_seed(0)
    layers = [torch.randn(2, 5, 8) * (i + 1) + i for i in range(4)]
    y = build_targets(layers, top_k=3, layer_norm="layer", final_norm="layer")
    manual = sum(F.layer_norm(h, (8,), eps=1e-5) for h in layers[-3:]) / 3
    torch.testing.assert_close(y, F.layer_norm(manual, (8,), eps=1e-5))
    y_in = build_targets(layers, top_k=4, layer_norm="instance", final_norm="none")
    manual_in = sum(F.instance_norm(h.transpose(1, 2)).transpose(1, 2) for h in layers) / 4
    torch.testing.assert_close(y_in, manual_in, atol=1e-5, rtol=1e-5)


def test_targets_are_float32_from_bf16_layers():
    layers = [torch.randn(1, 3, 4).bfloat16() for _ in range(2)]
    assert build_targets(layers, top_k=2, layer_norm="layer").dtype == torch.float32


@pytest.mark.parametrize("k", [0, 5])
def test_bad_top_k(k):
    with pytest.raises(ValueError, match="top_k"):
        build_targets([torch.zeros(1, 1, 1)] * 4, top_k=k, layer_norm="none")


def test_unknown_norm():
    with pytest.raises(ValueError, match="unknown target norm"):
        build_targets([torch.zeros(1, 1, 1)], top_k=1, layer_norm="batch")  # type: ignore[arg-type]

"""Training FLOPs: hand-computed counts of linear layers, grouped convolutions and of a ViT encoder, the counts a
training run logs, the cache by batch shape and its estimate past the cap, and MAE's visible-only encoder counted as
cheaper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from tests.conftest import tiny_overrides
from tests.train.test_loop_logs import Rows  # the metrics sink that keeps its rows
from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
from unimim.core.batch import Batch
from unimim.nn.encoder import EncoderConfig, TransformerEncoder
from unimim.nn.tokens import Tokens
from unimim.objectives.base import ObjectiveOutput
from unimim.train.engine import SingleProcessEngine
from unimim.train.flops import StepFlops, batch_signature, counter
from unimim.train.loop import train_loop
from unimim.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
B, IN, HID, OUT = 4, 6, 5, 3


class TwoLinear(nn.Module):
    """loss = sum(lin2(lin1(inputs))): lin1's backward computes its weight gradient only (inputs need none),
    lin2's both its weight and its input gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(IN, HID), nn.Linear(HID, OUT)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        return ObjectiveOutput(loss=self.lin2(self.lin1(batch.inputs)).sum(), logs={})

    def update_teacher(self, step: int) -> dict[str, float]:
        return {}


# forward 2*B*in*out per layer; backward 2*B*in*out per gradient (weight; input where one is needed)
TWO_LINEAR_STEP = (2 * B * IN * HID) * 2 + (2 * B * HID * OUT) * 3


def test_a_linear_layer_step_counts_forward_and_twice_that_backward():
    lin = nn.Linear(IN, OUT)
    x = torch.randn(B, IN, requires_grad=True)
    flops = StepFlops()
    with flops.measure(Batch(inputs=x)):
        lin(x).sum().backward()
    assert flops.total == 2 * B * IN * OUT + 2 * (2 * B * IN * OUT)


@pytest.mark.parametrize("groups", [1, 4, 16])
@pytest.mark.parametrize("input_grad", [True, False])
def test_a_grouped_convolution_step_counts_forward_and_the_forward_per_gradient(groups, input_grad):
    """Conv1d(C, C, k, groups): forward 2 * B * L * C * (C / groups) * k (hand-computed); the weight gradient and,
    when the input needs one, the input gradient cost as much each (PyTorch's own formula counts the weight
    gradient groups times over)."""
    b, c, length, k = 2, 32, 10, 3
    conv = nn.Conv1d(c, c, k, padding=k // 2, groups=groups, bias=False)
    x = torch.randn(b, c, length, requires_grad=input_grad)
    flops = StepFlops()
    with flops.measure(Batch(inputs=x)):
        conv(x).sum().backward()
    forward = 2 * b * length * c * (c // groups) * k
    assert flops.total == forward * (3 if input_grad else 2)


def test_the_loop_logs_cumulative_flops_of_hand_computed_steps():
    model = TwoLinear()
    engine = SingleProcessEngine(model, torch.optim.SGD(model.parameters(), lr=0.01), np.full(10, 0.01),
                                 device=torch.device("cpu"), precision="fp32", accumulate=2)
    batches = iter(lambda: Batch(inputs=torch.randn(B, IN)), None)
    metrics = Rows()
    train_loop(model, engine, batches, start_step=0, total_steps=3, accumulate=2, samples_per_step=2 * B,
               log_every=1, checkpoint_every=100, save=lambda s: f"ckpt{s}", metrics=metrics, progress=False)
    assert [r["flops"] for _, r in metrics.rows] == [2 * TWO_LINEAR_STEP * n for n in (1, 2, 3)]
    elapsed = [r["elapsed_s"] for _, r in metrics.rows]
    assert all(0 < a < b for a, b in zip(elapsed, elapsed[1:]))


def _analytic_block(t: int, d: int) -> int:
    """One pre-LN ViT block's forward matmul FLOPs for one example: qkv, q k^T and (scores) v, proj, the 4x FFN."""
    return 2 * t * d * (3 * d) + 2 * t * t * d * 2 + 2 * t * d * d + 2 * 2 * t * d * (4 * d)


def test_a_vit_encoder_training_step_matches_the_analytic_count():
    torch.manual_seed(0)
    b, t, d, depth = 2, 17, 64, 3
    enc = TransformerEncoder(EncoderConfig(dim=d, depth=depth, num_heads=4))
    x = torch.randn(b, t, d, requires_grad=True)
    with counter() as c:
        enc(Tokens(x=x)).x.sum().backward()
    expected = 3 * b * depth * _analytic_block(t, d)
    assert c.get_total_flops() == pytest.approx(expected, rel=0.01)


def test_the_cpu_fused_attention_kernel_is_counted():
    """Without gradients the CPU takes the fused SDPA kernel, absent from PyTorch's table: counted here."""
    b, t, d, depth = 2, 17, 64, 2
    enc = TransformerEncoder(EncoderConfig(dim=d, depth=depth, num_heads=4)).eval()
    with torch.no_grad(), counter() as c:
        enc(Tokens(x=torch.randn(b, t, d)))
    assert c.get_total_flops() == pytest.approx(b * depth * _analytic_block(t, d), rel=0.01)
    # fused forward + backward against PyTorch's own formulas for its GPU kernels
    q, k, v = (torch.randn(2, 4, 9, 8, requires_grad=True) for _ in range(3))
    with counter() as c:
        out = F.scaled_dot_product_attention(q, k, v)
        out.sum().backward()
    shape = tuple(q.shape)
    assert c.get_total_flops() == sdpa_flop_count(shape, shape, shape) + sdpa_backward_flop_count(
        shape, shape, shape, shape)


def test_costs_are_cached_by_shape_and_estimated_past_the_cap(caplog):
    lin = nn.Linear(IN, OUT)
    flops = StepFlops(max_signatures=2)

    def step(n: int) -> float:
        before = flops.total
        x = torch.randn(n, IN)
        with flops.measure(Batch(inputs=x)):
            lin(x).sum().backward()
        return flops.total - before

    per_row = 2 * IN * OUT * 2  # forward + the weight gradient (the input needs none)
    assert step(2) == 2 * per_row and step(4) == 4 * per_row and step(2) == 2 * per_row
    assert not flops.estimated and len(flops.costs) == 2
    with caplog.at_level("INFO", logger="unimim.train.flops"):
        assert step(5) == pytest.approx(5 * per_row)  # from the 4-row count, scaled by 5 / 4
    assert flops.estimated and len(flops.costs) == 2 and "estimated" in caplog.text
    mask = torch.zeros(2, 7, dtype=torch.bool)
    assert batch_signature(Batch(inputs=torch.zeros(2, 3), mask=mask)) == (("inputs", (2, 3)), ("mask", (2, 1, 7)))


def _tiny(recipe: str, tmp_path: Path, *extra: str):
    cfg = load_recipe(ROOT / "recipes" / recipe)
    overrides = tiny_overrides(cfg.modality, cfg.objective, tmp_path)
    return load_recipe(ROOT / "recipes" / recipe, overrides + [f"train.out_dir={tmp_path}", *extra])


def test_a_tiny_data2vec_run_logs_steps_times_the_step_cost(tmp_path):
    result = pretrain(_tiny("image/data2vec_fmnist_cpu.yaml", tmp_path, "train.steps=3"), progress=False)
    flops = [r["flops"] for r in read_metrics(result.run_dir)]
    assert flops[0] > 0 and flops == [flops[0] * n for n in (1, 2, 3)]  # fixed shapes: the same cost every step
    assert result.flops == flops[-1]


def test_mae_counts_fewer_flops_than_data2vec_at_the_same_encoder(tmp_path):
    d2v = _tiny("image/data2vec_fmnist_cpu.yaml", tmp_path / "d2v", "train.steps=1")
    mae = _tiny("image/mae_fmnist_cpu.yaml", tmp_path / "mae", "train.steps=1")
    for key in ("dim", "depth", "num_heads", "mlp_ratio"):
        assert getattr(d2v.encoder, key) == getattr(mae.encoder, key)
    assert mae.masking.ratio >= 0.7 and d2v.train.batch_size == mae.train.batch_size
    a, b = pretrain(d2v, progress=False).flops, pretrain(mae, progress=False).flops
    assert 0 < b < 0.5 * a  # MAE's encoder sees a quarter of the patches; data2vec's student and teacher all

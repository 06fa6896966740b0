"""The training FLOPs of a step, counted by PyTorch's ``torch.utils.flop_counter.FlopCounterMode``.

What is counted is the usual "training FLOPs" of a step: the matrix products (linear layers, attention scores and
their weighting of the values), convolutions (a grouped one's backward counted per group, unlike PyTorch's own
formula) and fused attention kernels of the forward and the backward passes, as they are executed (the EMA teacher's
forward included; recomputation under gradient checkpointing included; 2 FLOPs per multiply-add). Elementwise work
(activations, normalisation, softmax, the optimizer update, the EMA update) is not counted. The backward of a fused
attention kernel is counted as PyTorch counts it (the scores recomputed); written-out attention (matmul, softmax,
matmul) counts the backward of its two products, so the attention part of one model may differ slightly between two
devices that pick different attention paths.

A micro-batch's cost is known by its *shape signature*: the shapes of the :class:`~unimim.core.batch.Batch`'s tensor
fields (inputs, mask, padding_mask, student_inputs, views, labels). The first micro-batch of a new signature runs
(forward and backward) under the counter and its count is kept; later ones of that signature take the kept count
without counting again. The counted micro-batch runs eagerly even under ``train.compile`` (compiled code is not
seen by the counter), so a compiled run counts what an eager one counts. A mask whose number of masked tokens
varies from batch to batch without changing any shape (block masking, with MAE's visible-only encoder) is
therefore taken at the cost of the first batch counted. At most
``max_signatures`` signatures are counted (variable-length speech and text batches); past that, a new signature is
estimated from the counted one with the closest total input size, scaled linearly by the input's number of elements,
and the run's FLOPs are marked as estimated.

FLOPs are counted per process; the training loop sums them over the processes when it logs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from unimim.core.batch import Batch, Views

log = logging.getLogger(__name__)

MAX_SIGNATURES = 16  # distinct batch shapes counted before the cost of new ones is estimated

Signature = tuple[tuple[str, tuple[int, ...]], ...]


def _bmm_flops(b: int, m: int, k: int, n: int) -> int:
    return 2 * b * m * k * n  # (b, m, k) x (b, k, n): one multiply and one add per term


def _cpu_attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                         **kwargs: Any) -> int:
    """The CPU fused attention kernel (not in PyTorch's table): q k^T and (scores) v, as for the GPU kernels.
    query (B, H, Tq, hd), key / value (B, H, Tk, hd)."""
    b, h, tq, d = query_shape
    tk, dv = key_shape[2], value_shape[3]
    return _bmm_flops(b * h, tq, d, tk) + _bmm_flops(b * h, tq, tk, dv)


def _cpu_attention_backward_flops(grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any,
                                  *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """Its backward as PyTorch counts the GPU kernels' backward: the scores recomputed, then the gradients of the
    scores, of v, of q and of k (five products)."""
    b, h, tq, d = query_shape
    tk, dv = key_shape[2], value_shape[3]
    bh = b * h
    return (_bmm_flops(bh, tq, d, tk) + _bmm_flops(bh, tq, dv, tk) + _bmm_flops(bh, tk, tq, dv)
            + _bmm_flops(bh, tq, tk, d) + _bmm_flops(bh, d, tq, tk))


def _conv_backward_flops(grad_out_shape: Any, x_shape: Any, w_shape: Any, _bias: Any, _stride: Any, _padding: Any,
                         _dilation: Any, transposed: bool, _output_padding: Any, _groups: Any, output_mask: Any,
                         out_shape: Any = None, **kwargs: Any) -> int:
    """A convolution's backward: each multiply-add of the forward, x[i] w[j] -> out[o], gives one to the input's
    gradient (g[o] w[j] -> dx[i]) and one to the weight's (g[o] x[i] -> dw[j]), so each requested gradient costs
    the forward's count. PyTorch's own formula (torch 2.11) leaves out the groups in the weight-gradient term,
    which counts a grouped convolution's weight gradient ``groups`` times over (16x: data2vec 2.0's decoder, the
    speech positional convolution). grad_out (B, C_out, ..), x (B, C_in, ..), w (C_out, C_in / groups, ..)."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _custom_formulas() -> dict[Any, Any]:
    """FlopCounterMode formulas that replace or add to PyTorch's: the CPU fused attention kernel and its backward
    (not in its table) and the convolution backward (grouped convolutions, see :func:`_conv_backward_flops`)."""
    aten = torch.ops.aten
    out: dict[Any, Any] = {aten.convolution_backward: _conv_backward_flops}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_attention_flops
        out[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_attention_backward_flops
    return out


def counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts the CPU fused attention kernel (and grouped convolutions'
    backward correctly)."""
    return FlopCounterMode(display=False, custom_mapping=_custom_formulas())


def batch_signature(batch: Batch) -> Signature:
    """((field, shape), ...) of the batch's tensor fields, the views' fields as ``views.global_`` etc."""
    sig: list[tuple[str, tuple[int, ...]]] = []
    for f in fields(batch):
        value = getattr(batch, f.name)
        if torch.is_tensor(value):
            sig.append((f.name, tuple(value.shape)))
        elif isinstance(value, Views):
            for vf in fields(value):
                v = getattr(value, vf.name)
                if torch.is_tensor(v):
                    sig.append((f"views.{vf.name}", tuple(v.shape)))
    return tuple(sig)


def input_numel(batch: Batch) -> int:
    """The total input size: elements of ``inputs``, or of the global and local views."""
    if batch.inputs is not None:
        return batch.inputs.numel()
    views = batch.views
    return views.global_.numel() + (views.local.numel() if views.local is not None else 0)


class StepFlops:
    """The training FLOPs of the micro-batches one process runs (see the module docstring).

    ``with flops.measure(batch): forward + backward`` adds that micro-batch's cost to ``total``; ``estimated``
    turns true when a cost had to be estimated (more than ``max_signatures`` distinct batch shapes)."""

    def __init__(self, max_signatures: int = MAX_SIGNATURES) -> None:
        if max_signatures < 1:
            raise ValueError(f"max_signatures must be >= 1, got {max_signatures}")
        self.max_signatures = max_signatures
        self.costs: dict[Signature, tuple[int, int]] = {}  # signature -> (input elements, counted FLOPs)
        self.total = 0.0  # FLOPs of every micro-batch measured so far
        self.estimated = False

    @contextlib.contextmanager
    def measure(self, batch: Batch) -> Iterator[None]:
        """Around one micro-batch's forward and backward: counted when its shape signature is new (and the cap
        not reached), the kept count otherwise, an estimate past the cap."""
        sig = batch_signature(batch)
        known = self.costs.get(sig)
        if known is not None:
            yield
            self.total += known[1]
        elif len(self.costs) < self.max_signatures:
            # compiled regions (train.compile) run eagerly for the counted batch: the counter sees every op
            with torch.compiler.set_stance("force_eager"), counter() as c:
                yield
            flops = c.get_total_flops()
            self.costs[sig] = (input_numel(batch), flops)
            self.total += flops
        else:
            yield
            self.total += self._estimate(input_numel(batch))

    def _estimate(self, numel: int) -> float:
        if not self.estimated:
            log.info("more than %d distinct batch shapes: the FLOPs of new shapes are estimated from the counted "
                     "shape of the closest input size, scaled by input size (the run's FLOPs are marked estimated)",
                     self.max_signatures)
            self.estimated = True
        ref_numel, ref_flops = min(self.costs.values(), key=lambda c: abs(c[0] - numel))
        return ref_flops * numel / max(ref_numel, 1)

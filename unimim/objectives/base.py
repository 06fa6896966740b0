"""The objective contract: a :class:`~unimim.core.batch.Batch` in, a loss and detached logs out (no backward, no
optimizer inside); ``encode(inputs, padding_mask=None, layers=None, *, mask=None) -> (B, T, D)`` for evaluation,
which is all that probes, fine-tuning and export use of an objective (``mask``: fine-tuning that masks its input,
e.g. wav2vec 2.0 / data2vec CTC fine-tuning)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from unimim.core.masking import MaskInfo, prepend_unmasked
from unimim.nn.encoder import TransformerEncoder
from unimim.nn.tokens import Tokens


@dataclass
class ObjectiveOutput:
    """loss: scalar to back-propagate; logs: detached scalars (target_std, pred_std, ...) for the metrics file, as
    0-d tensors (left on the device: the training loop reads them every ``log_every`` steps) or numbers."""

    loss: Tensor
    logs: dict[str, float | Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base of the pretraining objectives: a student backbone = modality adapter + transformer encoder.

    Subclasses implement ``forward(batch: Batch) -> ObjectiveOutput``. An objective with another backbone (the dVAE
    tokenizer, SimMIM on Swin) subclasses :class:`EncoderObjective` instead and keeps the same ``encode`` contract.
    """

    def __init__(self, adapter: nn.Module, encoder: TransformerEncoder) -> None:
        super().__init__()
        # one container so that the student's parameter names ("adapter.*", "encoder.*") match the teacher's
        self.backbone = nn.ModuleDict({"adapter": adapter, "encoder": encoder})

    @property
    def adapter(self) -> nn.Module:
        return self.backbone["adapter"]

    @property
    def encoder(self) -> TransformerEncoder:
        return self.backbone["encoder"]

    @property
    def num_prefix_tokens(self) -> int:
        return self.adapter.num_prefix_tokens

    @property
    def num_layers(self) -> int:
        """The blocks ``encode(layers=...)`` selects from (0: the features do not come from transformer blocks)."""
        return self.encoder.cfg.depth

    def encode(
        self, inputs: Tensor, padding_mask: Tensor | None = None, layers: Sequence[int] | None = None, *,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Student features for evaluation and fine-tuning: (B, T, D), prefix tokens first.

        ``layers=None`` returns the encoder's final output (after its final norm, if any); a list of block indices
        (0-based, negative ones count from the last block) returns the mean of those blocks' outputs, e.g.
        ``[-2, -1]`` averages the last two, the way data2vec averages its top-K layers into targets (without the
        per-layer target norm, so that the features stay those of the encoder).

        ``mask`` (B, N) bool (``True`` = masked; N the non-prefix tokens) replaces those positions' embeddings by
        the adapter's mask embedding before positions are added (``adapter.embed(inputs, mask=mask)``), the
        masked fine-tuning of wav2vec 2.0 / data2vec (Baevski et al. 2020, §3.3: time-steps masked during
        fine-tuning, a SpecAugment variant; fairseq ``Wav2VecEncoder`` with ``apply_mask: true``). None (the
        default) encodes the unmasked input, as before.
        """
        return encode_with(self.adapter, self.encoder, inputs, padding_mask, layers, mask=mask)

    def encoding_backbone(self) -> nn.Module:
        """The module holding every weight ``encode`` uses: what fine-tuning trains and saves (an objective that
        encodes with another module, e.g. iBOT's EMA teacher, returns that one)."""
        return self.backbone

    def update_teacher(self, step: int) -> dict[str, float]:
        """Called by the loop after every optimizer step (``step`` = completed updates). No-op without a teacher."""
        return {}


class EncoderObjective(nn.Module):
    """Base of objectives whose backbone is not adapter + transformer encoder (dVAE, SimMIM-Swin).

    Subclasses implement ``forward(batch)`` and ``encode(inputs, padding_mask=None, layers=None, *, mask=None)``,
    and set ``num_prefix_tokens``; ``layers`` must be refused clearly where the backbone has no transformer blocks,
    and ``mask`` (:func:`refuse_mask`) where it has no mask embedding.
    """

    num_prefix_tokens: int = 0
    num_layers: int = 0  # blocks that ``encode(layers=...)`` selects from (0: it refuses ``layers``)

    def encode(self, inputs: Tensor, padding_mask: Tensor | None = None,
               layers: Sequence[int] | None = None, *, mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def encoding_backbone(self) -> nn.Module:
        """The module holding every weight ``encode`` uses (see :meth:`Objective.encoding_backbone`); ``backbone``
        where the subclass has one, else a clear error: such an objective cannot be fine-tuned."""
        backbone = getattr(self, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"{type(self).__name__} has no backbone to fine-tune (its encode features are not "
                             "those of an encoder meant for downstream tasks)")
        return backbone

    def update_teacher(self, step: int) -> dict[str, float]:
        return {}


def encode_with(adapter: nn.Module, encoder: TransformerEncoder, inputs: Tensor, padding_mask: Tensor | None = None,
                layers: Sequence[int] | None = None, *, mask: Tensor | None = None) -> Tensor:
    """Features of ``encoder(adapter.embed(inputs, mask=mask))`` (see :meth:`Objective.encode`): (B, T, D)."""
    if mask is not None and (mask.dim() != 2 or mask.dtype != torch.bool):
        raise ValueError(f"encode takes a (B, N) bool mask, got {tuple(mask.shape)} {mask.dtype}")
    out = encoder(adapter.embed(inputs, mask=mask, padding_mask=padding_mask))
    if layers is None:
        return out.x
    picked = [out.layers[i] for i in resolve_layers(layers, len(out.layers))]  # k x (B, T, D)
    return torch.stack(picked).mean(dim=0)  # (k, B, T, D) -> (B, T, D)


def refuse_mask(name: str, mask: Tensor | None) -> None:
    """The ``encode`` of a backbone without a mask embedding: a clear ValueError when it is given a mask."""
    if mask is not None:
        raise ValueError(f"{name} cannot encode a masked input (it has no mask embedding): fine-tune it without "
                         "input masking (task masking probability 0)")


def embed_visible(adapter: nn.Module, local: Tokens, mask: Tensor) -> Tokens:
    """The visible tokens of a student that drops the masked ones (data2vec 2.0, MAE): local features (B, N, D),
    mask (B, N) with the same count in every row -> Tokens (B, P + N_keep, D), prefix tokens first.

    The masked positions' content is removed before any step that mixes positions (the speech positional conv),
    as the reference does (fairseq examples/data2vec/models/modalities/base.py: ``apply_mask`` with
    ``encoder_zero_mask`` before ``relative_positional_encoder``), so a visible token sees nothing of them."""
    p = adapter.num_prefix_tokens
    keep = MaskInfo.from_mask(prepend_unmasked(mask, p)).ids_keep  # (B, P + N_keep), prefix tokens first
    if keep is None:
        raise ValueError("a student that drops masked tokens needs the same number of masked tokens in every row "
                         "(the same number of masked patches in every image); use a mask that masks an exact "
                         "count (masking.kind: inverse_block or random)")
    return adapter.embed_features(local, mask, drop_masked=True).select(keep)


def resolve_layers(layers: Sequence[int], depth: int) -> list[int]:
    """Block indices (0-based, negative from the end) -> distinct non-negative indices below ``depth``."""
    if len(layers) == 0:
        raise ValueError("layers must name at least one encoder block (or be None for the final output)")
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not -depth <= i < depth]
    if bad:
        raise ValueError(f"layers {bad} are not block indices of an encoder with depth {depth} "
                         f"(valid: {-depth}..{depth - 1})")
    resolved = [i % depth for i in layers]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layers {list(layers)} name the same block more than once")
    return resolved

"""The objective contract: a batch in, a loss and detached logs out. No backward, no optimizer inside."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from unimim.nn.encoder import TransformerEncoder
from unimim.nn.tokens import Tokens


@dataclass
class ObjectiveOutput:
    """loss: scalar to back-propagate; logs: detached scalars (target_std, pred_std, ...) for the metrics file."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)


class Objective(nn.Module):
    """Base of every pretraining objective: a student backbone = modality adapter + transformer encoder.

    Subclasses implement ``forward(batch) -> ObjectiveOutput``; ``batch`` holds ``inputs`` (raw modality input),
    ``mask`` (B, N) bool (True = masked) and optionally ``padding_mask`` (input-level, True = padding).
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

    def embed(self, inputs: Tensor, padding_mask: Tensor | None = None) -> Tokens:
        return self.adapter.embed(inputs, padding_mask=padding_mask)

    def encode(self, inputs: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Student features of unmasked input for evaluation: (B, T, D), prefix tokens first."""
        return self.encoder(self.adapter.embed(inputs, padding_mask=padding_mask)).x

    def update_teacher(self, step: int) -> dict[str, float]:
        """Called by the loop after every optimizer step (``step`` = completed updates). No-op without a teacher."""
        return {}

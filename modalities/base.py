"""The adapter contract: raw input of one modality -> embedded :class:`Tokens`.

An adapter embeds raw input and knows the geometry of its tokens (how many prefix tokens, how
positions are encoded); it holds no training logic. Masks are made by the modality's mask
generator in DataLoader workers and arrive in the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor, nn

from unimim.nn.tokens import Tokens


class Adapter(Protocol):
    """What the core needs from a modality adapter (an ``nn.Module``).

    An adapter may also expose ``grid: (H, W)`` when its tokens lie on a 2-D grid (images); the data2vec 2.0
    decoder then convolves in 2-D, otherwise along the sequence.
    """

    num_prefix_tokens: int  # tokens before the patches/frames (cls), never masked

    def embed(self, inputs: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None) -> Tokens:
        """Embed raw input. ``mask`` (B, N) bool marks patches/frames whose embedding is replaced by the
        learned mask token before positions are added; ``padding_mask`` is input-level padding."""
        ...


@dataclass(frozen=True)
class ModalitySpec:
    """Everything the core needs to run one modality; one entry of ``unimim.registry.MODALITIES``.

    Attributes:
        adapter_config / data_config / mask_config: the dataclasses behind the recipe's ``adapter``, ``data`` and
            ``masking`` sections.
        build_adapter(adapter_cfg, encoder_cfg) -> adapter module.
        build_pretrain_source(data_cfg, mask_cfg, adapter_cfg) -> an ExampleSource (``example(i, rng) -> dict``).
        build_eval_sets(data_cfg, adapter_cfg) -> (train, test) datasets of (inputs, label) for probes.
        collate: batch collation (None = torch's default).
        bind_run_dir(data_cfg, run_dir): keeps run-specific inputs with the run (text: copies the tokenizer into
            the run directory and points the data config at the copy); called before pretraining and probing.
    """

    adapter_config: type
    data_config: type
    mask_config: type
    build_adapter: Callable[[Any, Any], nn.Module]
    build_pretrain_source: Callable[[Any, Any, Any], Any]
    build_eval_sets: Callable[[Any, Any], tuple[Any, Any]]
    collate: Callable | None = None
    bind_run_dir: Callable[[Any, Path], None] | None = None


__all__ = ["Adapter", "ModalitySpec", "Tokens"]

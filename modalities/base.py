"""The plugin contract: what a modality and an objective declare so that the composition root (``unimim.app``)
can build, check and test them without knowing them.

An adapter embeds raw input and knows the geometry of its tokens (how many prefix tokens, how positions are
encoded); it holds no training logic. Masks are drawn by the modality's mask generator in DataLoader workers and
arrive in the :class:`~unimim.core.batch.Batch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor, nn

from unimim.eval.raw_baseline import RawExtractor
from unimim.eval.task import LabelledTask
from unimim.nn.encoder import TransformerEncoder, build_encoder
from unimim.nn.tokens import Tokens
from unimim.objectives.base import Objective


class Adapter(Protocol):
    """What the core needs from a modality adapter (an ``nn.Module``).

    An adapter may also expose ``grid: (H, W)`` when its tokens lie on a 2-D grid (images); the data2vec 2.0
    decoder then convolves in 2-D, otherwise along the sequence.
    """

    num_prefix_tokens: int  # tokens before the patches/frames (cls), never masked

    def embed(self, inputs: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None) -> Tokens:
        """Embed raw input. ``mask`` (B, N) bool marks patches/frames whose embedding is replaced by the
        learned mask token before positions are added; ``padding_mask`` is input-level padding.
        Always ``embed_features(local(inputs, padding_mask), mask)``."""
        ...

    def local(self, inputs: Tensor, padding_mask: Tensor | None = None) -> Tokens:
        """The local encoder (patch embedding, conv waveform encoder, token embedding): raw input -> per-position
        features (B, N, D) that each see only their own patch / receptive field / token, with the token padding
        mask; no prefix tokens, no positions. Run once per example; R masks share it."""
        ...

    def embed_features(self, local: Tokens, mask: Tensor | None = None, *, drop_masked: bool = False) -> Tokens:
        """Local features -> the encoder's tokens (mask token, prefix, positions). With ``drop_masked`` the caller
        keeps only the visible tokens, and no visible token may carry anything of a masked position's content
        (masked positions are zeroed before any step that mixes positions)."""
        ...


@dataclass(frozen=True)
class ModalitySpec:
    """Everything the composition root needs to run one modality; one entry of ``unimim.app.registry.MODALITIES``.

    Attributes:
        adapter_config / data_config / mask_config: the dataclasses behind the recipe's ``adapter``, ``data`` and
            ``masking`` sections.
        build_adapter(adapter_cfg, encoder_cfg) -> adapter module.
        build_pretrain_source(data_cfg, mask_cfg, adapter_cfg) -> an ExampleSource (``example(i, rng) -> dict``).
        check(cfg): settings of the whole experiment config that only fail together (e.g. the data's image size
            against the adapter's), checked when the config loads.
        bind_run_dir(data_cfg, run_dir): keeps run-specific inputs with the run (text: copies the tokenizer into
            the run directory and points the data config at the copy); called before pretraining and probing.
        tiny: overrides that make any recipe of the modality a seconds-long CPU run (tests, smoke runs).
        tiny_data(directory) -> overrides pointing the tiny run at small data made or shipped for it (None: the
            tiny overrides need no files).
        task_config: the dataclass behind the recipe's ``task`` section: the labelled data of fine-tuning and
            probes (where it lies, its format, the test split, training-time augmentation).
        build_task(task_cfg, cfg, train_augment) -> a :class:`~unimim.eval.task.LabelledTask`; ``cfg`` is the
            whole experiment config (data and adapter settings), ``train_augment`` False for probes (the
            deterministic eval transform on both splits). A split that does not exist is a clear error naming
            what was found, never a fallback.
        raw_baseline(cfg) -> a :class:`~unimim.eval.raw_baseline.RawExtractor`, the raw-input features the probes
            are compared against on the task's splits (image: pixels; speech: pooled log-mel; text: TF-IDF of the
            token ids); ``cfg`` is the whole experiment config. None: the modality has no raw-input baseline.
    """

    adapter_config: type
    data_config: type
    mask_config: type
    build_adapter: Callable[[Any, Any], nn.Module]
    build_pretrain_source: Callable[[Any, Any, Any], Any]
    check: Callable[[Any], None] | None = None
    bind_run_dir: Callable[[Any, Path], None] | None = None
    tiny: tuple[str, ...] = ()
    tiny_data: Callable[[Path], list[str]] | None = None
    task_config: type | None = None
    build_task: Callable[[Any, Any, bool], LabelledTask] | None = None
    raw_baseline: Callable[[Any], RawExtractor] | None = None


def build_vit(cfg: Any, modality: ModalitySpec) -> tuple[nn.Module, TransformerEncoder]:
    """The modality's adapter and the transformer encoder of an experiment config (``encoder.backend``: unimim's
    blocks or a timm ViT's, the same interface)."""
    return modality.build_adapter(cfg.adapter, cfg.encoder), build_encoder(cfg.encoder)


def vit_objective(cls: Callable[[nn.Module, TransformerEncoder, Any], Objective]) -> Callable[..., Objective]:
    """The factory of an objective built as ``cls(adapter, encoder, cfg.method)``."""

    def build(cfg: Any, modality: ModalitySpec) -> Objective:
        adapter, encoder = build_vit(cfg, modality)
        return cls(adapter, encoder, cfg.method)

    return build


@dataclass(frozen=True)
class ObjectiveSpec:
    """One entry of ``unimim.app.registry.OBJECTIVES``: how to build an objective and what it needs.

    Attributes:
        config: the dataclass behind the recipe's ``method`` section.
        build(cfg, modality) -> the objective (an ``nn.Module`` with ``forward(batch)`` and ``encode(...)``).
        modalities: the modalities it runs on.
        check(cfg): what it needs from the config and so from its batches (e.g. one mask per example, multi-view
            data), checked when the config loads, not at the first forward.
        tiny: overrides added to the modality's tiny overrides.
        tiny_data(directory) -> extra overrides pointing at files a tiny run needs (BEiT: a tokenizer).
        logs: metric keys every training step logs (besides loss, lr, grad_norm, samples_per_s).
    """

    config: type
    build: Callable[[Any, ModalitySpec], nn.Module]
    modalities: tuple[str, ...]
    check: Callable[[Any], None] | None = None
    tiny: tuple[str, ...] = ()
    tiny_data: Callable[[Path], list[str]] | None = None
    logs: frozenset[str] = field(default_factory=frozenset)


def require(condition: bool, message: str) -> None:
    """A config check: ``ValueError(message)`` unless ``condition``."""
    if not condition:
        raise ValueError(message)


def one_mask_per_example(name: str) -> Callable[[Any], None]:
    """The check of objectives that take one mask per example and one view."""

    def check(cfg: Any) -> None:
        require(cfg.masking.num_masks == 1, f"{name} takes one mask per example: set masking.num_masks: 1 "
                                            f"(got {cfg.masking.num_masks})")
        views = getattr(cfg.data, "views", None)
        require(views is None or not views.enabled, f"{name} takes one view per example: data.views.enabled "
                                                    "is for multi-view objectives (ibot)")

    return check


def all_checks(*checks: Callable[[Any], None] | None) -> Callable[[Any], None]:
    """One check running ``checks`` in order."""

    def check(cfg: Any) -> None:
        for c in checks:
            if c is not None:
                c(cfg)

    return check


__all__ = ["Adapter", "ModalitySpec", "ObjectiveSpec", "Tokens", "all_checks", "build_vit", "one_mask_per_example",
           "require", "vit_objective"]

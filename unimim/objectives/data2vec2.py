"""data2vec 2.0: the student encodes only the visible tokens, a conv decoder predicts the teacher's targets.

Baevski, Babu, Hsu, Auli. "Efficient Self-supervised Learning with Contextualized Target Representations for
Vision, Speech and Language", ICML 2023, §3: the teacher and its targets are those of data2vec 1.0
(:class:`~unimim.objectives.data2vec.Data2VecBase`); the student encodes only the visible tokens, the lightweight
conv decoder (:mod:`unimim.nn.decoder`) predicts every position from them plus noise in the masked slots, and each
example carries R masks that share one teacher pass (multi-mask, ``masking.num_masks``).
Ref: fairseq examples/data2vec/models/data2vec2.py@3d262bb (../shared/reference/data2vec.md §4).

The student's visible tokens carry nothing of the masked ones: the adapter zeroes masked positions before anything
that mixes positions (the speech positional conv), as the reference's ``encoder_zero_mask``
(:func:`~unimim.objectives.base.embed_visible`); the local encoder runs once per example and its output is repeated
for the R masks (:meth:`~unimim.objectives.data2vec.Data2VecBase.student_features`), where the reference clones.

Differences from the reference, deliberate or not yet done:

* Prenet blocks: the reference's modality-specific blocks (``prenet_depth``: image 2, audio/text base 0) are the
  first ordinary blocks of one encoder here (image base: depth 12 = 2 + 10). For one modality this is the same
  network: the same blocks in the same order; the targets are the top K of the shared blocks there and the top K
  of all blocks here, the same layers while K <= the shared depth (image base K = 10 of 10); the teacher averages
  both (image ``ema_local_encoder``). What differs: the reference can give the prenet its own drop-path range and
  layerdrop (the image base uses neither) and share the shared blocks across modalities (not supported here).
* ALiBi (speech base: ``use_alibi_encoder`` with a learned per-head scale) is not implemented, because no recipe
  here would use it: it belongs to the reference's 2.0 speech base config, which has no paper-scale recipe in
  ``recipes/speech/`` yet; the 2.0 CPU speech recipe takes its positions from the conv positional encoder alone.
  It comes with that recipe.

The post-LN image input matches the reference: the image modality encoder's LayerNorm over cls + patches +
positions before the first block and its N(0, 1) cls token are ``adapter.input_norm`` and ``adapter.cls_init_std``
(set in ``recipes/image/data2vec2_vitb16_in1k.yaml``; speech and text adapters end in a LayerNorm already).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from unimim.core.masking import MaskInfo
from unimim.nn.decoder import ConvDecoder, DecoderConfig, fill_masked
from unimim.nn.encoder import TransformerEncoder
from unimim.nn.tokens import Tokens
from unimim.objectives.base import embed_visible
from unimim.objectives.data2vec import Data2VecBase, Data2VecTargetConfig, StudentOutput


@dataclass
class Data2Vec2Config(Data2VecTargetConfig):
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    mask_noise_std: float = 0.01                    # std of the noise in masked decoder slots


class Data2Vec2(Data2VecBase):
    """Visible-only student encoder + :class:`ConvDecoder`; the decoder works on the token grid the adapter declares
    (images), else on the sequence."""

    cfg: Data2Vec2Config

    def __init__(self, adapter: nn.Module, encoder: TransformerEncoder, cfg: Data2Vec2Config) -> None:
        super().__init__(adapter, encoder, cfg)
        self.decoder = ConvDecoder(cfg.decoder, in_dim=encoder.cfg.dim, grid=getattr(adapter, "grid", None))
        self.attach_teacher(self.backbone, cfg.ema)

    def encode_visible(self, local: Tokens, mask: Tensor) -> Tensor:
        """The student encoder on the visible tokens only: local features (B', N, D), mask (B', N) -> (B', P +
        N_keep, D), prefix tokens first. Nothing of a masked position reaches it (:func:`embed_visible`)."""
        return self.encoder(embed_visible(self.adapter, local, mask)).x

    def student(self, local: Tokens, mask: Tensor, corrupted: bool = False) -> StudentOutput:
        """The encoder sees only visible tokens; the conv decoder fills in the rest."""
        if corrupted:
            raise ValueError("data2vec 2.0 drops masked tokens; corrupted student inputs (BERT masking) apply to "
                             "data2vec 1.0 only")
        p = self.num_prefix_tokens
        h = self.encode_visible(local, mask)  # (B, P + N_keep, D)
        visible = F.dropout(h[:, p:], self.cfg.decoder.input_dropout, self.training)  # decoder input dropout
        full = fill_masked(visible, MaskInfo.from_mask(mask).ids_restore, self.cfg.mask_noise_std)  # (B, N, D)
        return self.decoder(full), (h[:, 0] if p else None), local.padding_mask

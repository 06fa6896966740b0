"""The speech modality: raw 16 kHz waveforms, wav2vec 2.0 conv feature encoder, span / 1-D block masks, audio
manifests (fairseq TSV) and a synthesised keyword set for probing."""

from modalities.base import ModalitySpec
from modalities.speech.adapter import SpeechAdapter, SpeechAdapterConfig
from modalities.speech.data import SpeechDataConfig
from modalities.speech.masking import SpeechMaskConfig
from modalities.speech.source import build_eval_sets, build_pretrain_source, collate

SPEECH = ModalitySpec(
    adapter_config=SpeechAdapterConfig,
    data_config=SpeechDataConfig,
    mask_config=SpeechMaskConfig,
    build_adapter=lambda adapter, encoder: SpeechAdapter(adapter, dim=encoder.dim, norm_eps=encoder.norm_eps),
    build_pretrain_source=build_pretrain_source,
    build_eval_sets=build_eval_sets,
    collate=collate,
)

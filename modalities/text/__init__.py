"""The text modality: BPE tokenizers (tokenizers / sentencepiece), memory-mapped token blocks, BERT/span/random
masking, the RoBERTa-style embedding adapter and the WordNet-category probe."""

from modalities.base import ModalitySpec
from modalities.text.adapter import TextAdapter, TextAdapterConfig
from modalities.text.data import TextDataConfig
from modalities.text.masking import TextMaskConfig
from modalities.text.source import bind_run_dir, build_eval_sets, build_pretrain_source, collate

TEXT = ModalitySpec(
    adapter_config=TextAdapterConfig,
    data_config=TextDataConfig,
    mask_config=TextMaskConfig,
    build_adapter=lambda adapter, encoder: TextAdapter(adapter, dim=encoder.dim, norm_eps=encoder.norm_eps),
    build_pretrain_source=build_pretrain_source,
    build_eval_sets=build_eval_sets,
    collate=collate,
    bind_run_dir=bind_run_dir,
)

"""The image modality: patch embedding, block/random/inverse-block/SimMIM masks, image folders and Fashion-MNIST."""

from modalities.base import ModalitySpec
from modalities.image.adapter import ImageAdapter, ImageAdapterConfig
from modalities.image.data import ImageDataConfig
from modalities.image.masking import ImageMaskConfig
from modalities.image.source import build_eval_sets, build_pretrain_source

IMAGE = ModalitySpec(
    adapter_config=ImageAdapterConfig,
    data_config=ImageDataConfig,
    mask_config=ImageMaskConfig,
    build_adapter=lambda adapter, encoder: ImageAdapter(adapter, dim=encoder.dim, num_heads=encoder.num_heads),
    build_pretrain_source=build_pretrain_source,
    build_eval_sets=build_eval_sets,
)

"""The image modality: patch embedding, block/random/inverse-block/SimMIM masks, image folders and Fashion-MNIST."""

from modalities.base import ModalitySpec
from modalities.image.baseline import pixel_baseline
from modalities.image.data.dataset import ImageDataConfig
from modalities.image.data.source import build_pretrain_source, check_experiment
from modalities.image.data.task import ImageTaskConfig, build_task
from modalities.image.masking import ImageMaskConfig
from modalities.image.model.adapter import ImageAdapter, ImageAdapterConfig

IMAGE = ModalitySpec(
    adapter_config=ImageAdapterConfig,
    data_config=ImageDataConfig,
    mask_config=ImageMaskConfig,
    build_adapter=lambda adapter, encoder: ImageAdapter(adapter, dim=encoder.dim, num_heads=encoder.num_heads,
                                                        norm_eps=encoder.norm_eps),
    build_pretrain_source=build_pretrain_source,
    check=check_experiment,
    task_config=ImageTaskConfig,
    build_task=build_task,
    raw_baseline=pixel_baseline,
    tiny=(
        "encoder.dim=32", "encoder.depth=2", "encoder.num_heads=2", "encoder.drop_path=0.1",
        "adapter.image_size=16", "adapter.patch_size=4", "adapter.in_chans=1",
        "data.source=synthetic", "data.image_size=16", "data.channels=1", "data.mean=[0.5]", "data.std=[0.25]",
        "data.synthetic_size=64", "masking.min_block=2",
        "train.batch_size=8", "train.steps=3", "train.num_workers=0", "train.log_every=1",
        "train.checkpoint_every=2", "train.device=cpu", "train.threads=2", "optim.warmup_steps=1",
        "task.limit_train=64", "task.limit_test=32", "finetune.batch_size=16", "finetune.steps=4",
    ),
)

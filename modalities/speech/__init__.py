"""The speech modality: raw 16 kHz waveforms, wav2vec 2.0 conv feature encoder, span / 1-D block masks, audio
manifests (fairseq TSV), a synthesised keyword set for probing, and the labelled tasks of fine-tuning (keywords,
CTC speech recognition: ``modalities.speech.task``)."""

from modalities.base import ModalitySpec
from modalities.speech.baseline import logmel_baseline
from modalities.speech.data.dataset import SpeechDataConfig
from modalities.speech.data.source import build_pretrain_source, check_experiment
from modalities.speech.data.tiny import tiny_data
from modalities.speech.masking import SpeechMaskConfig
from modalities.speech.model.adapter import SpeechAdapter, SpeechAdapterConfig
from modalities.speech.task import SpeechTaskConfig, build_task

SPEECH = ModalitySpec(
    adapter_config=SpeechAdapterConfig,
    data_config=SpeechDataConfig,
    mask_config=SpeechMaskConfig,
    build_adapter=lambda adapter, encoder: SpeechAdapter(adapter, dim=encoder.dim, norm_eps=encoder.norm_eps),
    build_pretrain_source=build_pretrain_source,
    check=check_experiment,
    tiny=(
        "encoder.dim=32", "encoder.depth=2", "encoder.num_heads=2",
        "adapter.conv_layers=[[16,10,5],[16,3,2],[16,3,2],[32,2,2]]", "adapter.pos_conv_depth=2",
        "adapter.pos_conv_kernel=5", "adapter.pos_conv_groups=4", "data.min_samples=4000", "data.max_samples=16000",
        "data.eval_clip_samples=12000", "train.batch_size=4", "train.steps=3", "train.num_workers=0",
        "train.log_every=1", "train.checkpoint_every=2", "train.device=cpu", "train.threads=2", "optim.warmup_steps=1",
        "finetune.batch_size=4", "finetune.steps=3", "finetune.eval_batch_size=16",
    ),
    tiny_data=tiny_data,
    task_config=SpeechTaskConfig,
    build_task=build_task,
    raw_baseline=logmel_baseline,
)

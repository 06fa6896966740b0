"""The text modality: BPE tokenizers (tokenizers / sentencepiece), memory-mapped token blocks, BERT/span/random
masking, the RoBERTa-style embedding adapter, the WordNet-category probe and the labelled text tasks of fine-tuning
(sequence and sentence-pair classification from TSV / CSV / JSONL files or class folders, :mod:`.task`)."""

from modalities.base import ModalitySpec, all_checks
from modalities.text.baseline import tfidf_baseline
from modalities.text.data.dataset import TextDataConfig
from modalities.text.data.source import bind_run_dir, build_pretrain_source, check_experiment
from modalities.text.data.tiny import tiny_data
from modalities.text.masking import TextMaskConfig
from modalities.text.model.adapter import TextAdapter, TextAdapterConfig
from modalities.text.task import TextTaskConfig, build_task, check_experiment_task

TEXT = ModalitySpec(
    adapter_config=TextAdapterConfig,
    data_config=TextDataConfig,
    mask_config=TextMaskConfig,
    build_adapter=lambda adapter, encoder: TextAdapter(adapter, dim=encoder.dim, norm_eps=encoder.norm_eps),
    build_pretrain_source=build_pretrain_source,
    check=all_checks(check_experiment, check_experiment_task),
    bind_run_dir=bind_run_dir,
    tiny=(
        "encoder.dim=32", "encoder.depth=2", "encoder.num_heads=2",
        "adapter.vocab_size=300", "adapter.max_positions=32", "masking.num_masks=2",
        "data.block_size=32", "data.probe_max_tokens=16", "data.cache_dir=null", "data.probe_test_fraction=0.3",
        "train.batch_size=4", "train.steps=3", "train.num_workers=0", "train.log_every=1",
        "train.checkpoint_every=2", "train.device=cpu", "train.threads=2", "optim.warmup_steps=1",
        "probe.epochs=5", "finetune.batch_size=8", "finetune.steps=3", "finetune.eval_batch_size=64",
    ),
    tiny_data=tiny_data,
    task_config=TextTaskConfig,
    build_task=build_task,
    raw_baseline=tfidf_baseline,
)

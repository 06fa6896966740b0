"""Fine-tuning: a pretrained encoder (or its random-init twin) and a task head trained end to end on a labelled
task (:class:`~unimim.eval.task.LabelledTask`), with layer-wise lr decay; the orchestration (both inits, the
comparison, ``finetune.json``) is ``unimim.app.finetune``."""

from unimim.eval.finetune.config import FinetuneConfig, FinetuneOptimConfig
from unimim.eval.finetune.evaluate import compare_inits, evaluate
from unimim.eval.finetune.layer_decay import build_layer_decay_optimizer, layer_id, layer_scales, param_groups_lrd
from unimim.eval.finetune.model import FinetuneModel, init_head
from unimim.eval.finetune.source import TaskSource

__all__ = ["FinetuneConfig", "FinetuneModel", "FinetuneOptimConfig", "TaskSource", "build_layer_decay_optimizer",
           "compare_inits", "evaluate", "init_head", "layer_id", "layer_scales", "param_groups_lrd"]

"""``unimim finetune RUN_DIR [RECIPE.yaml] [key=value ...]``: fine-tune a run's pretrained encoder on a labelled
task of its modality and, with the same recipe, seed and budget, the same architecture from random initialisation
(the from-scratch baseline; ``finetune.baseline: false`` skips it).

    RUN_DIR/finetune/<task>/
        finetune.json, finetune.txt     both inits: test metric(s), training time, pretrained - random with a paired
                                        bootstrap interval, per-example test predictions, the resolved config
        pretrained/ random/             one training run each: model.safetensors + training_state.pt (the fine-tuned
                                        backbone + head, and what resuming needs), config.yaml, metrics.jsonl,
                                        result.json once finished

An interrupted fine-tune continues from its checkpoint; a finished init is not re-run (``train.resume=false``
starts over, the earlier files set aside). The recipe and the overrides apply over the run's own config and may
change only ``finetune.*``, ``task.*``, ``probe.*`` and the machine-level ``train.*`` settings: the pretrained
weights fix the rest. Uses nothing of an objective but ``encode`` and the module it runs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from unimim.app.experiment import RunView, TrainConfig, config_from_dict
from unimim.app.probe import load_pretrained
from unimim.app.recipes import find_recipe, resolve_recipe
from unimim.app.registry import MODALITIES, build_objective
from unimim.config import ConfigError, read_yaml, to_dict
from unimim.eval.finetune import (
    FinetuneConfig,
    FinetuneModel,
    TaskSource,
    build_layer_decay_optimizer,
    compare_inits,
    evaluate,
)
from unimim.eval.finetune.evaluate import MAIN_METRIC
from unimim.eval.task import LabelledTask
from unimim.nn.encoder import EncoderConfig
from unimim.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from unimim.train.ds_engine import DeepSpeedConfig
from unimim.train.engine import resolve_device
from unimim.train.optim import OptimConfig
from unimim.train.run import (
    RUNTIME_CHANGES,
    _flatten,
    apply_host_settings,
    check_resumable,
    run_pretraining,
    seed_everything,
)
from unimim.train.run_dir import OutputError, describe_os_error, locked, make_run_dir, remove_partial_files, set_aside

log = logging.getLogger(__name__)

FINETUNE_DIR = "finetune"
RESULT_NAME = "result.json"
INITS = ("pretrained", "random")
# what a fine-tune may set over the run's config (the pretrained weights fix the architecture and the data)
FINETUNE_CHANGES = ("finetune.", "task.", "probe.", "train.precision", *RUNTIME_CHANGES)
# what may differ when a fine-tune resumes or reuses a finished init
FINETUNE_RESUMABLE = (*RUNTIME_CHANGES, "finetune.baseline", "finetune.eval_batch_size")
RECIPE_SECTIONS = ("finetune", "task", "probe", "train")
# what a pretraining command line set for that invocation only (a job slice that stopped early, a restart): a
# fine-tune of the run starts from the defaults, not from them
INVOCATION_DEFAULTS = {"stop_after": None, "resume": True}


@dataclass
class FinetuneRun(RunView):
    """One init's training run as :func:`~unimim.train.run.run_pretraining` takes it (and as its checkpoints record
    it): the fine-tune schedule resolved into ``train`` / ``optim`` steps, in ``RUN_DIR/finetune/<task>/<init>``."""

    name: str                # the init: pretrained | random
    modality: str
    objective: str
    pretrained_step: int | None  # the pretraining checkpoint's step (pretrained init), None for random
    train: TrainConfig
    optim: OptimConfig
    finetune: FinetuneConfig
    task: dict[str, Any]
    encoder: EncoderConfig
    adapter: dict[str, Any]
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)  # single process (not enabled)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_finetune_config(run_dir: str | Path, recipe: str | Path | None = None,
                         overrides: list[str] | None = None) -> Any:
    """The run's config.yaml, then the fine-tune recipe's sections, then ``overrides``; a change outside
    :data:`FINETUNE_CHANGES` is a :class:`ConfigError`."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no config.yaml in {run_dir}: is it a run directory made by `unimim pretrain`?")
    saved = yaml.safe_load(path.read_text())
    raw = copy.deepcopy(saved)
    if isinstance(raw.get("train"), dict):  # settings of the pretraining invocation, not of the run
        raw["train"].update({k: v for k, v in INVOCATION_DEFAULTS.items() if k in raw["train"]})
    if recipe is not None:
        recipe = resolve_recipe(recipe)  # a file, or a shipped recipe's name (image/finetune_fmnist_cpu)
        extra = read_yaml(recipe, find_recipe)
        bad = sorted(set(extra) - set(RECIPE_SECTIONS))
        if bad:
            raise ConfigError(f"fine-tune recipe {recipe}: sections {bad} cannot change a pretrained run; a fine-tune "
                              f"recipe holds {', '.join(RECIPE_SECTIONS)}")
        raw = _merge(raw, extra)
    cfg = config_from_dict(raw, overrides)
    before, after = _flatten(to_dict(config_from_dict(saved))), _flatten(to_dict(cfg))
    changed = [k for k in sorted(set(before) | set(after))
               if before.get(k) != after.get(k) and not k.startswith(FINETUNE_CHANGES)]
    if changed:
        detail = "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed[:6])
        raise ConfigError(f"a fine-tune changes only finetune.*, task.*, probe.* and train's machine settings "
                          f"(device, precision, threads, workers, logging, checkpoints, resume, stop_after); this "
                          f"changes {detail}")
    return cfg


def _write_json(path: Path, obj: Any) -> None:
    """Atomically (temporary file + rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {describe_os_error(e)}") from None


@contextlib.contextmanager
def _refusal(init_dir: Path) -> Iterator[None]:
    """A fine-tune whose settings differ from those of its checkpoint or result: the differences, and what to do."""
    try:
        yield
    except ConfigError as e:
        detail = str(e).split(" Use another name=")[0]
        raise ConfigError(f"{init_dir}: {detail} Keep the settings, or set train.resume=false to fine-tune again "
                          "from the start (the earlier files are set aside)") from None


def _eval_loader(task: LabelledTask, cfg: Any) -> DataLoader:
    return DataLoader(task.test, batch_size=cfg.finetune.eval_batch_size, shuffle=False,
                      num_workers=cfg.train.num_workers, collate_fn=task.eval_collate)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def build_finetune_model(objective: torch.nn.Module, task: LabelledTask, ft: FinetuneConfig,
                         norm_eps: float = 1e-6) -> FinetuneModel:
    """The fine-tuned model of an objective: its encoding backbone + a head for ``task``. D comes from one
    encoded test example."""
    backbone = objective.encoding_backbone()
    sample = task.eval_collate([task.test[0]])
    with torch.no_grad():
        dim = objective.encode(sample.inputs, sample.padding_mask).shape[-1]
    return FinetuneModel(backbone, objective.encode, kind=task.kind, num_classes=task.num_classes, dim=int(dim),
                         num_prefix_tokens=objective.num_prefix_tokens, num_layers=objective.num_layers, cfg=ft,
                         token_padding=task.token_padding, norm_eps=norm_eps, frozen=task.frozen,
                         freeze_encoder_steps=task.freeze_encoder_steps)


def _finetune_init(init: str, cfg: Any, task: LabelledTask, run_dir: Path, task_dir: Path, *,
                   pretrained_step: int | None, progress: bool) -> dict[str, Any] | None:
    """Train and evaluate one init; its result, or None when ``train.stop_after`` ended the invocation early."""
    ft = cfg.finetune
    steps, warmup = ft.schedule(len(task.train))
    train = dataclasses.replace(cfg.train, steps=steps, batch_size=ft.batch_size, accumulate=ft.accumulate,
                                seed=ft.seed, out_dir=str(task_dir))
    optim = dataclasses.replace(ft.optim, warmup_steps=warmup)
    dropouts = {k: getattr(ft, k) for k in ("dropout", "attn_dropout") if getattr(ft, k) is not None}
    model_cfg = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, drop_path=ft.drop_path, **dropouts))
    view = FinetuneRun(name=init, modality=cfg.modality, objective=cfg.objective,
                       pretrained_step=pretrained_step if init == "pretrained" else None, train=train, optim=optim,
                       finetune=ft, task=to_dict(cfg.task), encoder=model_cfg.encoder, adapter=to_dict(cfg.adapter))
    resolved = to_dict(view)
    result_path = view.run_dir / RESULT_NAME
    if result_path.is_file():
        done = json.loads(result_path.read_text())
        with _refusal(view.run_dir):
            check_resumable(done["config"], resolved, FINETUNE_RESUMABLE)
        log.info("%s init already fine-tuned (%s); not re-run", init, result_path)
        return done
    if view.run_dir.is_dir():
        remove_partial_files(view.run_dir)
    seed_everything(ft.seed)  # the same head init, data order and augmentation for both inits
    device = resolve_device(cfg.train.device)
    objective = load_pretrained(run_dir, model_cfg, torch.device("cpu")) if init == "pretrained" \
        else build_objective(model_cfg)
    model = build_finetune_model(objective, task, ft, cfg.encoder.norm_eps)
    optimizer = partial(build_layer_decay_optimizer, cfg=optim, depth=objective.num_layers,
                        layer_decay=ft.layer_decay)
    log.info("fine-tuning the %s encoder on %s: %d steps (%d warm-up) of %d examples, layer decay %g", init,
             task.name, steps, warmup, view.effective_batch, ft.layer_decay)
    timing_path = view.run_dir / "timing.json"
    spent = json.loads(timing_path.read_text())["train_seconds"] if timing_path.is_file() else 0.0
    t0 = time.perf_counter()
    try:
        with _refusal(view.run_dir):
            run_pretraining(view, model, TaskSource(task.train, task.collate), progress=progress,
                            optimizer=optimizer, resumable=FINETUNE_RESUMABLE, desc=f"finetune {init}")
    finally:
        spent += time.perf_counter() - t0
        _write_json(timing_path, {"train_seconds": spent})
    ckpt = load_checkpoint(view.run_dir / CHECKPOINT_NAME)
    if int(ckpt["step"]) < steps:
        return None  # stopped early (train.stop_after): the same command continues
    model.load_state_dict(ckpt["model"])  # the trained weights (a run found complete was not trained here)
    model.to(device)
    t0 = time.perf_counter()
    metrics = evaluate(model, _eval_loader(task, cfg), device=device, vocab=task.classes,
                       autocast=_autocast(cfg.train.precision, device), progress=progress)
    result = {"init": init, "config": resolved, "steps": steps, "train_seconds": round(spent, 2),
              "eval_seconds": round(time.perf_counter() - t0, 2), **metrics}
    _write_json(result_path, result)
    return result


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("top1", "top5", "wer", "cer", "word_errors", "words", "char_errors", "chars", "num_examples", "steps",
            "train_seconds", "eval_seconds")
    return {k: result[k] for k in keys if k in result}


def format_table(task: LabelledTask, results: dict[str, dict[str, Any]], diff: dict[str, Any] | None) -> str:
    metric, better = MAIN_METRIC[task.kind]
    cols = ["top1", "top5"] if task.kind == "classification" else ["wer", "cer"]
    lines = [f"fine-tune on {task.name} ({task.kind}, {len(task.train)} train / {len(task.test)} test examples)",
             f"{'init':<12}" + "".join(f"{c:>12}" for c in cols) + f"{'train s':>10}"]
    for init, r in results.items():
        lines.append(f"{init:<12}" + "".join(f"{r[c]:>12.4f}" for c in cols) + f"{r['train_seconds']:>10.1f}")
    if diff is not None:
        verdict = {"neither": "no clear difference"}.get(diff["better_init"], f"{diff['better_init']} is better")
        lines.append(f"{metric}, pretrained - random: {diff['diff']:+.4f} ({diff['level']:.0%} paired bootstrap "
                     f"interval {diff['low']:+.4f} to {diff['high']:+.4f}, {len(task.test)} test examples; "
                     f"{better} is better: {verdict})")
    return "\n".join(lines)


def finetune_run(run_dir: str | Path, recipe: str | Path | None = None, overrides: list[str] | None = None, *,
                 progress: bool = True) -> dict[str, Any]:
    """Fine-tune the run's encoder (and the random-init baseline); write ``finetune.json``; return it with the
    printable ``table``. Returns ``{"complete": False, ...}`` when ``train.stop_after`` ended it early."""
    run_dir = Path(run_dir)
    cfg = load_finetune_config(run_dir, recipe, overrides)
    spec = MODALITIES[cfg.modality]
    if spec.build_task is None or not hasattr(cfg, "task"):
        raise ConfigError(f"modality {cfg.modality!r} declares no labelled task yet (ModalitySpec.build_task): "
                          "nothing to fine-tune on")
    apply_host_settings(cfg.train)
    if spec.bind_run_dir is not None:  # the run's own copy of its inputs (the text tokenizer)
        spec.bind_run_dir(cfg.data, run_dir)
    task = spec.build_task(cfg.task, cfg, True)
    pretrained_step = int(load_checkpoint(run_dir / CHECKPOINT_NAME)["step"])
    task_dir = run_dir / FINETUNE_DIR / task.name
    make_run_dir(task_dir, run_dir)
    inits = INITS if cfg.finetune.baseline else INITS[:1]
    results: dict[str, dict[str, Any]] = {}
    with locked(task_dir):
        if not cfg.train.resume:
            set_aside(task_dir)
        for init in inits:
            r = _finetune_init(init, cfg, task, run_dir, task_dir, pretrained_step=pretrained_step, progress=progress)
            if r is None:
                log.info("fine-tune stopped early (train.stop_after); run the same command to continue")
                return {"complete": False, "task_dir": str(task_dir), "table": f"fine-tune of {task.name}: stopped "
                        "early (train.stop_after); run the same command to continue"}
            results[init] = r
        diff = compare_inits(results["pretrained"], results["random"], seed=cfg.finetune.seed) \
            if len(results) == 2 else None
        first = results["pretrained"]
        out = {
            "complete": True, "run_dir": str(run_dir),
            "task": {"name": task.name, "kind": task.kind, "classes": list(task.classes),
                     "num_train": len(task.train), "num_test": len(task.test)},
            "config": {k: first["config"][k] for k in ("finetune", "task", "train", "optim")},
            "results": {init: _summary(r) for init, r in results.items()},
            "difference": diff,
            "predictions": {"labels": first["labels"], **{init: r["predictions"] for init, r in results.items()}},
            "files": {init: {"checkpoint": str(task_dir / init / CHECKPOINT_NAME),
                             "metrics": str(task_dir / init / "metrics.jsonl")} for init in results},
        }
        table = format_table(task, out["results"], diff)
        _write_json(task_dir / "finetune.json", out)
        (task_dir / "finetune.txt").write_text(table + "\n")
    return out | {"table": table, "task_dir": str(task_dir)}

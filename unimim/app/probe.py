"""``unimim probe``: linear probe and kNN on a run's frozen features, pretrained vs the same encoder with random
weights (the baseline every pretraining claim is measured against). Uses nothing of an objective but ``encode``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from unimim.app.experiment import config_from_dict
from unimim.app.registry import MODALITIES, build_objective
from unimim.config import ConfigError
from unimim.eval.compare import paired_bootstrap
from unimim.eval.features import extract_features
from unimim.eval.probe import format_probe_table, knn_accuracy, linear_probe, whiten_features
from unimim.eval.task import LabelledTask
from unimim.objectives.base import resolve_layers
from unimim.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from unimim.train.engine import resolve_device
from unimim.train.run import seed_everything

log = logging.getLogger(__name__)


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> Any:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no config.yaml in {run_dir}: is it a run directory made by `unimim pretrain`?")
    return config_from_dict(yaml.safe_load(path.read_text()), overrides)


def load_pretrained(run_dir: str | Path, cfg: Any, device: torch.device, *,
                    with_step: bool = False) -> torch.nn.Module | tuple[torch.nn.Module, int]:
    """The objective of ``cfg`` with the run's latest checkpoint loaded, in eval mode on ``device`` (and the
    checkpoint's step with ``with_step``)."""
    objective = build_objective(cfg)
    ckpt = load_checkpoint(Path(run_dir) / CHECKPOINT_NAME, map_location="cpu")
    objective.load_state_dict(ckpt["model"])
    objective = objective.to(device).eval()
    return (objective, int(ckpt["step"])) if with_step else objective


def probe_task(cfg: Any) -> LabelledTask:
    """The probes' labelled task: the config's ``task`` section, with the deterministic eval transform on both
    splits (``build_task(..., train_augment=False)``); a classification task."""
    spec = MODALITIES[cfg.modality]
    if spec.build_task is None or not hasattr(cfg, "task"):
        raise ConfigError(f"modality {cfg.modality!r} declares no labelled task (ModalitySpec.build_task): "
                          "nothing to probe on")
    task = spec.build_task(cfg.task, cfg, False)
    if task.kind != "classification":
        raise ConfigError(f"the probes classify pooled features; task {task.name!r} is a {task.kind} task "
                          "(fine-tune it with `unimim finetune`, or set task.* to a classification task)")
    return task


def probe_sets(cfg: Any) -> tuple[Dataset, Dataset, Callable[[list[Any]], Any], Any]:
    """(train, test, collate, token_padding) of the probes (:func:`probe_task`)."""
    task = probe_task(cfg)
    return task.train, task.test, task.eval_collate, task.token_padding


def probe_run(run_dir: str | Path, overrides: list[str] | None = None, *, progress: bool = True,
              out: str | Path | None = None, random_twin: bool = True) -> dict[str, Any]:
    """Probe the run's student encoder (its latest checkpoint) and a randomly initialised twin; write
    ``out`` (default ``RUN_DIR/probe.json``, beside it the table as ``.txt``); return the results.

    The result holds, besides the accuracies, the per-example test predictions of both linear probes
    (``predictions``: ``labels``, ``pretrained``, ``random``), so that any two probes on the same task can be
    compared with a paired interval later (:func:`unimim.eval.compare.paired_bootstrap`), and the checkpoint's
    ``step``. ``random_twin=False`` probes the pretrained encoder alone (``linear_gain`` is then None): the
    intermediate points of a benchmark's accuracy-against-budget curve, whose random twin does not change."""
    run_dir = Path(run_dir)
    out = run_dir / "probe.json" if out is None else Path(out)
    cfg = load_run_config(run_dir, overrides)
    pcfg = cfg.probe
    device = resolve_device(cfg.train.device)
    spec = MODALITIES[cfg.modality]
    if spec.bind_run_dir is not None:  # evaluate with the run's own copy of its inputs (the text tokenizer)
        spec.bind_run_dir(cfg.data, run_dir)
    task = probe_task(cfg)
    train_set, test_set, collate, token_padding = task.train, task.test, task.eval_collate, task.token_padding

    def loader(ds):
        return DataLoader(ds, batch_size=max(cfg.train.batch_size, 256), shuffle=False,
                          num_workers=cfg.train.num_workers, collate_fn=collate)

    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else None
    seed_everything(cfg.train.seed)
    # the random twin is drawn first, right after seeding (as it always was: the same random weights per seed)
    encoders = {"random": build_objective(cfg).to(device).eval()} if random_twin else {}
    pretrained, step = load_pretrained(run_dir, cfg, device, with_step=True)
    encoders["pretrained"] = pretrained
    if pcfg.layers is not None:  # before any feature is extracted
        depth = pretrained.num_layers
        if depth == 0:
            raise ConfigError(f"probe.layers is not supported by objective {cfg.objective!r} (its features do not "
                              "come from transformer blocks); leave it unset")
        resolve_layers(pcfg.layers, depth)
    rows, correct, predictions = [], {}, {}
    for name, model in encoders.items():
        t0 = time.perf_counter()
        feats = {}
        for split, ds in (("train", train_set), ("test", test_set)):
            encode = model.encode if pcfg.layers is None else partial(model.encode, layers=pcfg.layers)
            feats[split] = extract_features(encode, loader(ds), pool=pcfg.pool,
                                            num_prefix_tokens=model.num_prefix_tokens, device=device, dtype=dtype,
                                            progress=progress, token_padding=token_padding)
        (xtr, ytr), (xte, yte) = feats["train"], feats["test"]
        # the probes run where the encoder ran (features come back on the CPU): seconds on a GPU, not minutes
        xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))
        if pcfg.whiten:
            xtr, xte = whiten_features(xtr, xte, pcfg.whiten_eps)
        lin = linear_probe(xtr, ytr, xte, yte, pcfg, return_predictions=True)
        predictions[name] = lin["test_pred"].cpu()  # (M,) class ids
        correct[name] = predictions[name] == yte.cpu()  # (M,) bool
        knn = knn_accuracy(xtr, ytr, xte, yte, k=pcfg.knn_k, temperature=pcfg.knn_temperature)
        rows.append({"encoder": name, "linear": lin["test_acc"], "linear_train": lin["train_acc"], "knn": knn,
                     "seconds": round(time.perf_counter() - t0, 1)})
        log.info("%s encoder: linear %.4f, kNN %.4f", name, lin["test_acc"], knn)
    # the linear gain on the same test examples, with a paired bootstrap interval: "clearly better" as a number
    gain = paired_bootstrap(correct["pretrained"], correct["random"], seed=cfg.train.seed) if random_twin else None
    result = {"run_dir": str(run_dir), "task": task.name, "step": step, "num_train": len(train_set),
              "num_test": len(test_set),
              "pool": pcfg.pool, "layers": pcfg.layers, "whiten": pcfg.whiten, "results": rows,
              "linear_gain": gain,
              "predictions": {"labels": yte.cpu().tolist(), **{k: v.tolist() for k, v in predictions.items()}}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    table = format_probe_table(rows)
    if gain is not None:
        table += (f"\nlinear, pretrained - random: {gain['diff']:+.4f} ({gain['level']:.0%} paired bootstrap "
                  f"interval {gain['low']:+.4f} to {gain['high']:+.4f}, {len(test_set)} test examples)")
    out.with_suffix(".txt").write_text(table + "\n")
    return result | {"table": table}

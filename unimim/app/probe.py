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


def load_pretrained(run_dir: str | Path, cfg: Any, device: torch.device) -> torch.nn.Module:
    objective = build_objective(cfg)
    ckpt = load_checkpoint(Path(run_dir) / CHECKPOINT_NAME, map_location="cpu")
    objective.load_state_dict(ckpt["model"])
    return objective.to(device).eval()


def probe_task(cfg: Any) -> LabelledTask:
    """The labelled task of the probes: the config's ``task`` section, with the deterministic eval transform on both
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
    """(train, test, collate, token_padding) of the probes: the splits of :func:`probe_task`."""
    task = probe_task(cfg)
    return task.train, task.test, task.eval_collate, task.token_padding


def probe_run(run_dir: str | Path, overrides: list[str] | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Probe the run's student encoder and a randomly initialised twin; write probe.json; return the results."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, overrides)
    pcfg = cfg.probe
    device = resolve_device(cfg.train.device)
    spec = MODALITIES[cfg.modality]
    if spec.bind_run_dir is not None:  # evaluate with the run's own copy of its inputs (the text tokenizer)
        spec.bind_run_dir(cfg.data, run_dir)
    train_set, test_set, collate, token_padding = probe_sets(cfg)

    def loader(ds):
        return DataLoader(ds, batch_size=max(cfg.train.batch_size, 256), shuffle=False,
                          num_workers=cfg.train.num_workers, collate_fn=collate)

    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else None
    seed_everything(cfg.train.seed)
    encoders = {"random": build_objective(cfg).to(device).eval(), "pretrained": load_pretrained(run_dir, cfg, device)}
    if pcfg.layers is not None:  # before any feature is extracted
        depth = encoders["random"].num_layers
        if depth == 0:
            raise ConfigError(f"probe.layers is not supported by objective {cfg.objective!r} (its features do not "
                              "come from transformer blocks); leave it unset")
        resolve_layers(pcfg.layers, depth)
    rows, correct = [], {}
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
        correct[name] = lin["test_pred"].cpu() == yte.cpu()  # (M,) bool
        knn = knn_accuracy(xtr, ytr, xte, yte, k=pcfg.knn_k, temperature=pcfg.knn_temperature)
        rows.append({"encoder": name, "linear": lin["test_acc"], "linear_train": lin["train_acc"], "knn": knn,
                     "seconds": round(time.perf_counter() - t0, 1)})
        log.info("%s encoder: linear %.4f, kNN %.4f", name, lin["test_acc"], knn)
    # the linear gain on the same test examples, with a paired bootstrap interval: "clearly better" as a number
    gain = paired_bootstrap(correct["pretrained"], correct["random"], seed=cfg.train.seed)
    result = {"run_dir": str(run_dir), "num_train": len(train_set), "num_test": len(test_set),
              "pool": pcfg.pool, "layers": pcfg.layers, "whiten": pcfg.whiten, "results": rows,
              "linear_gain": gain}
    (run_dir / "probe.json").write_text(json.dumps(result, indent=2))
    table = format_probe_table(rows) + (
        f"\nlinear, pretrained - random: {gain['diff']:+.4f} ({gain['level']:.0%} paired bootstrap interval "
        f"{gain['low']:+.4f} to {gain['high']:+.4f}, {len(test_set)} test examples)")
    (run_dir / "probe.txt").write_text(table + "\n")
    return result | {"table": table}

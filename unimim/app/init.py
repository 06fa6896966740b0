"""The ``init:`` key: start an objective from existing weights (continued pretraining; fine-tuning calls the same).

    init: hf:PATH          a transformers ``save_pretrained`` directory (config.json + model.safetensors) of a class
                           ``unimim export`` writes: Data2VecVision, BEiT, ViT, ViTMAE (with decoder), Data2VecAudio,
                           Data2VecText
    init: timm:NAME@FILE   a safetensors state dict of timm model NAME (a VisionTransformer, or a SwinTransformer for
                           SimMIM's Swin backbone)
    init: run:RUN_DIR      the encoder a ``unimim pretrain`` run's ``encode`` uses (iBOT: its teacher)

:func:`initialise` converts the source to the objective's parameter names, loads the student's backbone (and any
other part the source carries under the same names, e.g. MAE's decoder from ``ViTMAEForPreTraining``), starts the
EMA teacher as a copy of the student, and returns a record; ``cfg.init_sha256`` receives the SHA-256 of the weights
file (of the encoder's safetensors serialisation for ``run:``), and a value already there must match. A source
whose names do not fit raises ``ValueError`` naming the missing and unexpected keys; parts the source does not
carry (heads, decoders, mask tokens) keep their fresh initialisation and are listed in the record. Only
safetensors and ``save_pretrained`` directories are read: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modalities.image.interop.convert_hf import from_hf_data2vec_vision
from modalities.image.interop.convert_hf_vit import from_hf_vit_layout
from modalities.image.interop.convert_hf_vit import materialise_positions as image_positions
from modalities.image.interop.convert_mae import from_hf_vit_mae
from modalities.image.interop.convert_timm import from_timm_beit, from_timm_vit
from modalities.speech.interop.convert_hf import from_hf_data2vec_audio
from modalities.text.interop.convert_hf import from_hf_data2vec_text
from modalities.text.interop.export import materialise_positions as text_positions

log = logging.getLogger(__name__)

POSITION_ATOL = 1e-4  # a learned table this close to the target's fixed sin-cos table is that table
FRESH_SUFFIXES = ("mask_token", "mask_emb")  # pretraining-only parameters no encoder format carries


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"init: {path} does not exist")
    try:
        return load_file(str(path))
    except Exception as e:  # a file that is not safetensors: one line, not the parser's traceback
        raise ValueError(f"init: {path} is not a safetensors file ({e})") from None


def _hf_state(path: Path, config: dict[str, Any]) -> dict[str, Tensor]:
    """The state dict of the directory's model as transformers builds it (its current parameter names, whatever
    names the file was saved with), read from the safetensors file only; missing or unexpected keys are an error."""
    from unimim.app.export import import_transformers

    transformers = import_transformers()
    arch = (config.get("architectures") or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        cls = transformers.AutoModel
    model, info = cls.from_pretrained(path, output_loading_info=True, use_safetensors=True)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise ValueError(f"init: hf:{path} does not load cleanly into {type(model).__name__}: {bad}")
    return dict(model.state_dict())


def _from_hf(path: Path) -> tuple[dict[str, Tensor], str]:
    """A save_pretrained directory -> (state under the objective's names, SHA-256 of model.safetensors)."""
    if not path.is_dir():
        raise FileNotFoundError(f"init: hf:{path} is not a save_pretrained directory")
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"init: hf:{path} needs config.json and model.safetensors (one shard, safetensors)")
    config = json.loads((path / "config.json").read_text())
    weights = path / "model.safetensors"
    state = _hf_state(path, config)
    kind, depth = config.get("model_type"), config.get("num_hidden_layers")
    if kind == "data2vec-vision":
        out = from_hf_data2vec_vision(state, depth=depth)
    elif kind in ("vit", "beit"):
        out = from_hf_vit_layout(state, depth=depth)
    elif kind == "vit_mae":
        side = config["image_size"] // config["patch_size"]
        return from_hf_vit_mae(state, depth=depth, decoder_depth=config["decoder_num_hidden_layers"],
                               grid=(side, side)), sha256_file(weights)
    elif kind == "data2vec-audio":
        out = from_hf_data2vec_audio(state)
    elif kind == "data2vec-text":
        out = from_hf_data2vec_text(state, pad_token_id=config.get("pad_token_id", 1))
    else:
        raise ValueError(f"init: hf:{path} is a {kind!r} model; supported: data2vec-vision, beit, vit, vit_mae, "
                         "data2vec-audio, data2vec-text")
    return {f"backbone.{k}": v for k, v in out.items()}, sha256_file(weights)


def _from_timm(spec: str, objective: nn.Module, cfg: Any) -> tuple[dict[str, Tensor], str]:
    name, sep, file = spec.partition("@")
    if not sep or not name or not file:
        raise ValueError(f"init: timm:{spec} must be timm:NAME@FILE (FILE a safetensors state dict)")
    path = Path(file)
    state = _load_safetensors(path)
    backbone = objective.backbone
    if "swin" in backbone:
        return {f"backbone.swin.model.{k}": v for k, v in state.items()}, sha256_file(path)
    if cfg.adapter.positions == "relative":  # timm's Beit with a shared table
        out = from_timm_beit(state, depth=cfg.encoder.depth)
        return {f"backbone.{k}": v for k, v in out.items()}, sha256_file(path)
    pre = {k: state.pop(k) for k in [k for k in state if k.startswith("norm_pre.")]}
    out = from_timm_vit(state, depth=cfg.encoder.depth)
    out.update({f"adapter.norm.{k[len('norm_pre.'):]}": v for k, v in pre.items()})
    log.info("init: timm %s from %s", name, path)
    return {f"backbone.{k}": v for k, v in out.items()}, sha256_file(path)


def _from_run(run_dir: Path) -> tuple[dict[str, Tensor], str]:
    from safetensors.torch import save

    from unimim.app.export import encode_backbone
    from unimim.app.probe import load_pretrained, load_run_config

    src_cfg = load_run_config(run_dir)
    source = load_pretrained(run_dir, src_cfg, torch.device("cpu"))
    backbone = encode_backbone(source, src_cfg)
    state = dict(backbone.state_dict())
    if "adapter" in backbone and src_cfg.modality == "image":
        image_positions(backbone["adapter"], state)
    elif "adapter" in backbone and src_cfg.modality == "text":
        text_positions(backbone["adapter"], state)
    state = {f"backbone.{k}": v.detach().float().contiguous() for k, v in state.items()}
    return state, hashlib.sha256(save(state)).hexdigest()


def _fixed_positions(adapter: nn.Module, like: Tensor) -> Tensor | None:
    """The fixed table an adapter adds (image sin-cos (1, P + N, D), text sin-cos / zeros (T, D)), or None when
    its positions are learned (a parameter) or relative."""
    if isinstance(getattr(adapter, "pos_embed", None), nn.Parameter) or getattr(adapter, "rel_pos", None) is not None:
        return None
    table = getattr(adapter, "pos_table", None)
    if table is None:
        table = getattr(adapter, "pos_embed", None)
    return torch.zeros_like(like) if table is None else table


def _fit_to_target(state: dict[str, Tensor], objective: nn.Module, target: dict[str, Tensor]) -> dict[str, Tensor]:
    """Reconcile representations that differ only in form: a source's learned table equal to the target's fixed
    positions is dropped; q / k / v biases and BEiT's q / v biases are converted (the key bias cancels in the
    softmax, and a q / v model is one with a zero key bias)."""
    key = "backbone.adapter.pos_embed"
    backbone = getattr(objective, "backbone", None)
    adapter = backbone["adapter"] if isinstance(backbone, nn.ModuleDict) and "adapter" in backbone else None
    if key in state and key not in target and adapter is not None:
        fixed = _fixed_positions(adapter, state[key])
        if fixed is not None:
            src = state.pop(key)
            if src.shape != fixed.shape or (src.float() - fixed.float().cpu()).abs().max() > POSITION_ATOL:
                raise ValueError("init: the source's positions are learned, the run's adapter.positions is fixed "
                                 f"({adapter.cfg.positions}); set adapter.positions: learned to take them")
    for k in list(state):
        if k.endswith("attn.qkv.bias") and k not in target and k.replace("qkv.bias", "q_bias") in target:
            q, _, v = state.pop(k).chunk(3)  # (3D,) -> 3 x (D,)
            state[k.replace("qkv.bias", "q_bias")], state[k.replace("qkv.bias", "v_bias")] = q, v
        elif k.endswith("attn.q_bias") and k not in target and k.replace("q_bias", "qkv.bias") in target:
            q, v = state.pop(k), state.pop(k.replace("q_bias", "v_bias"))
            state[k.replace("q_bias", "qkv.bias")] = torch.cat([q, torch.zeros_like(q), v])  # (3D,)
    return state


def reset_teacher(objective: nn.Module) -> bool:
    """Make an objective's EMA teacher a copy of its student again (after the student took new weights). Returns
    whether it has a teacher."""
    teacher = getattr(objective, "teacher", None)
    if teacher is None:
        return False
    names = list(teacher.module.state_dict())
    root = objective.backbone.state_dict() if set(names) <= set(objective.backbone.state_dict()) \
        else objective.state_dict()
    teacher.module.load_state_dict({k: root[k].float() for k in names})
    return True


def initialise(objective: nn.Module, cfg: Any) -> dict[str, Any]:
    """Load ``cfg.init`` into ``objective`` (student; teacher = copy of it); set ``cfg.init_sha256``; return the
    record {"init", "sha256", "loaded", "fresh"}. ``ValueError`` on names or shapes that do not fit."""
    kind, _, rest = cfg.init.partition(":")
    if kind == "hf":
        state, digest = _from_hf(Path(rest))
    elif kind == "timm":
        state, digest = _from_timm(rest, objective, cfg)
    elif kind == "run":
        state, digest = _from_run(Path(rest))
    else:
        raise ValueError(f"init={cfg.init!r} must be hf:PATH, timm:NAME@FILE or run:RUN_DIR")
    recorded = getattr(cfg, "init_sha256", None)
    if recorded is not None and recorded != digest:
        raise ValueError(f"init: {cfg.init} has SHA-256 {digest}, the config records {recorded} (the weights "
                         "changed; remove init_sha256 to accept them)")
    target = {k: v for k, v in objective.state_dict().items() if not k.endswith("_extra_state")}
    state = _fit_to_target(dict(state), objective, target)
    backbone = [k for k in target if k.startswith("backbone.")]
    missing = sorted(k for k in backbone if k not in state and not k.endswith(FRESH_SUFFIXES))
    unexpected = sorted(k for k in state if k not in target)
    if missing or unexpected:
        raise ValueError(f"init: {cfg.init} does not fit objective {cfg.objective!r}: missing {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in state.items()
              if v.shape != target[k].shape]
    if shapes:
        raise ValueError(f"init: {cfg.init} has other shapes than the config: {shapes[:4]}")
    with torch.no_grad():
        for k, v in state.items():
            target[k].copy_(v)  # state_dict tensors share storage with the parameters and buffers
    has_teacher = reset_teacher(objective)
    fresh = sorted(k for k in target if k not in state)
    cfg.init_sha256 = digest
    log.info("init: %d tensors from %s (sha256 %s); %s; fresh: %s", len(state), cfg.init, digest[:12],
             "teacher = student" if has_teacher else "no teacher", fresh[:6] + (["..."] if len(fresh) > 6 else []))
    return {"init": cfg.init, "sha256": digest, "loaded": len(state), "fresh": fresh}

"""``unimim export RUN_DIR --to hf|timm``: a run's encoder as a Hugging Face ``save_pretrained`` directory or a timm
state dict, verified against the run before anything is written.

What is exported is the backbone that the objective's ``encode`` uses (iBOT's teacher by default,
``method.encode_with``); which class or model it becomes is the modality's choice
(``modalities/<modality>/interop/export.py``). The export runs the written model, loaded back the way a user loads
it, and ``encode`` on one seeded batch and refuses (nothing is left behind) when any output differs by more than
``ATOL``. ``transformers`` is imported only here and only for ``--to hf`` (the ``unimim[hf]`` extra).

Output:
    hf:   DIR/config.json + DIR/model.safetensors (``transformers.AutoModel.from_pretrained(DIR)``; MAE with its
          decoder: ``AutoModelForPreTraining``)
    timm: DIR/model.safetensors + DIR/timm_model.json ({"model_name", "kwargs", "weights"}): ``timm.create_model(
          model_name, pretrained=False, **kwargs).load_state_dict(safetensors.torch.load_file(weights))``
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from modalities.image.interop import export as image_export
from modalities.speech.interop import export as speech_export
from modalities.text.data.tokenizer import NUM_SPECIAL, PAD_ID
from modalities.text.interop import export as text_export
from unimim.app.probe import load_pretrained, load_run_config

log = logging.getLogger(__name__)

ATOL = 1e-4  # largest |exported - encode| accepted on the verification batch
TIMM_JSON = "timm_model.json"
WEIGHTS = "model.safetensors"
HF_EXPORTERS: dict[str, Callable[..., tuple[str, str, dict[str, Any], dict[str, Tensor]]]] = {
    "image": image_export.hf_export,
    "speech": speech_export.hf_export,
    "text": text_export.hf_export,
}


def import_transformers() -> Any:
    """``transformers``, or a one-line ``RuntimeError`` naming the extra that installs it."""
    try:
        import transformers
    except ImportError:
        raise RuntimeError("Hugging Face export and init need transformers: pip install 'unimim[hf]'") from None
    return transformers


def encode_backbone(objective: nn.Module, cfg: Any) -> nn.ModuleDict:
    """The backbone (``{"adapter", "encoder"}`` or ``{"swin"}``) whose weights ``objective.encode`` uses: the EMA
    teacher's where ``method.encode_with`` is ``teacher`` (iBOT), the student's otherwise."""
    if getattr(cfg.method, "encode_with", "student") == "teacher":
        module = objective.teacher.module
        return module["backbone"] if "backbone" in module else module
    backbone = getattr(objective, "backbone", None)
    if not isinstance(backbone, nn.ModuleDict):
        raise ValueError(f"objective {cfg.objective!r} has no transformer backbone to export (its encode is not an "
                         "adapter + encoder)")
    return backbone


def example_inputs(cfg: Any, batch: int = 2, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """A seeded verification batch of the run's modality: (inputs, valid (B, T) bool of the positions compared |
    None for all). Images N(0, 1) (B, C, S, S); waveforms 0.1 N(0, 1) of 64 frames; token ids with the second row
    right-padded by a quarter (its padded positions are not compared)."""
    g = torch.Generator().manual_seed(seed)
    if cfg.modality == "image":
        a = cfg.adapter
        return torch.randn(batch, a.in_chans, a.image_size, a.image_size, generator=g), None
    if cfg.modality == "speech":
        return 0.1 * torch.randn(batch, cfg.adapter.frame_stride * 64, generator=g), None
    if cfg.modality == "text":
        t = min(cfg.adapter.max_positions, 32)
        ids = torch.randint(NUM_SPECIAL, cfg.adapter.vocab_size, (batch, t), generator=g)
        ids[1:, t - t // 4:] = PAD_ID
        return ids, ids.ne(PAD_ID)
    raise ValueError(f"no example inputs for modality {cfg.modality!r}")


def _max_diff(a: Tensor, b: Tensor, valid: Tensor | None, what: str) -> float:
    if a.shape != b.shape:
        raise ValueError(f"export verification failed: {what} gives {tuple(a.shape)}, encode {tuple(b.shape)}")
    d = (a.float() - b.float()).abs()
    return float((d[valid] if valid is not None else d).max())


def _hf_outputs(model: nn.Module, hf_class: str, inputs: Tensor, cfg: Any) -> Tensor:
    """(B, T, D) last hidden states of a loaded HF model on the verification batch (MAE: the full sequence)."""
    if cfg.modality == "image":
        if hf_class == image_export.MAE:
            n = (cfg.adapter.image_size // cfg.adapter.patch_size) ** 2
            ratio, model.config.mask_ratio = model.config.mask_ratio, 0.0  # keep every patch, in grid order
            try:
                return model.vit(pixel_values=inputs, noise=torch.arange(n).expand(inputs.shape[0], n)
                                 .float()).last_hidden_state
            finally:
                model.config.mask_ratio = ratio
        return model(pixel_values=inputs).last_hidden_state
    if cfg.modality == "speech":
        return model(input_values=inputs).last_hidden_state
    return model(input_ids=inputs, attention_mask=inputs.ne(PAD_ID).long()).last_hidden_state


def _mae_decoder_diff(model: nn.Module, objective: nn.Module, inputs: Tensor, cfg: Any) -> float:
    """Max |HF logits - MAE.predict| for one mask of the run's ratio (HF keeps the lowest-noise patches)."""
    g = torch.Generator().manual_seed(1)
    b, n = inputs.shape[0], (cfg.adapter.image_size // cfg.adapter.patch_size) ** 2
    keep = int(n * (1 - model.config.mask_ratio))
    noise = torch.rand(b, n, generator=g)
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask.scatter_(1, noise.argsort(dim=1)[:, keep:], True)  # (B, N), True = masked
    ordered = mask.float() + torch.arange(n).float() / n  # visible patches first, each group in grid order
    logits = model(pixel_values=inputs, noise=ordered).logits  # (B, N, p*p*C)
    return _max_diff(logits, objective.predict(inputs, mask), None, "the MAE decoder")


def _write_hf(objective: nn.Module, backbone: nn.ModuleDict, cfg: Any, hf_class: str | None, tmp: Path,
              inputs: Tensor, reference: Tensor, valid: Tensor | None) -> dict[str, Any]:
    transformers = import_transformers()
    name, config_name, kwargs, state = HF_EXPORTERS[cfg.modality](objective, backbone, cfg, hf_class)
    config = getattr(transformers, config_name)(**kwargs, architectures=[name])
    torch.manual_seed(0)  # heads outside the encoder (a pooler) get HF's seeded initialisation
    model = getattr(transformers, name)(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing or unexpected:
        raise RuntimeError(f"{name}: the converted state does not fit (missing {missing[:8]}, unexpected "
                           f"{unexpected[:8]})")
    model.save_pretrained(tmp)
    auto = transformers.AutoModelForPreTraining if name == image_export.MAE else transformers.AutoModel
    loaded, info = auto.from_pretrained(tmp, output_loading_info=True)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad or type(loaded).__name__ != name:
        raise RuntimeError(f"{auto.__name__}.from_pretrained gives {type(loaded).__name__} with {bad}")
    loaded.eval()
    with torch.no_grad():
        diffs = {"encoder": _max_diff(_hf_outputs(loaded, name, inputs, cfg), reference, valid, name)}
        if name == image_export.MAE:
            diffs["decoder"] = _mae_decoder_diff(loaded, objective, inputs, cfg)
    return {"target": "hf", "class": name, "max_abs_diff": diffs}


def _write_timm(backbone: nn.ModuleDict, cfg: Any, tmp: Path, inputs: Tensor, reference: Tensor) -> dict[str, Any]:
    import timm
    from safetensors.torch import load_file, save_file

    if cfg.modality != "image":
        raise ValueError(f"--to timm exports image backbones; a {cfg.modality} run exports with --to hf")
    name, kwargs, state = image_export.timm_export(backbone, cfg)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp / WEIGHTS))
    (tmp / TIMM_JSON).write_text(json.dumps({"model_name": name, "kwargs": kwargs, "weights": WEIGHTS}, indent=2))
    spec = json.loads((tmp / TIMM_JSON).read_text())
    model = timm.create_model(spec["model_name"], pretrained=False, **spec["kwargs"]).eval()
    result = model.load_state_dict(load_file(str(tmp / spec["weights"])), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"timm {name}: missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}")
    with torch.no_grad():
        out = model.forward_features(inputs)
    if out.dim() == 4:  # Swin: (B, h, w, F) -> (B, h*w, F)
        out = out.flatten(1, 2)
    return {"target": "timm", "model_name": name, "max_abs_diff": {"encoder": _max_diff(out, reference, None, name)}}


def export_run(run_dir: str | Path, to: Literal["hf", "timm"], out: str | Path | None = None, *,
               hf_class: str | None = None) -> Path:
    """Export the encoder of ``run_dir`` to ``out`` (default RUN_DIR/export-<to>), verified: ``ValueError`` and
    nothing written when the exported model differs from ``encode`` by more than ``ATOL`` or cannot represent the
    run's architecture (the message names the setting). Returns the output directory."""
    if to not in ("hf", "timm"):
        raise ValueError(f"--to must be hf or timm, got {to!r}")
    if hf_class is not None and to != "hf":
        raise ValueError("--hf-class applies to --to hf only")
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    out = Path(out) if out is not None else run_dir / f"export-{to}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty directory; remove it or pass --out")
    objective = load_pretrained(run_dir, cfg, torch.device("cpu")).float().eval()
    backbone = encode_backbone(objective, cfg)
    inputs, valid = example_inputs(cfg)
    with torch.no_grad():
        reference = objective.encode(inputs)  # (B, T, D)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        if to == "hf":
            report = _write_hf(objective, backbone, cfg, hf_class, tmp, inputs, reference, valid)
        else:
            report = _write_timm(backbone, cfg, tmp, inputs, reference)
        worst = max(report["max_abs_diff"].values())
        if not worst <= ATOL:
            raise ValueError(f"export verification failed: the exported model differs from the run's encode by "
                             f"{worst:.3g} > {ATOL:g} ({report['max_abs_diff']}); nothing written")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("exported %s/%s to %s (%s), max |diff| vs encode %s", cfg.modality, cfg.objective, out,
             report.get("class") or report.get("model_name"), report["max_abs_diff"])
    return out

"""``unimim export`` and ``init:``: tiny trained runs of every modality and objective family are exported, loaded
back by transformers / timm in a fresh Python process (nothing of unimim imported there), and compared with the
run's ``encode`` on inputs the export never saw; refused architectures give one line; continued pretraining from an
exported model starts from exactly its weights."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.conftest import tiny_overrides
from unimim.app import export as export_mod
from unimim.app.cli import main
from unimim.app.experiment import load_recipe
from unimim.app.export import export_run
from unimim.app.pretrain import pretrain
from unimim.app.probe import load_pretrained, load_run_config
from unimim.app.registry import MODALITIES, build_objective
from unimim.train.data import make_loader
from unimim.train.run import seed_everything

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
ATOL = 1e-4
RUNS = {  # name -> recipe; one tiny trained run per modality and objective family (and both text/image positions)
    "d2v_image": "image/data2vec_fmnist_cpu.yaml",      # relative bias + layer scale
    "d2v2_image": "image/data2vec2_fmnist_cpu.yaml",    # fixed sin-cos positions
    "vit_variant": "image/data2vec2_fmnist_cpu.yaml",   # + VARIANT: the ViT options only timm has
    "mae": "image/mae_fmnist_cpu.yaml",
    "simmim": "image/simmim_fmnist_cpu.yaml",
    "simmim_swin": "image/simmim_swin_fmnist_cpu.yaml",
    "beit": "image/beit_fmnist_cpu.yaml",
    "ibot": "image/ibot_fmnist_cpu.yaml",               # encodes with its EMA teacher
    "speech": "speech/data2vec_tuxpaint_cpu.yaml",
    "text": "text/data2vec_text_cpu.yaml",              # learned positions
    "text_sincos": "text/data2vec2_text_cpu.yaml",      # fixed sin-cos positions
}
VARIANT = ["adapter.input_norm=true", "adapter.cls_token=false", "encoder.qkv_bias=qv", "encoder.layer_scale_init=0.1"]
FASTER = {"speech": ("data.max_samples=6000",)}  # seconds of the test's wall clock, nothing of what is tested
EXPORTS = [  # (run, target, hf class or None, the class transformers must build / the timm model)
    ("d2v_image", "hf", None, "Data2VecVisionModel"),
    ("d2v_image", "hf", "BeitModel", "BeitModel"),
    ("d2v_image", "timm", None, "Beit"),
    ("d2v2_image", "hf", None, "ViTModel"),
    ("d2v2_image", "timm", None, "VisionTransformer"),
    ("vit_variant", "timm", None, "VisionTransformer"),
    ("mae", "hf", None, "ViTModel"),
    ("mae", "hf", "ViTMAEForPreTraining", "ViTMAEForPreTraining"),
    ("mae", "timm", None, "VisionTransformer"),
    ("simmim", "hf", None, "Data2VecVisionModel"),
    ("simmim_swin", "timm", None, "SwinTransformer"),
    ("beit", "hf", None, "BeitModel"),
    ("ibot", "hf", None, "ViTModel"),
    ("ibot", "timm", None, "VisionTransformer"),
    ("speech", "hf", None, "Data2VecAudioModel"),
    ("text", "hf", None, "Data2VecTextModel"),
    ("text_sincos", "hf", None, "Data2VecTextModel"),
]

# Run in a fresh interpreter: only transformers / timm / safetensors, as a user of the exported files would.
LOADER = r"""
import json, sys, torch, transformers, timm
from safetensors.torch import load_file, save_file
jobs = json.loads(open(sys.argv[1]).read())
outs, report = {}, {}
for i, job in enumerate(jobs):
    x = load_file(job["inputs"])
    with torch.no_grad():
        if job["target"] == "timm":
            spec = json.load(open(job["dir"] + "/timm_model.json"))
            model = timm.create_model(spec["model_name"], pretrained=False, **spec["kwargs"]).eval()
            res = model.load_state_dict(load_file(job["dir"] + "/" + spec["weights"]), strict=True)
            report[i] = {"class": type(model).__name__, "bad": []}
            y = model.forward_features(x["x"])
            outs[f"{i}"] = y.flatten(1, 2) if y.dim() == 4 else y
            continue
        auto = transformers.AutoModelForPreTraining if job["cls"] == "ViTMAEForPreTraining" else transformers.AutoModel
        model, info = auto.from_pretrained(job["dir"], output_loading_info=True)
        specific, info2 = getattr(transformers, job["cls"]).from_pretrained(job["dir"], output_loading_info=True)
        keys = ("missing_keys", "unexpected_keys", "mismatched_keys")
        bad = [k for d in (info, info2) for key in keys for k in d[key]]
        report[i] = {"class": type(model).__name__, "bad": bad}
        model.eval()
        if job["cls"] == "ViTMAEForPreTraining":
            outs[f"{i}"] = model(pixel_values=x["x"], noise=x["noise"]).logits
        elif "pixel_values" in job["arg"]:
            outs[f"{i}"] = model(pixel_values=x["x"]).last_hidden_state
        elif "input_values" in job["arg"]:
            outs[f"{i}"] = model(input_values=x["x"]).last_hidden_state
        else:
            outs[f"{i}"] = model(input_ids=x["x"], attention_mask=x["valid"].long()).last_hidden_state
save_file({k: v.contiguous() for k, v in outs.items()}, sys.argv[2])
open(sys.argv[3], "w").write(json.dumps(report))
"""


def _cfg(recipe: str, out: Path, name: str, extra: list[str] = ()):
    base = load_recipe(ROOT / "recipes" / recipe)
    return load_recipe(ROOT / "recipes" / recipe, tiny_overrides(base.modality, base.objective, out) + [
        f"train.out_dir={out}", f"name={name}", "train.steps=1", "train.checkpoint_every=1", "train.batch_size=2",
        "optim.warmup_steps=0",  # the one step trains: the exported weights are not the initial ones
        *FASTER.get(Path(recipe).parts[0], ()), *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    return {name: pretrain(_cfg(recipe, out, name, VARIANT if name == "vit_variant" else []), progress=False).run_dir
            for name, recipe in RUNS.items()}


def _inputs(cfg, seed: int = 7) -> dict[str, torch.Tensor]:
    """Inputs the export's own check never used (another seed); text with a right-padded second row."""
    g = torch.Generator().manual_seed(seed)
    if cfg.modality == "image":
        return {"x": torch.rand(3, cfg.adapter.in_chans, cfg.adapter.image_size, cfg.adapter.image_size, generator=g)}
    if cfg.modality == "speech":
        return {"x": 0.2 * torch.randn(2, 6000, generator=g)}
    ids = torch.randint(4, cfg.adapter.vocab_size, (2, 20), generator=g)
    ids[1, 14:] = 1  # <pad>
    return {"x": ids, "valid": ids.ne(1)}


def test_every_family_exports_and_loads_in_a_fresh_process(runs, tmp_path):
    jobs, expected = [], []
    for i, (run, target, hf_class, cls) in enumerate(EXPORTS):
        out = export_run(runs[run], target, tmp_path / f"{i}-{run}-{target}", hf_class=hf_class)
        cfg = load_run_config(runs[run])
        objective = load_pretrained(runs[run], cfg, torch.device("cpu"))
        x = _inputs(cfg)
        with torch.no_grad():
            if cls == "ViTMAEForPreTraining":  # the decoder too: HF keeps the lowest-noise patches
                n = x["x"].shape[0], (cfg.adapter.image_size // cfg.adapter.patch_size) ** 2
                mask = torch.rand(*n, generator=torch.Generator().manual_seed(3)).argsort(1).argsort(1) >= n[1] // 4
                x["noise"] = mask.float() + torch.linspace(0, 0.5, n[1])
                ref = objective.predict(x["x"], mask)  # (B, N, p*p*C)
            else:
                ref = objective.encode(x["x"])  # (B, T, D)
        save_file(x, str(tmp_path / f"in{i}.safetensors"))
        arg = {"image": "pixel_values", "speech": "input_values", "text": "input_ids"}[cfg.modality]
        jobs.append({"dir": str(out), "target": target, "cls": cls, "arg": arg,
                     "inputs": str(tmp_path / f"in{i}.safetensors")})
        expected.append((ref, x.get("valid")))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "jobs.json"), str(tmp_path / "out.safetensors"),
                           str(tmp_path / "report.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    outs, report = load_file(str(tmp_path / "out.safetensors")), json.loads((tmp_path / "report.json").read_text())
    for i, ((ref, valid), (run, target, _, cls)) in enumerate(zip(expected, EXPORTS)):
        assert report[str(i)] == {"class": cls, "bad": []}, (run, target)
        got = outs[str(i)]
        assert got.shape == ref.shape, (run, target, got.shape, ref.shape)
        diff = (got - ref).abs()
        diff = diff[valid] if valid is not None else diff
        assert diff.max() < ATOL, (run, target, float(diff.max()))
        assert ref.abs().max() > 0.1  # not a degenerate comparison


def test_refused_architectures_give_one_line_and_leave_nothing(runs, tmp_path, caplog):
    cases = [(runs["d2v_image"], ["--to", "hf", "--hf-class", "ViTModel"], "encoder.layer_scale_init: 0.1"),
             (runs["simmim_swin"], ["--to", "hf"], "method.backbone: swin"),
             (runs["d2v2_image"], ["--to", "hf", "--hf-class", "ViTMAEForPreTraining"], "objective 'data2vec2'"),
             (runs["speech"], ["--to", "timm"], "--to timm exports image backbones"),
             (runs["vit_variant"], ["--to", "hf"], "adapter.input_norm: true")]
    for run, args, needle in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="unimim"):
            rc = main(["export", str(run), *args, "--out", str(tmp_path / "x")])
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert rc == 1 and len(errors) == 1 and "\n" not in errors[0] and needle in errors[0], (args, errors)
        assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.partial-*"))


def test_a_failed_verification_writes_nothing(runs, tmp_path, monkeypatch):
    original = export_mod.HF_EXPORTERS["image"]

    def corrupt(*args, **kwargs):  # a converter bug: one block's value projection transposed
        name, config, kwargs_, state = original(*args, **kwargs)
        key = next(k for k in state if k.endswith("value.weight"))
        state[key] = state[key].t().contiguous()
        return name, config, kwargs_, state

    monkeypatch.setitem(export_mod.HF_EXPORTERS, "image", corrupt)
    with pytest.raises(ValueError, match="export verification failed"):
        export_run(runs["d2v_image"], "hf", tmp_path / "bad")
    assert list(tmp_path.iterdir()) == []


def test_missing_transformers_is_one_line_naming_the_extra(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(RuntimeError, match=r"pip install 'unimim\[hf\]'"):
        export_run(runs["mae"], "hf", tmp_path / "y")
    assert not (tmp_path / "y").exists()


def _first_batch(cfg):
    spec = MODALITIES[cfg.modality]
    source = spec.build_pretrain_source(cfg.data, cfg.masking, cfg.adapter)
    loader = make_loader(source, batch_size=cfg.train.batch_size, seed=cfg.train.seed, num_workers=0,
                         collate_fn=source.collate)
    return source, next(iter(loader))


def test_continued_pretraining_starts_from_the_exported_weights(runs, tmp_path):
    """MAE from its ViTMAEForPreTraining export (encoder and decoder): the first loss of the new run is the loss of
    the source run's objective (read by unimim, not through the export) on the same first batch."""
    hf_dir = export_run(runs["mae"], "hf", tmp_path / "hf", hf_class="ViTMAEForPreTraining")
    extra = ["encoder.drop_path=0.0", "train.precision=fp32", "train.seed=1"]  # deterministic; not the source's seed
    cfg = _cfg(RUNS["mae"], tmp_path, "cont", [f"init=hf:{hf_dir}", "train.steps=2", "train.stop_after=1", *extra])
    first = pretrain(cfg, progress=False).losses[0]

    seed_everything(cfg.train.seed)
    _, batch = _first_batch(cfg)
    ref = build_objective(cfg)
    ref.load_state_dict(load_pretrained(runs["mae"], load_run_config(runs["mae"]), torch.device("cpu")).state_dict())
    ref.train()
    with torch.no_grad():
        expected = float(ref(batch).loss)
    fresh = pretrain(_cfg(RUNS["mae"], tmp_path, "fresh", ["train.steps=1", *extra]), progress=False).losses[0]
    assert first == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert abs(first - fresh) > 1e-4  # the init changed where training starts

    saved = yaml.safe_load((cfg.run_dir / "config.yaml").read_text())
    assert saved["init"] == f"hf:{hf_dir}"
    assert saved["init_sha256"] == hashlib.sha256((hf_dir / "model.safetensors").read_bytes()).hexdigest()
    # a resumed run takes its checkpoint: the init source is no longer needed
    (hf_dir / "model.safetensors").unlink()
    resumed = pretrain(_cfg(RUNS["mae"], tmp_path, "cont", [f"init=hf:{hf_dir}", "train.steps=2", *extra]),
                       progress=False)
    assert resumed.start_step == 1 and len(resumed.losses) == 1


def test_teacher_objectives_start_with_teacher_equal_to_the_loaded_student(runs, tmp_path):
    """data2vec from its Data2VecVisionModel export: student and EMA teacher both hold the source's encoder."""
    from unimim.app.init import initialise

    hf_dir = export_run(runs["d2v_image"], "hf", tmp_path / "d2v")
    cfg = _cfg(RUNS["d2v_image"], tmp_path, "d2v-init", [f"init=hf:{hf_dir}", "train.seed=1"])
    objective = build_objective(cfg)
    initialise(objective, cfg)
    src = load_pretrained(runs["d2v_image"], load_run_config(runs["d2v_image"]), torch.device("cpu")).backbone
    for part in (objective.backbone, objective.teacher.module):
        ours = part.state_dict()
        for k, v in src.state_dict().items():
            assert torch.equal(ours[k], v), k
    assert not torch.equal(build_objective(cfg).backbone.state_dict()["encoder.norm.weight"],
                           src.state_dict()["encoder.norm.weight"])  # the source is not a fresh initialisation


def test_init_mismatch_names_missing_and_unexpected_keys(runs, tmp_path):
    mae_hf = export_run(runs["mae"], "hf", tmp_path / "mae")  # a ViTModel: no relative table, no layer scale
    cfg = _cfg(RUNS["d2v_image"], tmp_path, "mismatch", [f"init=hf:{mae_hf}"])
    from unimim.app.init import initialise

    with pytest.raises(ValueError, match=r"missing \['backbone.adapter.rel_pos.table'.*unexpected "
                                         r"\['backbone.adapter.pos_embed'\]"):
        initialise(build_objective(cfg), cfg)
    cfg.init_sha256 = "0" * 64
    cfg.init = f"hf:{export_run(runs['d2v_image'], 'hf', tmp_path / 'd2v')}"
    with pytest.raises(ValueError, match="the config records 0000"):
        initialise(build_objective(cfg), cfg)


def test_init_from_timm_and_from_a_run(runs, tmp_path):
    """timm: the Swin and Beit files the export writes; run: iBOT's teacher. The student and the teacher of the new
    objective encode exactly like the source."""
    from unimim.app.init import initialise

    timm_dir = export_run(runs["simmim_swin"], "timm", tmp_path / "swin")
    beit_dir = export_run(runs["beit"], "timm", tmp_path / "beit")
    for run, init in (("simmim_swin", f"timm:swin@{timm_dir / 'model.safetensors'}"),
                      ("beit", f"timm:beit@{beit_dir / 'model.safetensors'}"),
                      ("ibot", f"run:{runs['ibot']}")):
        cfg = _cfg(RUNS[run], tmp_path, f"init-{run}", [f"init={init}"])
        objective = build_objective(cfg).eval()
        record = initialise(objective, cfg)
        src = load_pretrained(runs[run], load_run_config(runs[run]), torch.device("cpu"))
        x = _inputs(cfg)["x"]
        with torch.no_grad():
            assert torch.equal(objective.encode(x), src.encode(x))
        assert cfg.init_sha256 == record["sha256"] and len(record["sha256"]) == 64

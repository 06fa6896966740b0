"""Shared fixtures: tiny CPU-sized overrides per modality, so every recipe can be smoke-run in seconds."""

from __future__ import annotations

from pathlib import Path

TINY_OVERRIDES = {
    "image": [
        "encoder.dim=32", "encoder.depth=2", "encoder.num_heads=2", "encoder.drop_path=0.1",
        "adapter.image_size=16", "adapter.patch_size=4", "adapter.in_chans=1",
        "data.source=synthetic", "data.image_size=16", "data.channels=1", "data.mean=[0.5]", "data.std=[0.25]",
        "data.synthetic_size=64", "masking.min_block=2",
        "train.batch_size=8", "train.steps=3", "train.num_workers=0", "train.log_every=1",
        "train.checkpoint_every=2", "train.device=cpu", "train.threads=2", "optim.warmup_steps=1",
    ],
}

# objective-specific additions to the modality's tiny overrides
TINY_OBJECTIVE_OVERRIDES = {
    "data2vec": ["method.top_k=2"],
    "dvae": ["method.model.image_size=16", "method.model.in_chans=1", "method.model.num_layers=2",
             "method.model.hidden=16", "method.model.num_resblocks=1", "method.model.embed_dim=16",
             "method.model.codebook_size=512", "train.accumulate=1"],
    "beit": ["train.accumulate=1"],
    "ibot": ["data.views.local_size=8", "data.views.local_views=2", "method.head.hidden=32",
             "method.head.bottleneck=16", "method.head.out_dim=64", "train.accumulate=1"],
}

# metrics every objective must log (besides loss, lr, grad_norm, samples_per_s)
OBJECTIVE_LOGS = {
    "data2vec": {"target_std", "pred_std"},
    "dvae": {"recon_loss", "kl", "temperature", "kl_weight", "perplexity", "codes_used"},
    "beit": {"mlm_acc", "mask_ratio", "target_codes_used"},
    "ibot": {"cls_loss", "patch_loss", "teacher_entropy", "student_entropy", "teacher_temp", "ema_decay"},
}


def tiny_tokenizer(directory: Path, codebook_size: int = 16) -> Path:
    """A randomly initialised (seeded) dVAE tokenizer file for the tiny image config (16 px, 1 channel, 4 x 4 codes)."""
    import torch

    from modalities.image.tokenizer.dvae import DiscreteVAE, DVAEConfig

    cfg = DVAEConfig(image_size=16, in_chans=1, codebook_size=codebook_size, embed_dim=8, hidden=8, num_layers=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same tokenizer on every call
        model = DiscreteVAE(cfg)
    return model.save(Path(directory) / "tiny_tokenizer.pt")


def tiny_overrides(modality: str, objective: str, directory: Path) -> list[str]:
    """The tiny overrides of a recipe; ``directory`` receives files the run needs (e.g. a BEiT tokenizer)."""
    out = TINY_OVERRIDES[modality] + TINY_OBJECTIVE_OVERRIDES.get(objective, [])
    if objective == "beit":
        out.append(f"method.tokenizer={tiny_tokenizer(directory)}")
    return out

"""Shared fixtures: tiny CPU-sized overrides per modality, so every recipe can be smoke-run in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

TEXT_FIXTURES = Path(__file__).resolve().parent / "modalities" / "text" / "fixtures"

TINY_OVERRIDES = {
    "image": [
        "encoder.dim=32", "encoder.depth=2", "encoder.num_heads=2", "encoder.drop_path=0.1",
        "adapter.image_size=16", "adapter.patch_size=4", "adapter.in_chans=1",
        "data.source=synthetic", "data.image_size=16", "data.channels=1", "data.mean=[0.5]", "data.std=[0.25]",
        "data.synthetic_size=64", "masking.min_block=2",
        "train.batch_size=8", "train.steps=3", "train.num_workers=0", "train.log_every=1",
        "train.checkpoint_every=2", "train.device=cpu", "train.threads=2", "optim.warmup_steps=1",
    ],
    "text": [
        "encoder.dim=32", "encoder.depth=2", "encoder.num_heads=2", "method.top_k=2", "method.decoder.dim=32",
        "method.decoder.layers=2", "method.decoder.kernel=3", "method.decoder.groups=1",
        "adapter.vocab_size=300", "adapter.max_positions=32", "masking.num_masks=2",
        f"data.paths=[{TEXT_FIXTURES / 'corpus.txt'}]", f"data.tokenizer={TEXT_FIXTURES / 'tokenizer.json'}",
        f"data.wordnet_root={TEXT_FIXTURES / 'wordnet'}", "data.block_size=32", "data.probe_max_tokens=16",
        "data.cache_dir=null", "data.probe_test_fraction=0.3",
        "train.batch_size=4", "train.steps=3", "train.num_workers=0", "train.log_every=1",
        "train.checkpoint_every=2", "train.device=cpu", "train.threads=2", "optim.warmup_steps=1",
        "probe.epochs=5",
    ],
    "speech": [
        "encoder.dim=32", "encoder.depth=2", "encoder.num_heads=2", "method.top_k=2",
        "adapter.conv_layers=[[16,10,5],[16,3,2],[16,3,2],[32,2,2]]", "adapter.pos_conv_depth=2",
        "adapter.pos_conv_kernel=5", "adapter.pos_conv_groups=4", "data.min_samples=4000", "data.max_samples=16000",
        "data.eval_clip_samples=12000", "train.batch_size=4", "train.steps=3", "train.num_workers=0",
        "train.log_every=1", "train.checkpoint_every=2", "train.device=cpu", "train.threads=2", "optim.warmup_steps=1",
    ],
}

# objective-specific additions to the modality's tiny overrides
TINY_OBJECTIVE_OVERRIDES = {
    "data2vec": ["method.top_k=2"],
    "mae": ["method.decoder.dim=16", "method.decoder.depth=1", "method.decoder.num_heads=2"],
    "simmim": ["masking.mask_patch_size=8", "method.swin.embed_dim=16", "method.swin.depths=[1,1]",
               "method.swin.num_heads=[2,2]", "method.swin.window_size=2"],
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
    "mae": {"target_std", "pred_std", "mask_ratio"},
    "simmim": {"target_std", "pred_std", "mask_ratio"},
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


def tiny_overrides(modality: str, objective: str, directory: Path | None = None) -> list[str]:
    """The tiny overrides of a recipe; ``directory`` receives files the run needs (e.g. a BEiT tokenizer)."""
    out = TINY_OVERRIDES[modality] + TINY_OBJECTIVE_OVERRIDES.get(objective, [])
    if objective == "beit":
        if directory is None:
            raise ValueError("tiny_overrides(..., 'beit', directory): BEiT runs need a directory for their tokenizer")
        out.append(f"method.tokenizer={tiny_tokenizer(directory)}")
    return out


@pytest.fixture(scope="session", autouse=True)
def _tiny_speech_data(tmp_path_factory):
    """Point the speech overrides at a few generated audio files, so speech recipes smoke-run without `make`."""
    from tests.modalities.speech.tiny_audio import write_tiny_speech

    paths = write_tiny_speech(tmp_path_factory.mktemp("tiny_speech"))
    TINY_OVERRIDES["speech"] += [f"data.manifest={paths['pretrain']}", f"data.eval_train_manifest={paths['train']}",
                                 f"data.eval_test_manifest={paths['test']}"]

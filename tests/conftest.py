"""Shared fixtures: tiny CPU-sized overrides per modality, so every recipe can be smoke-run in seconds."""

from __future__ import annotations

import pytest

TINY_OVERRIDES = {
    "image": [
        "encoder.dim=32", "encoder.depth=2", "encoder.num_heads=2", "encoder.drop_path=0.1",
        "adapter.image_size=16", "adapter.patch_size=4", "adapter.in_chans=1",
        "data.source=synthetic", "data.image_size=16", "data.channels=1", "data.mean=[0.5]", "data.std=[0.25]",
        "data.synthetic_size=64", "masking.min_block=2", "method.top_k=2",
        "train.batch_size=8", "train.steps=3", "train.num_workers=0", "train.log_every=1",
        "train.checkpoint_every=2", "train.device=cpu", "train.threads=2", "optim.warmup_steps=1",
    ],
    "speech": [
        "encoder.dim=32", "encoder.depth=2", "encoder.num_heads=2", "method.top_k=2",
        "adapter.conv_layers=[[16,10,5],[16,3,2],[16,3,2],[32,2,2]]", "adapter.pos_conv_depth=2",
        "adapter.pos_conv_kernel=5", "adapter.pos_conv_groups=4", "data.min_samples=4000", "data.max_samples=16000",
        "data.eval_clip_samples=12000", "train.batch_size=4", "train.steps=3", "train.num_workers=0",
        "train.log_every=1", "train.checkpoint_every=2", "train.device=cpu", "train.threads=2", "optim.warmup_steps=1",
    ],
}


@pytest.fixture(scope="session", autouse=True)
def _tiny_speech_data(tmp_path_factory):
    """Point the speech overrides at a few generated audio files, so speech recipes smoke-run without `make`."""
    from tests.modalities.speech.tiny_audio import write_tiny_speech

    paths = write_tiny_speech(tmp_path_factory.mktemp("tiny_speech"))
    TINY_OVERRIDES["speech"] += [f"data.manifest={paths['pretrain']}", f"data.eval_train_manifest={paths['train']}",
                                 f"data.eval_test_manifest={paths['test']}"]

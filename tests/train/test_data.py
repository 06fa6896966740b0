import itertools

import torch

from unimim.train.data import ResumableBatchSampler, make_loader


class Source:
    """Examples that expose their RNG draws: one torch draw (augmentation) and one numpy draw (mask)."""

    def __len__(self):
        return 20

    def example(self, index, rng):
        return {"index": index, "aug": torch.rand(()), "mask": torch.from_numpy(rng.random(3) < 0.5)}


def test_sampler_epochs_are_permutations_and_resume_matches():
    s = ResumableBatchSampler(20, 4, seed=1)
    stream = list(itertools.islice(iter(s), 10))  # 2 epochs of 5 batches
    for epoch in range(2):
        keys = [k for batch in stream[epoch * 5:(epoch + 1) * 5] for k in batch]
        assert sorted(i for _, i in keys) == list(range(20)) and {e for e, _ in keys} == {epoch}
    assert stream[:5] != stream[5:]  # reshuffled
    resumed = list(itertools.islice(iter(ResumableBatchSampler(20, 4, seed=1, start=7)), 3))
    assert resumed == stream[7:10]


def test_sampler_shards_global_batches():
    single = list(itertools.islice(iter(ResumableBatchSampler(24, 4, seed=0)), 6))
    r0 = list(itertools.islice(iter(ResumableBatchSampler(24, 2, seed=0, rank=0, world_size=2)), 6))
    r1 = list(itertools.islice(iter(ResumableBatchSampler(24, 2, seed=0, rank=1, world_size=2)), 6))
    for g in range(6):
        assert r0[g] + r1[g] == single[g]  # same global batch whatever the world size


def test_examples_are_deterministic_across_workers():
    rng_before = torch.get_rng_state()
    a = list(itertools.islice(iter(make_loader(Source(), batch_size=4, seed=3, num_workers=0)), 6))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG stream is untouched
    b = list(itertools.islice(iter(make_loader(Source(), batch_size=4, seed=3, num_workers=2)), 6))
    for x, y in zip(a, b):
        assert torch.equal(x["index"], y["index"])
        assert torch.equal(x["aug"], y["aug"]) and torch.equal(x["mask"], y["mask"])
    c = next(iter(make_loader(Source(), batch_size=4, seed=4)))
    assert not torch.equal(c["aug"], a[0]["aug"])


def test_too_small_dataset_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="smaller than one global batch"):
        ResumableBatchSampler(3, 4, seed=0)

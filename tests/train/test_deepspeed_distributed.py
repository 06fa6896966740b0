"""Process-group helpers without a process group: launcher environment checks, the lost-peer error, metric means
in a world of one."""

from __future__ import annotations

import os

import pytest
import torch

from unimim.train import distributed as dist_utils


def test_incomplete_launcher_environment_is_named(monkeypatch):
    for k in dist_utils.LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(dist_utils.DistributedError, match=r"'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'\] missing"):
        dist_utils.ensure_launch_env()


def test_no_launcher_means_a_world_of_one(monkeypatch):
    for k in dist_utils.LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)
    dist_utils.ensure_launch_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")
    assert 0 < int(os.environ["MASTER_PORT"]) < 65536


def test_backend_failures_become_a_clear_error_and_others_do_not():
    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:538] Read error [127.0.0.1]:40860: "
                        "Connection reset by peer")
    err = dist_utils.peer_failure(gloo, "during training")
    assert isinstance(err, dist_utils.DistributedError)
    assert str(err).startswith("rank 0/1: lost contact with another process during training")
    assert "Connection reset by peer" in str(err)
    shape = RuntimeError("The size of tensor a (0) must match the size of tensor b (32) at non-singleton dimension 2")
    assert dist_utils.peer_failure(shape, "during training") is None


def test_reduce_mean_in_one_process_is_the_identity():
    values = {"loss": 0.5, "target_std": 1.25}
    assert dist_utils.reduce_mean(values, torch.device("cpu")) == values

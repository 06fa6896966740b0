"""Tests for the linear / kNN probes and frozen-feature extraction, against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from unimim.eval.features import extract_features, pool_tokens
from unimim.eval.probe import ProbeConfig, format_probe_table, knn_accuracy, linear_probe


def _blobs(n: int, num_classes: int, dim: int, seed: int, spread: float = 4.0) -> tuple[Tensor, Tensor]:
    """Gaussian blobs: (n, dim) float features and (n,) labels, well separated for spread >> 1."""
    g = torch.Generator().manual_seed(seed)
    centers = spread * torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234))
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    return x, y


# --------------------------------------------------------------------------------------------------- linear probe


def test_linear_probe_separable_blobs() -> None:
    train_x, train_y = _blobs(1000, 5, 32, seed=0)
    test_x, test_y = _blobs(500, 5, 32, seed=1)
    out = linear_probe(train_x, train_y, test_x, test_y, ProbeConfig())
    assert out["test_acc"] >= 0.98
    assert out["train_acc"] >= 0.98
    assert out["num_classes"] == 5
    assert math.isfinite(out["train_loss"]) and math.isfinite(out["test_loss"])


def test_linear_probe_noise_labels_is_chance() -> None:
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(1000, 32, generator=g), torch.randn(1000, 32, generator=g)
    train_y, test_y = torch.randint(0, 5, (1000,), generator=g), torch.randint(0, 5, (1000,), generator=g)
    out = linear_probe(train_x, train_y, test_x, test_y, ProbeConfig())
    assert out["test_acc"] <= 0.35


def test_linear_probe_matches_sklearn_on_digits() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    perm = np.random.RandomState(0).permutation(len(X))
    tr, te = perm[:1200], perm[1200:]
    assert len(te) == 597

    scaler = StandardScaler().fit(X[tr])
    clf = LogisticRegression(max_iter=5000).fit(scaler.transform(X[tr]), y[tr])
    sk_acc = clf.score(scaler.transform(X[te]), y[te])

    def t(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a)

    out = linear_probe(t(X[tr]).float(), t(y[tr]), t(X[te]).float(), t(y[te]), ProbeConfig())
    assert abs(out["test_acc"] - sk_acc) <= 0.03, (out["test_acc"], sk_acc)


def test_linear_probe_deterministic_and_does_not_mutate_inputs() -> None:
    train_x, train_y = _blobs(600, 4, 16, seed=2, spread=0.7)
    test_x, test_y = _blobs(300, 4, 16, seed=3, spread=0.7)
    snapshot = train_x.clone(), test_x.clone()
    cfg = ProbeConfig(epochs=20, batch_size=128, seed=7)
    a = linear_probe(train_x, train_y, test_x, test_y, cfg)
    b = linear_probe(train_x, train_y, test_x, test_y, cfg)
    assert a == b
    assert torch.equal(train_x, snapshot[0]) and torch.equal(test_x, snapshot[1])


def test_linear_probe_handles_constant_feature_and_unseen_test_class() -> None:
    train_x, train_y = _blobs(300, 3, 8, seed=4)
    test_x, test_y = _blobs(100, 3, 8, seed=5)
    train_x[:, 0] = 1.0  # zero std in train
    test_y[0] = 3  # a class never seen in training
    out = linear_probe(train_x, train_y, test_x, test_y, ProbeConfig(epochs=50))
    assert out["num_classes"] == 4
    assert out["test_acc"] >= 0.95
    with_pred = linear_probe(train_x, train_y, test_x, test_y, ProbeConfig(epochs=50), return_predictions=True)
    pred = with_pred.pop("test_pred")
    assert with_pred == out and pred.shape == (100,) and pred.dtype == torch.long
    assert (pred == test_y).double().mean().item() == pytest.approx(out["test_acc"])


# --------------------------------------------------------------------------------------------------------- kNN


def _knn_reference(train_x: Tensor, train_y: Tensor, test_x: Tensor, *, k: int, temperature: float) -> list[int]:
    """Brute-force DINO kNN predictions with explicit Python loops in float64."""
    tr = train_x.double().tolist()
    te = test_x.double().tolist()
    labels = train_y.tolist()

    def cos(a: list[float], b: list[float]) -> float:
        dot = sum(u * v for u, v in zip(a, b))
        return dot / (math.sqrt(sum(u * u for u in a)) * math.sqrt(sum(v * v for v in b)))

    preds = []
    for q in te:
        sims = sorted(((cos(q, r), j) for j, r in enumerate(tr)), reverse=True)[:k]
        votes: dict[int, float] = {}
        for s, j in sims:
            votes[labels[j]] = votes.get(labels[j], 0.0) + math.exp(s / temperature)
        preds.append(max(votes, key=lambda c: votes[c]))
    return preds


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_knn_matches_brute_force(chunk_size: int) -> None:
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(30, 6, generator=g), torch.randn(10, 6, generator=g)
    label_values = torch.tensor([0, 3, 7, 11])  # non-contiguous labels
    train_y = label_values[torch.randint(0, 4, (30,), generator=g)]
    ref = torch.tensor(_knn_reference(train_x, train_y, test_x, k=5, temperature=0.07))

    # test labels equal to the reference predictions -> exactly 1.0
    assert knn_accuracy(train_x, train_y, test_x, ref, k=5, temperature=0.07, chunk_size=chunk_size) == 1.0
    # random test labels -> exactly the reference's accuracy
    test_y = label_values[torch.randint(0, 4, (10,), generator=g)]
    expected = int((ref == test_y).sum()) / len(test_y)
    got = knn_accuracy(train_x, train_y, test_x, test_y, k=5, temperature=0.07, chunk_size=chunk_size)
    assert got == expected


def test_knn_k_larger_than_train_set_and_higher_temperature() -> None:
    g = torch.Generator().manual_seed(1)
    train_x, test_x = torch.randn(8, 4, generator=g), torch.randn(12, 4, generator=g)
    train_y = torch.randint(0, 3, (8,), generator=g)
    ref = torch.tensor(_knn_reference(train_x, train_y, test_x, k=8, temperature=0.5))
    assert knn_accuracy(train_x, train_y, test_x, ref, k=50, temperature=0.5) == 1.0


def test_knn_on_blobs_is_accurate() -> None:
    train_x, train_y = _blobs(500, 5, 32, seed=0)
    test_x, test_y = _blobs(200, 5, 32, seed=1)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=20, temperature=0.07) >= 0.98


# ----------------------------------------------------------------------------------------------- bad inputs


def _good() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    tx, ex = torch.randn(20, 4, generator=g), torch.randn(10, 4, generator=g)
    return tx, torch.randint(0, 3, (20,), generator=g), ex, torch.randint(0, 3, (10,), generator=g)


def _probes(tx: Tensor, ty: Tensor, ex: Tensor, ey: Tensor) -> list:
    return [
        lambda: linear_probe(tx, ty, ex, ey, ProbeConfig(epochs=1)),
        lambda: knn_accuracy(tx, ty, ex, ey, k=3, temperature=0.1),
    ]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda tx, ty, ex, ey: (tx, ty[:-1], ex, ey), "rows but"),
        (lambda tx, ty, ex, ey: (tx, ty, ex[:-2], ey), "rows but"),
        (lambda tx, ty, ex, ey: (tx[:0], ty[:0], ex, ey), "empty"),
        (lambda tx, ty, ex, ey: (tx, ty, ex[:0], ey[:0]), "empty"),
        (lambda tx, ty, ex, ey: (tx, ty, ex[:, :3], ey), "dim"),
        (lambda tx, ty, ex, ey: (tx, ty - 5, ex, ey), "negative"),
        (lambda tx, ty, ex, ey: (tx, ty.float(), ex, ey), "integer"),
        (lambda tx, ty, ex, ey: (tx[:, 0], ty, ex, ey), r"\(N, D\)"),
        (lambda tx, ty, ex, ey: (tx.long(), ty, ex, ey), "floating"),
    ],
)
def test_bad_inputs_raise(mutate, match: str) -> None:
    for call in _probes(*mutate(*_good())):
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_blame_the_encoder(bad: float) -> None:
    tx, ty, ex, ey = _good()
    tx = tx.clone()
    tx[3, 1] = bad
    for call in _probes(tx, ty, ex, ey):
        with pytest.raises(ValueError, match="encoder"):
            call()
    ex = ex.clone()
    ex[0, 0] = bad
    for call in _probes(_good()[0], ty, ex, ey):
        with pytest.raises(ValueError, match="test_x has NaN/Inf"):
            call()


def test_bad_config_raises() -> None:
    tx, ty, ex, ey = _good()
    for cfg in [ProbeConfig(epochs=0), ProbeConfig(batch_size=0), ProbeConfig(lr=0.0), ProbeConfig(weight_decay=-1)]:
        with pytest.raises(ValueError):
            linear_probe(tx, ty, ex, ey, cfg)
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(tx, ty, ex, ey, k=0, temperature=0.1)
    with pytest.raises(ValueError, match="temperature"):
        knn_accuracy(tx, ty, ex, ey, k=3, temperature=0.0)


# --------------------------------------------------------------------------------------------- feature extraction

B, T, D = 2, 4, 3  # tokens per sample include 1 cls token


def _toy_batch(offset: float) -> tuple[Tensor, Tensor]:
    """(B, T * D) inputs whose values are offset + 0, 1, 2, ...; toy_encode reshapes them to (B, T, D)."""
    x = torch.arange(B * T * D, dtype=torch.float32).reshape(B, T * D) + offset
    return x, torch.tensor([int(offset), int(offset) + 1])


def toy_encode(x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """(B, T * D) -> (B, T, D) token features."""
    return x.view(x.shape[0], T, D)


def test_extract_features_pooling_by_hand() -> None:
    batches = [_toy_batch(0.0), _toy_batch(100.0)]
    # sample 0 of batch 0: tokens [[0,1,2],[3,4,5],[6,7,8],[9,10,11]]; cls = [0,1,2]; mean(rest) = [6,7,8]
    # sample 1 of batch 0: tokens [[12..14],[15..17],[18..20],[21..23]]; cls = [12,13,14]; mean = [18,19,20]
    cls = torch.tensor([[0.0, 1, 2], [12, 13, 14], [100, 101, 102], [112, 113, 114]])
    mean = torch.tensor([[6.0, 7, 8], [18, 19, 20], [106, 107, 108], [118, 119, 120]])
    labels = torch.tensor([0, 1, 100, 101])

    f, y = extract_features(toy_encode, batches, pool="mean", progress=False)
    assert f.dtype == torch.float32 and f.device.type == "cpu" and f.shape == (4, D)
    assert torch.equal(f, mean)
    assert y.dtype == torch.long and torch.equal(y, labels)

    f, _ = extract_features(toy_encode, batches, pool="cls", progress=False)
    assert torch.equal(f, cls)

    f, _ = extract_features(toy_encode, batches, pool="mean_cls", progress=False)
    assert f.shape == (4, 2 * D)
    assert torch.equal(f, torch.cat([mean, cls], dim=1))

    # no prefix tokens: mean over all T tokens
    f, _ = extract_features(toy_encode, batches[:1], pool="mean", num_prefix_tokens=0, progress=False)
    assert torch.equal(f, torch.tensor([[4.5, 5.5, 6.5], [16.5, 17.5, 18.5]]))


def test_extract_features_padding_mask() -> None:
    x, y = _toy_batch(0.0)
    seen: list[Tensor] = []

    def encode(inputs: Tensor, padding_mask: Tensor) -> Tensor:
        seen.append(padding_mask)
        return toy_encode(inputs)

    # full-length (B, T) mask: sample 0 drops its last token, sample 1 its last two (cls is never pooled)
    mask_full = torch.tensor([[False, False, False, True], [False, False, True, True]])
    # expected: sample 0 = mean([3,4,5],[6,7,8]) = [4.5,5.5,6.5]; sample 1 = [15,16,17]
    expected = torch.tensor([[4.5, 5.5, 6.5], [15.0, 16, 17]])
    f, _ = extract_features(encode, [{"inputs": x, "labels": y, "padding_mask": mask_full}], progress=False)
    assert torch.equal(f, expected)
    assert len(seen) == 1 and torch.equal(seen[0], mask_full)

    # (B, T - 1) mask over non-prefix tokens only gives the same result
    f2, _ = extract_features(encode, [{"inputs": x, "labels": y, "padding_mask": mask_full[:, 1:]}], progress=False)
    assert torch.equal(f2, expected)

    # mean_cls with padding; dict without padding_mask calls encode(inputs) alone
    f3, _ = extract_features(
        encode, [{"inputs": x, "labels": y, "padding_mask": mask_full}], pool="mean_cls", progress=False
    )
    assert torch.equal(f3, torch.cat([expected, torch.tensor([[0.0, 1, 2], [12, 13, 14]])], dim=1))
    f4, _ = extract_features(toy_encode, [{"inputs": x, "labels": y}], progress=False)
    assert torch.equal(f4, torch.tensor([[6.0, 7, 8], [18, 19, 20]]))

    # a row with every non-prefix token padded cannot be mean-pooled
    all_pad = torch.tensor([[False, True, True, True], [False, False, False, False]])
    with pytest.raises(ValueError, match="no non-prefix tokens"):
        extract_features(encode, [{"inputs": x, "labels": y, "padding_mask": all_pad}], progress=False)
    with pytest.raises(ValueError, match="padding_mask has 2 columns"):
        extract_features(encode, [{"inputs": x, "labels": y, "padding_mask": all_pad[:, :2]}], progress=False)


def test_extract_features_autocast_returns_float32() -> None:
    torch.manual_seed(0)
    proj = nn.Linear(D, 5)
    x, y = _toy_batch(0.0)

    def encode(inputs: Tensor) -> Tensor:
        return proj(toy_encode(inputs))  # (B, T, 5), bf16 under autocast

    f, labels = extract_features(encode, [(x, y)], dtype=torch.bfloat16, progress=False)
    assert f.dtype == torch.float32 and f.shape == (B, 5)
    with torch.no_grad():
        ref = proj(toy_encode(x))[:, 1:].mean(dim=1)
    assert torch.allclose(f, ref, rtol=2e-2, atol=2e-1)
    assert torch.equal(labels, y)


def test_extract_features_bad_inputs() -> None:
    x, y = _toy_batch(0.0)
    with pytest.raises(ValueError, match="no batches"):
        extract_features(toy_encode, [], progress=False)
    with pytest.raises(ValueError, match="pool must be"):
        extract_features(toy_encode, [(x, y)], pool="max", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cls token"):
        extract_features(toy_encode, [(x, y)], pool="cls", num_prefix_tokens=0, progress=False)
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        extract_features(lambda inp: inp, [(x, y)], progress=False)
    with pytest.raises(ValueError, match="labels"):
        extract_features(toy_encode, [(x, y[:1])], progress=False)
    with pytest.raises(ValueError, match="'inputs' and 'labels'"):
        extract_features(toy_encode, [{"inputs": x}], progress=False)
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        pool_tokens(torch.zeros(1, 2, 3), num_prefix_tokens=2)


# ------------------------------------------------------------------------------------------------------- table


def test_format_probe_table() -> None:
    rows = [
        {"encoder": "pretrained", "linear": 0.81, "knn": 0.79},
        {"encoder": "random-init", "linear": 0.2, "knn": None, "epochs": 100},
    ]
    text = format_probe_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["encoder", "linear", "knn", "epochs"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["pretrained", "0.8100", "0.7900", "-"]
    assert lines[3].split() == ["random-init", "0.2000", "-", "100"]
    # numeric columns are right-aligned: their values end at the same column as the header
    for col in ["linear", "knn"]:
        end = lines[0].index(col) + len(col)
        assert all(line[end - 1] != " " for line in lines[2:])
    assert format_probe_table([]) == "(no results)"


def test_whitening_gives_identity_covariance_and_undoes_linear_maps():
    from unimim.eval.probe import whiten_features

    g = torch.Generator().manual_seed(0)
    z = torch.randn(3000, 8, generator=g, dtype=torch.float64)
    y = (z[:, 0] > 0).long() + 2 * (z[:, 1] > 0).long()
    mix = torch.randn(8, 8, generator=g, dtype=torch.float64) @ torch.diag(torch.logspace(0, 3, 8, dtype=torch.float64))
    x = z @ mix + 5.0  # anisotropic: eigenvalues spread over ~6 orders of magnitude, plus a common offset
    wtr, wte = whiten_features(x[:2000].float(), x[2000:].float(), eps=1e-9)
    assert wtr.shape == (2000, 8) and wte.shape == (1000, 8)
    torch.testing.assert_close(torch.cov(wtr.double().T), torch.eye(8, dtype=torch.float64), atol=1e-3, rtol=0)
    # whitening A @ x and whitening x differ only by a rotation, so cosine kNN sees identical neighbourhoods
    ztr, zte = whiten_features(z[:2000].float(), z[2000:].float(), eps=1e-9)
    acc_mixed = knn_accuracy(wtr, y[:2000], wte, y[2000:], k=5, temperature=0.1)
    acc_plain = knn_accuracy(ztr, y[:2000], zte, y[2000:], k=5, temperature=0.1)
    assert acc_mixed == pytest.approx(acc_plain, abs=2e-3) and acc_plain > 0.75
    # the raw anisotropic features give a worse kNN than their whitened version
    assert knn_accuracy(x[:2000].float(), y[:2000], x[2000:].float(), y[2000:], k=5, temperature=0.1) < acc_mixed - 0.1
    with pytest.raises(ValueError, match="whiten_eps"):
        whiten_features(x[:10].float(), x[10:20].float(), eps=0.0)
    with pytest.raises(ValueError, match="at least 2"):
        whiten_features(x[:1].float(), x[1:3].float())

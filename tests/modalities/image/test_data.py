"""Tests for modalities/image/data/dataset.py: IDX reading, Fashion-MNIST, ImageFolder robustness, transforms."""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from modalities.image.data.dataset import (
    UNLABELED,
    FashionMNIST,
    ImageDataConfig,
    ImageDataset,
    ImageFolder,
    SyntheticImages,
    build_image_dataset,
    eval_transform,
    pretrain_transform,
    read_idx,
    to_mode,
)

FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write a uint8 IDX file by hand (magic 0x00 0x00 0x08 ndim, big-endian int32 dims, data)."""
    assert array.dtype == np.uint8
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


# ------------------------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / "img", images, compress)
    write_idx(tmp_path / "lab", labels, compress)
    if not compress:
        assert (tmp_path / "img").stat().st_size == 16 + images.size and (tmp_path / "lab").stat().st_size == 8 + 5
    got_images, got_labels = read_idx(tmp_path / "img"), read_idx(tmp_path / "lab")
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_idx_bad_magic_and_size(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x01\x00\x08\x01" + struct.pack(">i", 3) + b"abc"))
    with pytest.raises(ValueError, match=str(bad)):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">i", 4) + b"abc")  # header says 4 bytes, has 3
    with pytest.raises(ValueError, match="size mismatch"):
        read_idx(short)


def test_fashion_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        FashionMNIST(tmp_path, "train")
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(info.value)
    assert "dataset-fashion-mnist" in str(info.value)


def test_fashion_mnist_from_written_idx(tmp_path: Path) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([7, 8, 9], dtype=np.uint8), compress=False)
    ds = FashionMNIST(tmp_path, "test", mode="RGB")
    img, label = ds[2]
    assert len(ds) == 3 and label == 9 and isinstance(label, int)
    assert img.mode == "RGB" and img.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(img)[..., 0], images[2])
    with pytest.raises(ValueError, match="split"):
        FashionMNIST(tmp_path, "val")


# ---------------------------------------------------------------------------------- real Fashion-MNIST


@pytest.fixture(scope="module")
def fmnist_root() -> Path:
    if not FMNIST_ROOT.is_dir():
        pytest.skip(f"{FMNIST_ROOT} not found (install the Debian package dataset-fashion-mnist)")
    return FMNIST_ROOT


def test_real_fashion_mnist(fmnist_root: Path) -> None:
    train, test = FashionMNIST(fmnist_root, "train"), FashionMNIST(fmnist_root, "test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(train.targets, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(test.targets, minlength=10), np.full(10, 1000))
    assert train.images.mean() / 255.0 == pytest.approx(0.2860, abs=1e-3)
    img, label = train[0]
    assert img.mode == "L" and img.size == (28, 28) and isinstance(label, int) and 0 <= label <= 9

    cfg = ImageDataConfig(limit=16)
    ds = build_image_dataset(cfg, "test", transform=eval_transform(cfg))
    x, y = ds[0]
    assert len(ds) == 16 and x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == int(test.targets[0])


# --------------------------------------------------------------------------------------- ImageFolder


def _save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """root/train/{cats,dogs,zebras} with good images of mixed sizes and modes, and 3 bad files."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    split = root / "train"
    _save(Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)), split / "cats" / "rgb.jpg")
    rgba = np.zeros((50, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:25, :, 3] = 255  # top half opaque red-ish, bottom half fully transparent
    _save(Image.fromarray(rgba), split / "cats" / "rgba.png")
    pal = Image.fromarray(rng.integers(0, 4, (33, 21), dtype=np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    _save(pal, split / "dogs" / "palette.png", transparency=0)
    _save(Image.fromarray(rng.integers(0, 256, (17, 17), dtype=np.uint8)), split / "dogs" / "sub" / "gray.png")
    sixteen = np.full((12, 12), 65535, dtype=np.uint16)
    sixteen[:6] = 32896  # 128 * 257
    _save(Image.fromarray(sixteen), split / "zebras" / "sixteen.png")
    _save(Image.fromarray(rng.integers(0, 256, (9, 31, 3), dtype=np.uint8)), split / "zebras" / "UPPER.JPEG")
    # Bad files: a truncated png, a zero-byte jpg, a text file named .png.
    full = _save(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), tmp_path / "full.png")
    data = full.read_bytes()
    (split / "cats" / "truncated.png").write_bytes(data[: len(data) // 2])
    (split / "dogs" / "empty.jpg").write_bytes(b"")
    (split / "zebras" / "text.png").write_text("this is not an image\n")
    (split / "zebras" / "notes.txt").write_text("ignored: not an image extension\n")
    return root


GOOD = {"rgb.jpg", "rgba.png", "palette.png", "gray.png", "sixteen.png", "UPPER.JPEG"}
BAD = {"truncated.png", "empty.jpg", "text.png"}


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_skips_bad_files(messy_folder: Path, channels: int, caplog: pytest.LogCaptureFixture) -> None:
    cfg = ImageDataConfig(source="folder", root=str(messy_folder), channels=channels, image_size=16)
    raw = build_image_dataset(cfg)
    assert isinstance(raw, ImageFolder)
    assert raw.root == messy_folder / "train" and raw.classes == ["cats", "dogs", "zebras"]
    assert len(raw) == len(GOOD) + len(BAD)
    with caplog.at_level(logging.WARNING, logger="modalities.image.data.dataset"):
        items = [raw[i] for i in range(len(raw))]
        items += [raw[i] for i in range(len(raw))]  # second pass: no new warnings, no new counts
    assert all(img.mode == cfg.mode for img, _ in items)
    assert raw.num_skipped == 3 and {p.name for p in raw.bad_paths} == BAD
    assert sum("skipping unreadable image" in r.getMessage() for r in caplog.records) == 3
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False

    ds = build_image_dataset(cfg, transform=eval_transform(cfg))
    assert isinstance(ds, ImageDataset)
    xs = [ds[i] for i in range(len(ds))]
    assert all(x.shape == (channels, 16, 16) and x.dtype == torch.float32 for x, _ in xs)
    assert ds.num_skipped == 3
    names = [p.name for p, _ in raw.samples]
    assert {names[i] for i in range(len(names)) if names[i] not in BAD} == GOOD
    labels = {p.name: label for p, label in raw.samples}
    assert labels["rgb.jpg"] == 0 and labels["gray.png"] == 1 and labels["sixteen.png"] == 2


def test_image_folder_fallback_is_next_readable(messy_folder: Path) -> None:
    ds = ImageFolder(messy_folder / "train", mode="L")
    names = [p.name for p, _ in ds.samples]
    for i, name in enumerate(names):
        if name in BAD:
            j = next(k % len(names) for k in range(i + 1, i + 1 + len(names)) if names[k % len(names)] not in BAD)
            bad_img, bad_label = ds[i]
            good_img, good_label = ds[j]
            assert bad_label == good_label
            np.testing.assert_array_equal(np.asarray(bad_img), np.asarray(good_img))


def test_mode_conversion_values(messy_folder: Path) -> None:
    ds = ImageFolder(messy_folder / "train", mode="L")
    by_name = {p.name: ds.load(p) for p, _ in ds.samples if p.name in GOOD}
    rgba = np.asarray(by_name["rgba.png"])
    assert rgba.shape == (50, 20)
    assert (rgba[25:] == 255).all()  # transparent -> white
    assert (rgba[:25] < 255).all()
    sixteen = np.asarray(by_name["sixteen.png"])
    assert (sixteen[:6] == 128).all() and (sixteen[6:] == 255).all()  # scaled, not clipped
    pal = np.asarray(ds.load(messy_folder / "train" / "dogs" / "palette.png"))
    src = np.asarray(Image.open(messy_folder / "train" / "dogs" / "palette.png"))
    assert (pal[src == 0] == 255).all()  # transparent palette index -> white
    assert to_mode(Image.new("CMYK", (3, 3)), "RGB").mode == "RGB"
    assert to_mode(Image.new("1", (3, 3)), "L").mode == "L"
    assert np.asarray(to_mode(Image.new("LA", (2, 2), (0, 0)), "RGB")).min() == 255


def test_image_folder_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ImageFolder(missing)
    cfg = ImageDataConfig(source="folder", root=str(missing))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_image_dataset(cfg)
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    (empty / "cls" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match=str(empty)):
        ImageFolder(empty)
    allbad = tmp_path / "allbad"
    allbad.mkdir()
    (allbad / "a.png").write_bytes(b"junk")
    (allbad / "b.jpg").write_bytes(b"")
    with pytest.raises(RuntimeError, match="no readable image"):
        ImageFolder(allbad)[0]


def test_image_folder_loose_files_and_limit(tmp_path: Path) -> None:
    _save(Image.new("RGB", (5, 5), (1, 2, 3)), tmp_path / "loose.bmp")
    _save(Image.new("L", (5, 5), 9), tmp_path / "b" / "x.pgm")
    _save(Image.new("L", (5, 5), 9), tmp_path / "a" / "y.png")
    ds = ImageFolder(tmp_path, mode="RGB")
    assert ds.classes == ["a", "b"]
    assert {p.name: label for p, label in ds.samples} == {"loose.bmp": UNLABELED, "x.pgm": 1, "y.png": 0}
    cfg = ImageDataConfig(source="folder", root=str(tmp_path), split=None, channels=3, limit=2)
    assert len(build_image_dataset(cfg)) == 2  # split None: root itself
    cfg = ImageDataConfig(source="folder", root=str(tmp_path), split="train", channels=3)
    with pytest.raises(FileNotFoundError, match=r"no split folder 'train' \(folders found: a, b\)"):
        build_image_dataset(cfg)  # never a silent fall-back to root (whose class folders would be the splits)


# ----------------------------------------------------------------------------------- config, transforms


def test_config_accepts_lists_and_validates() -> None:
    cfg = ImageDataConfig(crop_scale=[0.2, 1.0], mean=[0.5], std=[0.25], channels=3)  # type: ignore[arg-type]
    assert cfg.crop_scale == (0.2, 1.0) and cfg.mean == (0.5,) and cfg.mode == "RGB"
    assert cfg.channel_stats() == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with pytest.raises(ValueError, match="fashion_mnist, folder, synthetic"):
        ImageDataConfig(source="cifar")  # type: ignore[arg-type]
    cfg.source = "cifar"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="fashion_mnist, folder, synthetic"):
        build_image_dataset(cfg)
    with pytest.raises(ValueError):
        ImageDataConfig(channels=2)
    with pytest.raises(ValueError):
        ImageDataConfig(channels=3, mean=(0.1, 0.2))


@pytest.mark.parametrize("channels", [1, 3])
def test_transforms(channels: int) -> None:
    cfg = ImageDataConfig(source="synthetic", channels=channels, image_size=24, synthetic_size=8)
    raw = build_image_dataset(cfg)
    img, _ = raw[3]
    assert isinstance(raw, SyntheticImages) and img.size == (24, 24) and img.mode == cfg.mode
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    ev, pre = eval_transform(cfg), pretrain_transform(cfg)
    for source in (img, big):
        x = ev(source)
        assert x.shape == (channels, 24, 24) and x.dtype == torch.float32
        assert torch.equal(x, ev(source))  # eval is deterministic
        torch.manual_seed(123)
        a = pre(source)
        torch.manual_seed(123)
        b = pre(source)
        assert a.shape == (channels, 24, 24) and a.dtype == torch.float32 and torch.equal(a, b)
    outs = []
    for seed in range(4):
        torch.manual_seed(seed)
        outs.append(pre(big))
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # different seeds give different views


def test_synthetic_is_deterministic() -> None:
    a, b = SyntheticImages(20, 16, 3, seed=5), SyntheticImages(20, 16, 3, seed=5)
    assert [a[i][1] for i in range(20)] == [i % 10 for i in range(20)]
    assert np.array_equal(np.asarray(a[7][0]), np.asarray(b[7][0]))
    assert not np.array_equal(np.asarray(a[7][0]), np.asarray(SyntheticImages(20, 16, 3, seed=6)[7][0]))
    cfg = ImageDataConfig(source="synthetic", synthetic_size=50, limit=10)
    train, test = build_image_dataset(cfg), build_image_dataset(cfg, "test")
    assert len(train) == 10
    assert not np.array_equal(np.asarray(train[0][0]), np.asarray(test[0][0]))


def test_skipped_count_depends_on_the_files_not_the_workers(tmp_path: Path) -> None:
    """7 files, 2 unreadable: the pretraining batches count 2 per epoch, with or without DataLoader workers (each
    worker has its own data set copy; a count read off its counters would depend on which worker met what first)."""
    from modalities.image.data.source import ImagePretrainSource
    from modalities.image.masking import ImageMaskConfig, build_mask_generator
    from unimim.train.data import make_loader

    rng = np.random.default_rng(0)
    for i in range(7):
        _save(Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)), tmp_path / f"im{i}.png")
    (tmp_path / "im2.png").write_text("not an image")
    (tmp_path / "im3.png").write_bytes(b"")  # next to im2: the example of im2 passes over both
    cfg = ImageDataConfig(source="folder", root=str(tmp_path), split=None, image_size=8)
    dataset = build_image_dataset(cfg, transform=eval_transform(cfg))
    src = ImagePretrainSource(dataset, build_mask_generator(ImageMaskConfig(kind="random", ratio=0.5), (2, 2)))

    def total(workers: int, batch_size: int) -> int:
        it = iter(make_loader(src, batch_size=batch_size, seed=0, num_workers=workers, collate_fn=src.collate))
        return sum(next(it).skipped for _ in range(21 // batch_size))  # three epochs

    assert total(0, 7) == total(2, 7) == total(2, 1) == 3 * 2


def test_color_jitter_is_beits_before_the_crop() -> None:
    """``color_jitter: 0.4`` = torchvision's ColorJitter(0.4, 0.4, 0.4) then the usual crop, flip and normalisation
    (BEiT / data2vec_vision ``DataAugmentationForBEiT``), on the same random draws; 0 leaves the pipeline as it was."""
    import torchvision.transforms as T

    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    cfg = ImageDataConfig(source="synthetic", channels=3, image_size=24, color_jitter=0.4, crop_scale=(0.2, 1.0))
    mean, std = cfg.channel_stats()
    peer = T.Compose([T.ColorJitter(0.4, 0.4, 0.4),
                      T.RandomResizedCrop(24, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    ours, plain = pretrain_transform(cfg), pretrain_transform(ImageDataConfig(**{**cfg.__dict__, "color_jitter": 0.0}))
    for seed in range(3):
        torch.manual_seed(seed)
        a = ours(big)
        torch.manual_seed(seed)
        assert torch.equal(a, peer(big))
        torch.manual_seed(seed)
        assert not torch.equal(a, plain(big))  # the jitter changes the view
    with pytest.raises(ValueError, match="color_jitter"):
        ImageDataConfig(color_jitter=-0.1)

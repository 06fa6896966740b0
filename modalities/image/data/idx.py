"""IDX files (the MNIST / Fashion-MNIST format) and the Fashion-MNIST data set read from them."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from modalities.image.data.modes import check_limit, to_mode

FASHION_MNIST_HINT = "install the Debian package dataset-fashion-mnist (make data does this as root)"
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped or not; detected from the content, not the name).

    Format: two zero bytes, a type code (0x08 = uint8; 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64 are accepted too), the number of dimensions, then one big-endian int32 per dimension and
    the data. Returns an array of that shape in native byte order.

    Raises:
        ValueError: bad magic number or data size not matching the header (message names the path).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip stream ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX size mismatch: header says shape {shape} ({expected} data bytes), "
            f"file has {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


class FashionMNIST(Dataset):
    """Fashion-MNIST from its original IDX files.

    Items are ``(PIL.Image of mode `mode`, 28x28, int label)``. ``images`` (N, 28, 28) uint8 and ``targets``
    (N,) int64 expose the raw arrays (e.g. for a fast raw-pixel kNN baseline).
    """

    FILES: dict[str, str] = {"train": "train", "test": "t10k"}

    def __init__(
        self, root: str | os.PathLike[str], split: str = "train", mode: str = "L", limit: int | None = None
    ) -> None:
        if split not in self.FILES:
            raise ValueError(f"Fashion-MNIST split must be one of {sorted(self.FILES)}, got {split!r}")
        check_limit(limit)
        self.root = Path(root)
        self.split = split
        self.mode = mode
        self.classes = list(FASHION_MNIST_CLASSES)
        prefix = self.FILES[split]
        images = read_idx(self._find(f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(self._find(f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{self.root}: inconsistent Fashion-MNIST {split} files: images {images.shape}, labels {labels.shape}"
            )
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.images: np.ndarray = images.astype(np.uint8, copy=False)
        self.targets: np.ndarray = labels.astype(np.int64)

    def _find(self, name: str) -> Path:
        for candidate in (self.root / f"{name}.gz", self.root / name):
            if candidate.is_file():
                return candidate
        missing = self.root / f"{name}.gz"
        raise FileNotFoundError(
            f"Fashion-MNIST file not found: {missing} (nor {self.root / name}); {FASHION_MNIST_HINT}"
        )

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        img = Image.fromarray(self.images[index])
        return to_mode(img, self.mode), int(self.targets[index])

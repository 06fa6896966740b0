"""Discrete VAE visual tokenizer (BEiT stage 1): an image -> an H x W grid of codes from a K-entry codebook.

DALL-E's dVAE (Ramesh et al. 2021, §2.1 and App. A), which BEiT (Bao et al. 2021, §2.1) uses frozen, trained here on
the user's own data. Conv encoder (``num_layers`` stride-2 4x4 convs, each followed by residual blocks) -> 1x1 conv to
K logits per grid cell; training relaxes the categorical with Gumbel-softmax (temperature tau) and mixes a learned
codebook (K, E); the transposed-conv decoder reconstructs the image. Tokenisation takes the hard argmax of the
logits. Refs: ../shared/reference/masked-image-modeling.md §6.2-6.4 (lucidrains/DALLE-pytorch ``DiscreteVAE``,
unilm ``beit/modeling_discrete_vae.py``, karpathy/deep-vector-quantization ``GumbelQuantize``).

The token grid must equal the ViT's patch grid: a tokenizer of ``image_size`` S and ``num_layers`` n gives an
(S / 2^n)^2 grid (28 px, n=2 -> 7 x 7 = the patch-4 grid of a 28-px ViT; 112 px, n=3 -> 14 x 14 = ViT-B/16 at 224).

File format (:meth:`DiscreteVAE.save`, version 2): ``tokenizer.safetensors``, the weights in safetensors with
``format: unimim-dvae``, ``version: 2`` and ``config`` (the :class:`DVAEConfig` as JSON) in its metadata, written
atomically. :func:`load_tokenizer` also reads a dVAE pretraining run directory (``objective: dvae``) or its
checkpoint directly, and a version-1 ``tokenizer.pt`` (``{"format", "version": 1, "config", "state_dict"}``, read
with ``torch.load(weights_only=True)``: nothing but tensors and plain data is unpickled).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from unimim.train.checkpoint import (
    CHECKPOINT_NAME,
    LEGACY_CHECKPOINT_NAME,
    has_checkpoint,
    load_checkpoint,
    load_state_file,
    safe_load,
    save_state_file,
)

logger = logging.getLogger(__name__)

FORMAT = "unimim-dvae"
VERSION = 2
LEGACY_VERSION = 1  # tokenizer.pt: a torch.save dict
TOKENIZER_NAME = "tokenizer.safetensors"
LEGACY_TOKENIZER_NAME = "tokenizer.pt"


@dataclass
class DVAEConfig:
    image_size: int = 28        # side S of the images the tokenizer sees (BEiT ViT-B/16: 112, a half-size copy)
    in_chans: int = 1
    codebook_size: int = 512    # K: 8192 in BEiT/DALL-E; 512-1024 at small scale (unilm#936: small data underuses)
    embed_dim: int = 32         # E: width of a codebook vector
    hidden: int = 64            # conv width
    num_layers: int = 2         # stride-2 stages: grid side = S / 2^num_layers
    num_resblocks: int = 1      # residual blocks after each stride-2 stage

    def __post_init__(self) -> None:
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.image_size % (2 ** self.num_layers):
            raise ValueError(f"image_size={self.image_size} is not divisible by 2^num_layers={2 ** self.num_layers}")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // 2 ** self.num_layers
        return (side, side)


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(conv3x3(x))))) on (B, C, h, w)."""

    def __init__(self, chans: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(chans, chans, 3, padding=1), nn.ReLU(), nn.Conv2d(chans, chans, 3, padding=1),
            nn.ReLU(), nn.Conv2d(chans, chans, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class DiscreteVAE(nn.Module):
    """(B, C, S, S) images <-> (B, K, h, w) code logits / (B, h*w) codes."""

    def __init__(self, cfg: DVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_chans, h, 3, padding=1)]
        for _ in range(cfg.num_layers):
            enc += [nn.ReLU(), nn.Conv2d(h, h, 4, stride=2, padding=1)]
            enc += [ResBlock(h) for _ in range(cfg.num_resblocks)]
        enc += [nn.ReLU(), nn.Conv2d(h, cfg.codebook_size, 1)]
        self.encoder = nn.Sequential(*enc)
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.embed_dim)
        dec: list[nn.Module] = [nn.Conv2d(cfg.embed_dim, h, 1)]
        for _ in range(cfg.num_layers):
            dec += [ResBlock(h) for _ in range(cfg.num_resblocks)]
            dec += [nn.ReLU(), nn.ConvTranspose2d(h, h, 4, stride=2, padding=1)]
        dec += [nn.ReLU(), nn.Conv2d(h, cfg.in_chans, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def grid(self) -> tuple[int, int]:
        return self.cfg.grid

    def _check(self, images: Tensor) -> None:
        c, s = self.cfg.in_chans, self.cfg.image_size
        if images.dim() != 4 or images.shape[1] != c or images.shape[-2:] != (s, s):
            raise ValueError(f"the tokenizer expects images (B, {c}, {s}, {s}), got {tuple(images.shape)}")

    def logits(self, images: Tensor) -> Tensor:
        """(B, C, S, S) -> (B, K, h, w) code logits."""
        self._check(images)
        return self.encoder(images)

    def decode_soft(self, assign: Tensor) -> Tensor:
        """(B, K, h, w) code weights (one-hot or relaxed) -> (B, C, S, S) reconstruction."""
        z = torch.einsum("bkhw,ke->behw", assign, self.codebook.weight)  # (B, K, h, w) -> (B, E, h, w)
        return self.decoder(z)

    def forward(self, images: Tensor, temperature: float, hard: bool = False) -> tuple[Tensor, Tensor]:
        """Gumbel-softmax relaxed pass: returns (reconstruction (B, C, S, S), logits (B, K, h, w))."""
        logits = self.logits(images)
        assign = F.gumbel_softmax(logits.float(), tau=temperature, hard=hard, dim=1).to(logits.dtype)
        return self.decode_soft(assign), logits

    @torch.no_grad()
    def codes(self, images: Tensor) -> Tensor:
        """Hard tokenisation: (B, C, S, S) -> (B, h*w) long, the argmax code of every cell, row-major."""
        return self.logits(images).argmax(dim=1).flatten(1)  # (B, h, w) -> (B, N)

    @torch.no_grad()
    def decode_codes(self, codes: Tensor) -> Tensor:
        """(B, h*w) long codes -> (B, C, S, S) reconstruction."""
        h, w = self.grid
        one_hot = F.one_hot(codes.view(-1, h, w), self.cfg.codebook_size).permute(0, 3, 1, 2)  # (B, K, h, w)
        return self.decode_soft(one_hot.to(self.codebook.weight.dtype))

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer on its own (config + weights) in safetensors, atomically."""
        if Path(path).suffix != ".safetensors":
            raise ValueError(f"a tokenizer file is safetensors: name it *.safetensors, not {Path(path).name}")
        save_state_file(path, self.state_dict(), {"format": FORMAT, "version": str(VERSION),
                                                  "config": json.dumps(asdict(self.cfg))})
        logger.info("saved the dVAE tokenizer (%d codes, grid %s) to %s", self.cfg.codebook_size, self.grid, path)
        return Path(path)


def load_tokenizer(path: str | Path) -> DiscreteVAE:
    """A frozen, eval-mode tokenizer from a tokenizer file (``tokenizer.safetensors``; a version-1 ``tokenizer.pt``)
    or a dVAE pretraining run directory / its checkpoint. No file is unpickled beyond tensors and plain data."""
    path = Path(path)
    if path.is_dir():
        for name in (TOKENIZER_NAME, LEGACY_TOKENIZER_NAME):
            if (path / name).is_file():
                return load_tokenizer(path / name)
        return _from_run(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer not found: {path}. Train one first (e.g. `unimim pretrain recipes/image/dvae_fmnist_cpu.yaml`) "
            f"and point method.tokenizer at its run directory or at an exported {TOKENIZER_NAME}"
        )
    if path.suffix == ".safetensors":
        if path.name == CHECKPOINT_NAME:  # the weights of a pretraining checkpoint
            model = _from_checkpoint(load_checkpoint(path), path)
        else:
            state, meta = load_state_file(path, "tokenizer")
            if meta.get("format") != FORMAT:
                raise RuntimeError(f"{path} is not a unimim dVAE tokenizer file (format {meta.get('format')!r})")
            if meta.get("version") != str(VERSION):
                raise RuntimeError(f"{path}: tokenizer format version {meta.get('version')}, expected {VERSION}")
            model = DiscreteVAE(DVAEConfig(**json.loads(meta["config"])))
            model.load_state_dict(state)
        return freeze(model)
    obj = safe_load(path, "tokenizer")
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version") != LEGACY_VERSION:
            raise RuntimeError(f"{path}: tokenizer format version {obj.get('version')}, expected {LEGACY_VERSION} "
                               f"in a .pt file ({VERSION} is a .safetensors file)")
        model = DiscreteVAE(DVAEConfig(**obj["config"]))
        model.load_state_dict(obj["state_dict"])
    elif isinstance(obj, dict) and "model" in obj and "config" in obj:  # a version-1 pretraining checkpoint
        model = _from_checkpoint(obj, path)
    else:
        raise RuntimeError(f"{path} is neither a unimim dVAE tokenizer file nor a dVAE pretraining checkpoint")
    return freeze(model)


def _from_run(run_dir: Path) -> DiscreteVAE:
    if not has_checkpoint(run_dir):
        raise FileNotFoundError(f"{run_dir} holds neither {TOKENIZER_NAME} nor a checkpoint ({CHECKPOINT_NAME}; "
                                f"{LEGACY_CHECKPOINT_NAME} of format version 1)")
    return _from_checkpoint(load_checkpoint(run_dir), run_dir)


def _from_checkpoint(ckpt: dict[str, Any], path: Path) -> DiscreteVAE:
    config = ckpt["config"]
    if config.get("objective") != "dvae":
        raise RuntimeError(f"{path} is a checkpoint of objective {config.get('objective')!r}, not of a dVAE")
    model = DiscreteVAE(DVAEConfig(**config["method"]["model"]))
    prefix = "dvae."
    model.load_state_dict({k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)})
    return model


def freeze(model: DiscreteVAE) -> DiscreteVAE:
    """Stage 2 never trains the tokenizer: no gradients, eval mode."""
    model.requires_grad_(False)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    """``python -m modalities.image.objectives.tokenizer.dvae RUN_DIR [OUT]``: export a dVAE run's tokenizer."""
    import argparse

    parser = argparse.ArgumentParser(description="export the dVAE tokenizer of a pretraining run to its own file")
    parser.add_argument("run_dir")
    parser.add_argument("out", nargs="?", help=f"output file (default RUN_DIR/{TOKENIZER_NAME})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = _from_run(Path(args.run_dir))
    out = Path(args.out) if args.out else Path(args.run_dir) / TOKENIZER_NAME
    model.save(out)
    info = yaml.safe_dump({"codebook_size": model.cfg.codebook_size, "grid": list(model.grid)}, sort_keys=False)
    logger.info("tokenizer: %s", info.strip().replace("\n", ", "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

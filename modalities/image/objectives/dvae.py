"""Training the dVAE visual tokenizer (BEiT stage 1) as an objective of the ordinary pretraining loop.

DALL-E (Ramesh et al. 2021, §2.1, App. A.2) trains its dVAE with a Gumbel-softmax relaxation, the temperature
annealed from 1 to 1/16 and the weight of KL(q || uniform prior) ramped up from 0; tokenisation then takes the hard
argmax. Small-scale schedules follow karpathy/deep-vector-quantization (cosine temperature 1 -> 1/16, KL weight 0 ->
5e-4, MSE on normalised pixels; usage and perplexity logged). Reference: ../shared/reference/masked-image-modeling.md
§6.2-6.4. The model itself is :class:`modalities.image.objectives.tokenizer.dvae.DiscreteVAE`.

Codebook health: every step logs the perplexity of the batch's hard codes and the fraction of codes it uses; every
``usage_window`` steps the fraction of codes used anywhere in the window is logged as ``codebook_usage`` and a warning
is emitted when it falls below ``dead_code_warning`` (most codes dead: lower ``codebook_size`` or raise the KL weight).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from modalities.base import ObjectiveSpec
from modalities.image.model.adapter import ImageAdapterConfig
from modalities.image.objectives.tokenizer.dvae import DiscreteVAE, DVAEConfig
from unimim.core.batch import Batch
from unimim.objectives.base import EncoderObjective, ObjectiveOutput, refuse_mask

logger = logging.getLogger(__name__)


@dataclass
class DVAEObjectiveConfig:
    model: DVAEConfig = field(default_factory=DVAEConfig)
    temperature: float = 1.0          # Gumbel-softmax tau at step 0 (DALL-E: 1)
    end_temperature: float = 1 / 16   # tau after temperature_steps (DALL-E: 1/16)
    temperature_steps: int = 1000     # cosine anneal length in optimizer steps
    kl_weight: float = 5e-4           # beta after warm-up (DALL-E 6.6 with its per-element normalisation)
    kl_warmup_steps: int = 500        # linear ramp of beta from 0 (DALL-E: 5000 updates)
    straight_through: bool = False    # hard one-hot forward with the soft gradient
    usage_window: int = 100           # optimizer steps over which codebook usage is counted
    dead_code_warning: float = 0.5    # warn when fewer than this fraction of the codes were used in a window

    def __post_init__(self) -> None:
        if not 0 < self.end_temperature <= self.temperature:
            raise ValueError(f"need 0 < end_temperature <= temperature, got {self.end_temperature}, {self.temperature}")
        for name in ("temperature_steps", "usage_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"method.{name} must be >= 1, got {getattr(self, name)}")
        if self.kl_weight < 0 or self.kl_warmup_steps < 0:
            raise ValueError("method.kl_weight and method.kl_warmup_steps must be >= 0")


def temperature_at(cfg: DVAEObjectiveConfig, step: int) -> float:
    """Cosine anneal from ``temperature`` to ``end_temperature`` over ``temperature_steps``, then constant."""
    frac = min(1.0, step / cfg.temperature_steps)
    return cfg.end_temperature + 0.5 * (cfg.temperature - cfg.end_temperature) * (1 + math.cos(math.pi * frac))


def kl_weight_at(cfg: DVAEObjectiveConfig, step: int) -> float:
    """Linear ramp 0 -> ``kl_weight`` over ``kl_warmup_steps``, then constant."""
    if cfg.kl_warmup_steps == 0:
        return cfg.kl_weight
    return cfg.kl_weight * min(1.0, step / cfg.kl_warmup_steps)


def kl_to_uniform(logits: Tensor) -> Tensor:
    """KL(q || U(K)) = sum_k q log(q K), mean over grid cells. logits: (B, K, h, w) -> scalar."""
    logq = F.log_softmax(logits.float(), dim=1)  # (B, K, h, w)
    return (logq.exp() * (logq + math.log(logits.shape[1]))).sum(1).mean()


def code_perplexity(codes: Tensor, num_codes: int) -> Tensor:
    """exp(entropy) of the empirical code distribution: codes (...) long -> scalar in [1, num_codes]."""
    p = torch.bincount(codes.flatten(), minlength=num_codes).float()
    p = p / p.sum()
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class DVAETraining(EncoderObjective):
    """Trains a :class:`DiscreteVAE` whose token grid equals the patch grid of the ViT the recipe declares
    (``adapter``: the BEiT that will use the codes); no ViT is built.

    ``encode`` gives the tokenizer encoder's last hidden features, so ``unimim probe`` works on a dVAE run too.
    """

    def __init__(self, cfg: DVAEObjectiveConfig, adapter: ImageAdapterConfig) -> None:
        super().__init__()  # no ViT backbone: the tokenizer is the whole model
        m = cfg.model
        if (m.image_size, m.in_chans) != (adapter.image_size, adapter.in_chans):
            raise ValueError(f"method.model image_size/in_chans ({m.image_size}, {m.in_chans}) differ from the "
                             f"adapter's ({adapter.image_size}, {adapter.in_chans})")
        if m.grid != tuple(adapter.grid):
            raise ValueError(f"the dVAE token grid {m.grid} (image_size / 2^num_layers) differs from the ViT patch "
                             f"grid {tuple(adapter.grid)}; BEiT needs one code per patch")
        self.cfg = cfg
        self.dvae = DiscreteVAE(m)
        self.num_updates = 0
        self.register_buffer("window_hits", torch.zeros(m.codebook_size, dtype=torch.long), persistent=False)
        self.last_usage = float("nan")

    def get_extra_state(self) -> dict[str, float]:  # the schedules resume where they stopped
        return {"num_updates": self.num_updates, "last_usage": self.last_usage}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.num_updates, self.last_usage = int(state["num_updates"]), float(state["last_usage"])

    def encode(self, inputs: Tensor, padding_mask: Tensor | None = None,
               layers: Sequence[int] | None = None, *, mask: Tensor | None = None) -> Tensor:
        """(B, C, S, S) -> (B, N, hidden): the tokenizer encoder's features before the code logits."""
        refuse_mask("the dVAE tokenizer", mask)
        if layers is not None:
            raise ValueError("the dVAE tokenizer has no transformer blocks: probe.layers does not apply")
        self.dvae._check(inputs)
        h = self.dvae.encoder[:-1](inputs)  # (B, hidden, h, w)
        return h.flatten(2).transpose(1, 2)  # (B, hidden, h, w) -> (B, N, hidden)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        images = batch.inputs  # (B, C, S, S); the mask in the batch is not used
        tau = temperature_at(self.cfg, self.num_updates)
        beta = kl_weight_at(self.cfg, self.num_updates)
        recon, logits = self.dvae(images, tau, hard=self.cfg.straight_through)
        recon_loss = F.mse_loss(recon.float(), images.float())
        kl = kl_to_uniform(logits)
        loss = recon_loss + beta * kl
        codes = logits.detach().argmax(dim=1)  # (B, h, w) hard codes
        k = self.cfg.model.codebook_size
        if self.training:
            self.window_hits += torch.bincount(codes.flatten(), minlength=k)
        logs = {"recon_loss": float(recon_loss.detach()), "kl": float(kl.detach()), "temperature": tau,
                "kl_weight": beta, "perplexity": float(code_perplexity(codes, k)),
                "codes_used": float(codes.unique().numel() / k)}
        if not math.isnan(self.last_usage):
            logs["codebook_usage"] = self.last_usage
        return ObjectiveOutput(loss=loss, logs=logs)

    def update_teacher(self, step: int) -> dict[str, float]:
        """No teacher: advances the schedules and closes a codebook-usage window every ``usage_window`` steps."""
        self.num_updates = step
        if step % self.cfg.usage_window == 0:
            self.last_usage = float((self.window_hits > 0).float().mean())
            self.window_hits.zero_()
            if self.last_usage < self.cfg.dead_code_warning:
                logger.warning(
                    "dVAE codebook: only %.1f%% of the %d codes were used in the last %d steps (most codes are dead); "
                    "consider a smaller codebook_size or a larger kl_weight", 100 * self.last_usage,
                    self.cfg.model.codebook_size, self.cfg.usage_window)
        return {}


DVAE_SPEC = ObjectiveSpec(  # BEiT's visual tokenizer (stage 1): no ViT is built
    config=DVAEObjectiveConfig,
    build=lambda cfg, modality: DVAETraining(cfg.method, cfg.adapter),
    modalities=("image",),
    tiny=("method.model.image_size=16", "method.model.in_chans=1", "method.model.num_layers=2",
          "method.model.hidden=16", "method.model.num_resblocks=1", "method.model.embed_dim=16",
          "method.model.codebook_size=512", "train.accumulate=1"),
    logs=frozenset({"recon_loss", "kl", "temperature", "kl_weight", "perplexity", "codes_used"}),
)

"""Palette-style conditional diffusion (report Experiment 3): schedule, denoiser, samplers.

The network sees concat(image, noisy map at step t) and t, and predicts one of three
targets: the noise ``eps`` (the report's choice), the clean map ``x0``, or the velocity
``v`` (Salimans & Ho 2022). The noise schedule is a plain object shared by training and
every sampler; the network never sees betas. Samplers are explicit choices:

* ``ancestral``: DDPM ancestral sampling over every trained step (Ho et al. 2020, Alg. 2);
* ``ddim``: deterministic DDIM (Song et al. 2021, eq. 12 with sigma = 0) over k steps.

The report sampled 2,000 ancestral steps (~4 h for 320 images on its GPU) and so could
not search this family; DDIM with few steps, and x0/v targets that suit few steps, make
validation L1 cheap enough to compute every epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.layers import NORMS, conv_bias, down_block, norm_layer, up_block

SCHEDULES = ("linear", "cosine", "sigmoid")
PREDICTIONS = ("eps", "x0", "v")
SAMPLERS = ("ddim", "ancestral")
LEVELS = 5


def beta_schedule(name: str, steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Betas (float64, length ``steps``) of the named schedule.

    ``cosine`` is Nichol & Dhariwal (2021) and ignores beta_start/beta_end; ``sigmoid``
    (Jabri et al. 2022) runs from beta_start to beta_end along a sigmoid.
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    if name == "linear":
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if name == "cosine":
        s = 0.008
        t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
        alphas_cumprod = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
        return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(0, 0.999)
    if name == "sigmoid":
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        x = torch.linspace(-6, 6, steps, dtype=torch.float64)
        return torch.sigmoid(x) * (beta_end - beta_start) + beta_start
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


class NoiseSchedule:
    """alpha-bar and friends for one beta schedule; moves tensors to the caller's device."""

    def __init__(self, name: str, steps: int, beta_start: float = 1e-4, beta_end: float = 0.02, *, prediction: str = "eps") -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction target {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        self.name, self.steps, self.prediction = name, steps, prediction
        betas = beta_schedule(name, steps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0).float()

    def _abar(self, t: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(t.device)[t].view(-1, 1, 1, 1)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)  (DDPM eq. 4)."""
        abar = self._abar(t)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to predict at step t."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        abar = self._abar(t)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0  # v

    def split(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Recover (x0, eps) from the network output, with x0 clipped to the data range [-1, 1]."""
        abar = self._abar(t)
        if self.prediction == "eps":
            x0 = (x_t - (1 - abar).sqrt() * output) / abar.sqrt()
        elif self.prediction == "x0":
            x0 = output
        else:
            x0 = abar.sqrt() * x_t - (1 - abar).sqrt() * output
        x0 = x0.clamp(-1, 1)
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt().clamp(min=1e-8)
        return x0, eps


@dataclass(frozen=True)
class DenoiserConfig:
    width: int = 64
    norm: str = "batch"
    in_channels: int = 6  # image (3) + noisy map (3)
    out_channels: int = 3

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")


def timestep_embedding(t: torch.Tensor, dim: int, steps: int) -> torch.Tensor:
    """Sinusoidal embedding of t / steps (so the same net reads any number of steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = (t.float() / steps * 1000.0)[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Denoiser(nn.Module):
    """The UNet of models.unet with a time embedding added at every encoder level."""

    def __init__(self, cfg: DenoiserConfig, steps: int) -> None:
        super().__init__()
        c = cfg.width
        self.steps = steps
        widths = [c * 2**i for i in range(LEVELS)]
        self.embed_dim = 4 * c
        self.time_mlp = nn.Sequential(nn.Linear(self.embed_dim, self.embed_dim), nn.SiLU(), nn.Linear(self.embed_dim, self.embed_dim))
        self.down = nn.ModuleList()
        self.time_proj = nn.ModuleList()
        cin = cfg.in_channels
        for i, cout in enumerate(widths):
            self.down.append(down_block(cin, cout, cfg.norm, normalise=i > 0))
            self.time_proj.append(nn.Linear(self.embed_dim, cout))
            cin = cout
        self.up = nn.ModuleList()
        for i in reversed(range(LEVELS - 1)):
            source = widths[i + 1] if i == LEVELS - 2 else widths[i + 1] * 2
            self.up.append(up_block(source, widths[i], cfg.norm))
        self.head = nn.Sequential(
            nn.ConvTranspose2d(widths[0] * 2, widths[0], 4, 2, 1, bias=conv_bias(cfg.norm)),
            norm_layer(cfg.norm)(widths[0]),
            nn.ReLU(inplace=True),
            nn.Conv2d(widths[0], cfg.out_channels, 3, 1, 1),
        )

    def forward(self, image: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.embed_dim, self.steps))
        x = torch.cat([image, x_t], dim=1)
        skips = []
        for block, proj in zip(self.down, self.time_proj):
            x = block(x) + proj(emb)[:, :, None, None]
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = torch.cat([block(x), skips.pop()], dim=1)
        return self.head(x)


def build_denoiser(cfg: DenoiserConfig, steps: int) -> Denoiser:
    return Denoiser(cfg, steps)


@torch.no_grad()
def sample(
    model: Denoiser,
    schedule: NoiseSchedule,
    image: torch.Tensor,
    *,
    sampler: str = "ddim",
    sampling_steps: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample maps in [-1, 1] conditioned on ``image`` (N, 3, H, W).

    ``ancestral`` ignores ``sampling_steps`` and walks every trained step; ``ddim`` walks
    ``sampling_steps`` evenly spaced steps deterministically.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    n = image.shape[0]
    x = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    abar_all = schedule.alphas_cumprod.to(image.device)
    if sampler == "ancestral":
        timesteps = list(range(schedule.steps - 1, -1, -1))
    else:
        k = max(1, min(sampling_steps, schedule.steps))
        timesteps = sorted({int(round(s)) for s in torch.linspace(0, schedule.steps - 1, k).tolist()}, reverse=True)
    for i, step in enumerate(timesteps):
        t = torch.full((n,), step, device=image.device, dtype=torch.long)
        x0, eps = schedule.split(model(image, x, t), x, t)
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        abar_prev = abar_all[prev] if prev >= 0 else torch.tensor(1.0, device=image.device)
        if sampler == "ddim" or prev < 0:
            # DDIM eq. 12, sigma = 0: x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps
            x = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
        else:
            # DDPM posterior q(x_{t-1} | x_t, x0) (eq. 6, 7) plus its variance beta-tilde
            abar_t = abar_all[step]
            alpha_t = abar_t / abar_prev
            beta_t = 1 - alpha_t
            mean = (abar_prev.sqrt() * beta_t / (1 - abar_t)) * x0 + (alpha_t.sqrt() * (1 - abar_prev) / (1 - abar_t)) * x
            variance = beta_t * (1 - abar_prev) / (1 - abar_t)
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + variance.sqrt() * noise
    return x.clamp(-1, 1)

"""Palette-style conditional diffusion (report Experiment 3): schedule, denoiser, samplers.

The network sees concat(image, noisy map at step t) and t, and predicts one of three
targets: the noise ``eps`` (the report's choice), the clean map ``x0``, or the velocity
``v`` (Salimans & Ho 2022). The noise schedule is a plain object shared by training and
every sampler; the network never sees betas. Samplers are explicit choices, each a small
object over the schedule with ``set_timesteps`` and ``step`` (as diffusers' schedulers):

* ``ancestral``: DDPM ancestral sampling over every trained step (Ho et al. 2020, Alg. 2);
* ``ddim``: deterministic DDIM (Song et al. 2021, eq. 12 with sigma = 0) over k steps.

Sampling starts from pure noise, so training must reach pure noise too. The report's
schedules did not: linear betas 1e-6 .. 0.01 over 500 steps leave 28% of the clean map's
amplitude at the last step (8% over 1,000), and DDIM with 1 leading step evaluated t = 0.
Following Lin et al. 2024 ("Common diffusion noise schedules and sample steps are
flawed", arXiv 2305.08891) every schedule is rescaled to zero terminal SNR (Algorithm 1)
and DDIM spaces its k steps from the last one ("trailing"). The eps target cannot recover
the map at exactly zero signal (it divides by it), so for eps the rescaled schedule ends at
``EPS_TERMINAL_SIGNAL`` instead: still far below what a sampler starting from noise can tell
apart, and a reason to prefer x0 or v.

The report sampled 2,000 ancestral steps (~4 h for 320 images on its GPU) and so could
not search this family; DDIM with few steps, and x0/v targets that suit few steps, make
validation L1 cheap enough to compute every epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.layers import conv_bias, down_block, norm_layer, up_block
from models.registry import NORMS, PREDICTIONS, SAMPLERS, SCHEDULES

LEVELS = 5
MAX_TERMINAL_SIGNAL = 0.01  # sqrt(alpha-bar) at the last step: above this, sampling from noise starts off-distribution
EPS_TERMINAL_SIGNAL = 0.005  # where a zero-terminal-SNR schedule ends for the eps target (see the module docstring)


def _checked_range(beta_start: float, beta_end: float) -> None:
    if not 0 < beta_start < beta_end < 1:
        raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")


def linear_betas(steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    _checked_range(beta_start, beta_end)
    return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)


def cosine_betas(steps: int, beta_start: float, beta_end: float) -> torch.Tensor:  # noqa: ARG001 - by design
    s = 0.008
    t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
    alphas_cumprod = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(0, 0.999)


def sigmoid_betas(steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    _checked_range(beta_start, beta_end)
    x = torch.linspace(-6, 6, steps, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def beta_schedule(name: str, steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Betas (float64, length ``steps``) of the named schedule, before any rescaling.

    ``cosine`` is Nichol & Dhariwal (2021) and ignores beta_start/beta_end; ``sigmoid``
    (Jabri et al. 2022) runs from beta_start to beta_end along a sigmoid.
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    return SCHEDULES.get(name)(steps, beta_start, beta_end)  # models.registry.SCHEDULES: the ones a study may name


def rescale_terminal_signal(betas: torch.Tensor, signal: float = 0.0) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alpha-bar) so that it keeps its first
    value and ends at ``signal`` (0: zero terminal SNR); returns the new betas (float64)."""
    root = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first - signal) / (first - last) + signal
    abar = root.square()
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


class NoiseSchedule:
    """alpha-bar and friends for one beta schedule; moves tensors to the caller's device.

    With ``zero_terminal_snr`` (the default) the betas are rescaled so the last step is pure
    noise (for the eps target: ``EPS_TERMINAL_SIGNAL``); without it, a schedule whose last
    step keeps more than ``MAX_TERMINAL_SIGNAL`` of the map is refused, since sampling
    starts from pure noise and would start where the model never trained.
    """

    def __init__(self, name: str, steps: int, beta_start: float = 1e-4, beta_end: float = 0.02, *,
                 prediction: str = "eps", zero_terminal_snr: bool = True, x0_logits: bool = False) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction target {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        if x0_logits and prediction != "x0":
            raise ValueError("x0_logits (the network's output read as tanh logits of x0) needs prediction='x0'")
        self.x0_logits = x0_logits  # x0 = tanh(output): the map's pre-activation, as the UNet's head
        self.name, self.steps, self.prediction = name, steps, prediction
        betas = beta_schedule(name, steps, beta_start, beta_end)
        if zero_terminal_snr:
            betas = rescale_terminal_signal(betas, EPS_TERMINAL_SIGNAL if prediction == "eps" else 0.0)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.terminal_signal = float(alphas_cumprod[-1].sqrt())
        if self.terminal_signal > MAX_TERMINAL_SIGNAL:
            raise ValueError(
                f"the {name} schedule (beta {beta_start:g} .. {beta_end:g}, {steps} steps) keeps "
                f"{self.terminal_signal:.1%} of the map at its last step, but sampling starts from pure noise; "
                f"use zero_terminal_snr = true, or a larger beta_end or more steps (at most {MAX_TERMINAL_SIGNAL:.0%})")
        self.alphas_cumprod = alphas_cumprod.float()

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """Keep the schedule on ``device``: no host-to-device copy per step (and CUDA graphs can capture a step)."""
        self.alphas_cumprod = self.alphas_cumprod.to(device)
        return self

    def _abar(self, t: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(t.device)[t].view(-1, 1, 1, 1)

    def abar_at(self, step: int, device: torch.device | str) -> torch.Tensor:
        """alpha-bar at one step as a scalar tensor; step -1 means 'before any noise' (1.0)."""
        if step < 0:
            return torch.tensor(1.0, device=device)
        return self.alphas_cumprod[step].to(device)

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
            x0 = torch.tanh(output) if self.x0_logits else output
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
            raise ValueError(f"norm must be one of {tuple(NORMS)}, got {self.norm!r}")


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


@dataclass
class SamplerStep:
    """What one sampler step returns: the sample at the previous timestep and the x0 estimate."""

    prev_sample: torch.Tensor
    pred_x0: torch.Tensor


# One generator for a batch, or one per sample (a sample's noise then is what it would be alone in its batch).
Generators = torch.Generator | list[torch.Generator] | None


def gaussian_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise shaped as ``x``, drawn from ``generator``, or, given one generator per sample, each
    sample's from its own (as ``torch.randn`` would draw it for a batch of that sample alone)."""
    if isinstance(generator, list):
        if len(generator) != x.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]}")
        return torch.cat([torch.randn((1, *x.shape[1:]), generator=g, device=x.device, dtype=x.dtype)
                          for g in generator])
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class DDIMSampler:
    """Deterministic DDIM (Song et al. 2021, eq. 12 with sigma = 0) over k trailing timesteps."""

    name = "ddim"

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule
        self.timesteps: list[int] = []

    def set_timesteps(self, k: int) -> None:
        """k steps spaced evenly and ending at the last trained step ("trailing", Lin et al. 2024,
        Table 2): 1,000 trained steps and k = 10 give 999, 899, ..., 99; k = 1 gives 999 alone."""
        k = max(1, min(k, self.schedule.steps))
        n = self.schedule.steps
        self.timesteps = sorted({round(n - i * n / k) - 1 for i in range(k)}, reverse=True)

    def _previous(self, t: int) -> int:
        i = self.timesteps.index(t)
        return self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1

    def step(self, output: torch.Tensor, t: int, x_t: torch.Tensor, generator: Generators = None) -> SamplerStep:
        steps = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        x0, eps = self.schedule.split(output, x_t, steps)
        abar_prev = self.schedule.abar_at(self._previous(t), x_t.device)
        # x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps   (eq. 12, sigma = 0)
        return SamplerStep(abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps, x0)


class AncestralSampler(DDIMSampler):
    """DDPM ancestral sampling over every trained step (Ho et al. 2020, Alg. 2, with the
    posterior of eq. 6-7 around the predicted x0)."""

    name = "ancestral"

    def set_timesteps(self, k: int | None = None) -> None:  # noqa: ARG002 - ancestral walks every step
        self.timesteps = list(range(self.schedule.steps - 1, -1, -1))

    def step(self, output: torch.Tensor, t: int, x_t: torch.Tensor, generator: Generators = None) -> SamplerStep:
        steps = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        x0, _ = self.schedule.split(output, x_t, steps)
        if t == 0:
            return SamplerStep(x0, x0)
        abar_t, abar_prev = self.schedule.abar_at(t, x_t.device), self.schedule.abar_at(t - 1, x_t.device)
        alpha_t = abar_t / abar_prev
        beta_t = 1 - alpha_t
        # posterior q(x_{t-1} | x_t, x0): mean (eq. 7) and variance beta-tilde
        mean = (abar_prev.sqrt() * beta_t / (1 - abar_t)) * x0 + (alpha_t.sqrt() * (1 - abar_prev) / (1 - abar_t)) * x_t
        variance = beta_t * (1 - abar_prev) / (1 - abar_t)
        return SamplerStep(mean + variance.sqrt() * gaussian_like(x_t, generator), x0)


def build_sampler(name: str, schedule: NoiseSchedule) -> DDIMSampler:
    return SAMPLERS.get(name)(schedule)  # models.registry.SAMPLERS: the ones a study may name


@torch.no_grad()
def sample(
    model: Denoiser,
    schedule: NoiseSchedule,
    image: torch.Tensor,
    *,
    sampler: str = "ddim",
    sampling_steps: int = 10,
    generator: Generators = None,
) -> torch.Tensor:
    """Sample maps in [-1, 1] conditioned on ``image`` (N, 3, H, W), starting from pure noise.

    ``ancestral`` ignores ``sampling_steps`` and walks every trained step; ``ddim`` walks
    ``sampling_steps`` trailing steps deterministically. One generator per sample makes each
    sample's map the one it would get alone (``gaussian_like``).
    """
    walker = build_sampler(sampler, schedule)
    walker.set_timesteps(sampling_steps)
    x = gaussian_like(image, generator)
    for t in walker.timesteps:
        steps = torch.full((image.shape[0],), t, device=image.device, dtype=torch.long)
        x = walker.step(model(image, x, steps), t, x, generator).prev_sample
    return x.clamp(-1, 1)

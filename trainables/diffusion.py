"""Palette-style conditional diffusion trainable (report Algorithm 3, made searchable).

Training is the report's: random t, noise the map, predict the target, MSE (or L1,
``denoise_loss``, as Palette allows: with the x0 target L1 is minimised by the median map,
which for sparse channels is black where MSE's mean is a faint false grey). With the x0 target
``ce`` and ``l1+ce`` read the network's output as the map's logits (x0 = tanh(output), as the
UNet's head) and train it with the autoencoder's map losses (``trainables/losses.py``): the
cross-entropy term is what taught the autoencoder the sparse "falsely remembered" channel. What the
report lacked is validation L1 during training: every ``eval_every`` epochs the loop
samples validation maps with the search-time sampler (DDIM with few steps by default),
and after the last epoch once more with the final sampler the user picks.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from models.diffusion import PREDICTIONS, SAMPLERS, DenoiserConfig, NoiseSchedule, build_denoiser, sample
from models.layers import scaled_width
from trainables.augment import AugmentConfig, hide_invalid
from trainables.config import RunSettings, build_optimizer
from trainables.family import OneNetworkFamily, step
from trainables.losses import MAP_LOSSES, masked_l1, masked_mse

MAP_LOSSES_ON_X0 = ("ce", "l1+ce")  # the autoencoder's map losses (trainables/losses.py), on the x0 estimate
# The denoising losses a study may name (``denoise_loss``): MSE (the report's) and L1 on any target, and the
# map losses that read the output as the map's logits (x0 target only).
DENOISE_LOSSES = {"mse": masked_mse, "l1": masked_l1, **{name: MAP_LOSSES[name] for name in MAP_LOSSES_ON_X0}}


@dataclass(frozen=True)
class DiffusionConfig(AugmentConfig):
    norm: str = "batch"
    width: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    batch_size: int = 16
    schedule: str = "linear"
    beta_start: float = 1e-6
    beta_end: float = 0.01
    steps: int = 2000
    zero_terminal_snr: bool = True  # rescale the betas so the last step is pure noise (Lin et al. 2024)
    prediction: str = "x0"  # x0 suits few-step DDIM; the report used eps
    sampler: str = "ddim"  # used for validation during the search
    sampling_steps: int = 10
    final_sampler: str = "ddim"  # used once after the last epoch
    final_sampling_steps: int = 50
    denoise_loss: str = "mse"  # "mse" (the report's), "l1"; with the x0 target also "ce" or "l1+ce" (see below)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.denoise_loss not in DENOISE_LOSSES:
            raise ValueError(f"denoise_loss must be one of {tuple(DENOISE_LOSSES)}, got {self.denoise_loss!r}")
        if self.denoise_loss in MAP_LOSSES_ON_X0 and self.prediction != "x0":
            raise ValueError(f"denoise_loss {self.denoise_loss!r} reads the network's output as the map's logits, "
                             f"so it needs prediction = 'x0', not {self.prediction!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        for name in ("sampler", "final_sampler"):
            if getattr(self, name) not in SAMPLERS:
                raise ValueError(f"{name} must be one of {tuple(SAMPLERS)}, got {getattr(self, name)!r}")
        if self.sampling_steps < 1 or self.final_sampling_steps < 1:
            raise ValueError("sampling_steps and final_sampling_steps must be at least 1")


class DiffusionFamily(OneNetworkFamily):
    name, aliases, config_cls = "diffusion", ("palette",), DiffusionConfig
    net_key = "denoiser"
    # x0 with l1+ce, p_translation 0: 0.0397 +- 0.0014 (3.5%; benchmarks/results/seeds.json, 2026-12-01 on 85cddc4).
    noise = 0.035

    def __init__(self, hp: DiffusionConfig, settings: RunSettings, device: torch.device) -> None:
        super().__init__(hp, settings, device)
        width = scaled_width(hp.width, settings.width_divisor)
        self.schedule = NoiseSchedule(hp.schedule, hp.steps, hp.beta_start, hp.beta_end, prediction=hp.prediction,
                                      zero_terminal_snr=hp.zero_terminal_snr,
                                      x0_logits=hp.denoise_loss in MAP_LOSSES_ON_X0).to(device)
        self.net = build_denoiser(DenoiserConfig(width=width, norm=hp.norm), hp.steps).to(device)
        self.opt = build_optimizer(self.net.parameters(), hp)
        self.scaler = self.precision.scaler()
        self.loss = DENOISE_LOSSES[hp.denoise_loss]
        # Sampling noise is seeded, so a config's validation L1 is reproducible.
        self.sample_seed = settings.seed
        self.has_final_mode = (hp.final_sampler, hp.final_sampling_steps) != (hp.sampler, hp.sampling_steps)

    def train_step(self, image: torch.Tensor, vms: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        # Pixels augmentation hid carry no known map: they enter neither the network's noisy
        # input (set to 0 before noising) nor the loss.
        vms = hide_invalid(vms, valid)
        t = torch.randint(0, self.schedule.steps, (image.shape[0],), device=self.device)
        noise = torch.randn_like(vms)
        noisy = self.schedule.add_noise(vms, noise, t)
        with self.precision.autocast():
            loss = self.loss(self.net(image, noisy, t).float(), self.schedule.target(vms, noise, t), valid)
        step(loss, self.opt, self.scaler)
        return {"train_loss": loss.detach(), "noise_loss": loss.detach()}

    def calibration_forward(self, image: torch.Tensor, vms: torch.Tensor) -> None:
        # As in training: noisy maps at random steps, from a fixed generator so no global random
        # numbers are drawn (training continues exactly as it would have).
        generator = torch.Generator(device=image.device).manual_seed(self.sample_seed + len(image))
        t = torch.randint(0, self.schedule.steps, (image.shape[0],), device=image.device, generator=generator)
        noise = torch.randn(vms.shape, generator=generator, device=vms.device, dtype=vms.dtype)
        self.net(image, self.schedule.add_noise(vms, noise, t), t)

    def _sample(self, image: torch.Tensor, sampler: str, steps: int) -> torch.Tensor:
        generator = torch.Generator(device=image.device).manual_seed(self.sample_seed)
        return sample(self.net, self.schedule, image, sampler=sampler, sampling_steps=steps, generator=generator)

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self._sample(image, self.hp.sampler, self.hp.sampling_steps)

    def final_predict(self, image: torch.Tensor) -> torch.Tensor:
        return self._sample(image, self.hp.final_sampler, self.hp.final_sampling_steps)


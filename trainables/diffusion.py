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

import torch

from models.diffusion import DenoiserConfig, NoiseSchedule, build_denoiser, sample
from models.layers import scaled_width
from trainables.augment import hide_invalid
from trainables.config import MAP_LOSSES, PLAIN_DENOISE_LOSSES, DiffusionConfig, RunSettings
from trainables.families import DIFFUSION
from trainables.family import OneNetworkFamily, step
from trainables.losses import masked_l1, masked_mse
from trainables.optimizers import build_optimizer

class DiffusionFamily(OneNetworkFamily):
    card = DIFFUSION  # name, aliases, config, noise: trainables/families.py
    net_key = "denoiser"

    def __init__(self, hp: DiffusionConfig, settings: RunSettings, device: torch.device) -> None:
        super().__init__(hp, settings, device)
        width = scaled_width(hp.width, settings.width_divisor)
        self.schedule = NoiseSchedule(hp.schedule, hp.steps, hp.beta_start, hp.beta_end, prediction=hp.prediction,
                                      zero_terminal_snr=hp.zero_terminal_snr,
                                      x0_logits=hp.denoise_loss not in PLAIN_DENOISE_LOSSES).to(device)
        self.net = build_denoiser(DenoiserConfig(width=width, norm=hp.norm), hp.steps).to(device)
        self.opt = build_optimizer(self.net.parameters(), hp)
        self.scaler = self.precision.scaler()
        # The plain losses on the target; any map loss (trainables/losses.py) on the x0 estimate's logits.
        self.loss = {"mse": masked_mse, "l1": masked_l1}.get(hp.denoise_loss) or MAP_LOSSES.get(hp.denoise_loss)
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

    def _sample(self, image: torch.Tensor, sampler: str, steps: int, alone: bool = False) -> torch.Tensor:
        def seeded() -> torch.Generator:
            return torch.Generator(device=image.device).manual_seed(self.sample_seed)

        generator = [seeded() for _ in range(len(image))] if alone else seeded()
        return sample(self.net, self.schedule, image, sampler=sampler, sampling_steps=steps, generator=generator)

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self._sample(image, self.hp.sampler, self.hp.sampling_steps)

    def final_predict(self, image: torch.Tensor) -> torch.Tensor:
        return self._sample(image, self.hp.final_sampler, self.hp.final_sampling_steps)

    def map_photos(self, image: torch.Tensor) -> torch.Tensor:
        # Each photo's sampling noise from its own generator: its map is the one it gets alone, in any batch.
        return self._sample(image, self.hp.final_sampler, self.hp.final_sampling_steps, alone=True)


"""pix2pix GAN trainable (report Algorithm 2).

Per batch, as in the report: the generator step first,
``loss_G = adv(D(G(I), I), real) + l1_weight * L1(G(I), L)``, then the discriminator step
on the same fake (detached) and the real map. ``lsgan`` reproduces the report's
least-squares losses (l1_weight 1 in the report, 100 in pix2pix); ``wgan-gp`` is the
Wasserstein variant the report planned but never finished. Generator and discriminator
each have their own norm, width, optimizer, learning rate and betas. The reconstruction term
is ``map_loss`` (``l1+ce`` by default, ``l1`` for the report's; see ``trainables/losses.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import scaled_width
from models.patchgan import PatchGANConfig, build_patchgan, gan_loss
from models.unet import UNetConfig, build_unet
from trainables.augment import hide_invalid
from trainables.config import GANConfig, RunSettings
from trainables.families import GAN
from trainables.family import Family, step
from trainables.losses import masked_l1, masked_map_loss
from trainables.optimizers import build_optimizer


class GANFamily(Family):
    card = GAN  # name, aliases, config, noise, widths: trainables/families.py
    cpu_channels_last = True  # measured faster on 2 cores, paired (benchmarks/README.md, section 13)

    def __init__(self, hp: GANConfig, settings: RunSettings, device: torch.device) -> None:
        super().__init__(hp, settings, device)
        g_width = scaled_width(hp.g_width, settings.width_divisor)
        d_width = scaled_width(hp.d_width, settings.width_divisor)
        self.generator = build_unet(UNetConfig(width=g_width, norm=hp.g_norm, dropout=hp.g_dropout)).to(device)
        self.discriminator = build_patchgan(PatchGANConfig(width=d_width, norm=hp.d_norm)).to(device)
        self.g_opt = build_optimizer(self.generator.parameters(), hp, "g_")
        self.d_opt = build_optimizer(self.discriminator.parameters(), hp, "d_")
        self.loss = gan_loss(hp.gan_loss)
        self.map_loss = hp.map_loss
        self.g_scaler, self.d_scaler = self.precision.scaler(), self.precision.scaler()

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.g_opt, "discriminator": self.d_opt}

    def optimizer_prefixes(self) -> dict[str, torch.optim.Optimizer]:
        return {"g_": self.g_opt, "d_": self.d_opt}

    def scalers(self) -> dict[str, torch.amp.GradScaler]:
        return {"generator": self.g_scaler, "discriminator": self.d_scaler}

    @property
    def prediction_modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    def train_step(self, image: torch.Tensor, vms: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        # Where augmentation hid the image the true map is unknown: the L1 term ignores those
        # pixels and the discriminator sees them as 0 in real and fake maps alike.
        real = hide_invalid(vms, valid)
        # Generator: fool D and stay close to the true map.
        self.discriminator.requires_grad_(False)
        with self.precision.autocast():
            logits = self.generator.logits(image)
            fake = torch.tanh(logits)
            g_adv = self.loss.generator(self.discriminator(hide_invalid(fake, valid), image).float())
            g_recon = masked_map_loss(self.map_loss, logits, vms, valid)
            g_loss = g_adv + self.hp.l1_weight * g_recon
            g_l1 = masked_l1(fake.detach().float(), vms, valid)
        step(g_loss, self.g_opt, self.g_scaler)
        # Discriminator: tell the true map from the (detached) generated one.
        self.discriminator.requires_grad_(True)
        with self.precision.autocast():
            d_loss = self.loss.discriminator(self.discriminator, real, hide_invalid(fake.detach(), valid), image).float()
        step(d_loss, self.d_opt, self.d_scaler)
        return {"train_loss": g_l1.detach(), "g_loss": g_loss.detach(), "g_adv_loss": g_adv.detach(),
                "d_loss": d_loss.detach()}

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.generator(image)


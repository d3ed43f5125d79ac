"""PatchGAN discriminator and the GAN losses (report Experiment 2).

The discriminator sees concat(image, map) (6 channels) through widths
(6, c, 2c, 4c, 8c, 16c) and scores 4x4 patches at 64x64. The losses live behind one
small object so the training loop reads the same for every variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import conv_bias, down_block, norm_layer
from models.registry import GAN_LOSSES, NORMS



@dataclass(frozen=True)
class PatchGANConfig:
    width: int = 64
    norm: str = "batch"
    in_channels: int = 6

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {tuple(NORMS)}, got {self.norm!r}")
        if self.width < 1:
            raise ValueError(f"width must be positive, got {self.width}")


class PatchGAN(nn.Module):
    def __init__(self, cfg: PatchGANConfig) -> None:
        super().__init__()
        c = cfg.width
        self.body = nn.Sequential(
            down_block(cfg.in_channels, c, cfg.norm, normalise=False),  # 32x32
            down_block(c, 2 * c, cfg.norm),  # 16x16
            down_block(2 * c, 4 * c, cfg.norm),  # 8x8
            down_block(4 * c, 8 * c, cfg.norm),  # 4x4
            nn.Conv2d(8 * c, 16 * c, 3, 1, 1, bias=conv_bias(cfg.norm)),
            norm_layer(cfg.norm)(16 * c),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(16 * c, 1, 3, 1, 1),  # one score per 16x16 patch
        )

    def forward(self, vms: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([image, vms], dim=1))


def build_patchgan(cfg: PatchGANConfig) -> PatchGAN:
    return PatchGAN(cfg)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017): (||grad critic(x_hat)|| - 1)^2 on random interpolates."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    scores = critic(mixed, image)
    (grads,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return ((grads.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


class GANLoss:
    """Generator and discriminator adversarial losses of one variant (:data:`GAN_LOSSES`, :func:`gan_loss`).

    ``lsgan`` is the report's: G minimises MSE(D(G(I), I), 1); D minimises
    0.5 * (MSE(D(G(I), I), 0) + MSE(D(L, I), 1)). ``vanilla`` is the same with binary
    cross-entropy on logits; ``wgan-gp`` is the Wasserstein critic with gradient penalty.
    """

    def __init__(self, *, gp_weight: float = 10.0) -> None:
        self.gp_weight = gp_weight

    @staticmethod
    def _target(scores: torch.Tensor, real: bool) -> torch.Tensor:
        return torch.ones_like(scores) if real else torch.zeros_like(scores)

    def generator(self, fake_scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def discriminator(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TargetGANLoss(GANLoss):
    """G pushes the scores of its fakes to the 'real' target; D pushes fakes to 0 and real maps to 1,
    each under ``criterion``."""

    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def generator(self, fake_scores: torch.Tensor) -> torch.Tensor:
        return self.criterion(fake_scores, self._target(fake_scores, True))

    def discriminator(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        fake_scores, real_scores = critic(fake, image), critic(real, image)
        return 0.5 * (self.criterion(fake_scores, self._target(fake_scores, False))
                      + self.criterion(real_scores, self._target(real_scores, True)))


class LSGANLoss(TargetGANLoss):
    criterion = staticmethod(F.mse_loss)  # least squares: the report's


class VanillaGANLoss(TargetGANLoss):
    criterion = staticmethod(F.binary_cross_entropy_with_logits)


class WGANGPLoss(GANLoss):
    def generator(self, fake_scores: torch.Tensor) -> torch.Tensor:
        return -fake_scores.mean()

    def discriminator(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        fake_scores, real_scores = critic(fake, image), critic(real, image)
        return fake_scores.mean() - real_scores.mean() + self.gp_weight * gradient_penalty(critic, real, fake, image)


def gan_loss(kind: str, *, gp_weight: float = 10.0) -> GANLoss:
    """The adversarial losses of the variant ``kind`` (models.registry.GAN_LOSSES: the ones a study may name)."""
    return GAN_LOSSES.get(kind)(gp_weight=gp_weight)

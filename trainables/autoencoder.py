"""UNet autoencoder trainable (report Algorithm 1): loss = L1(model(I), L), plus a cross-entropy term by default.

``map_loss`` chooses the loss: ``l1`` (the report's), ``ce`` or ``l1+ce`` (the default); see
``trainables/losses.py`` for why L1 alone leaves the sparse "falsely remembered" channel black.
"""

from __future__ import annotations

import torch

from models.layers import scaled_width
from models.unet import UNetConfig, build_unet
from trainables.config import AutoencoderConfig, RunSettings
from trainables.families import AUTOENCODER
from trainables.family import OneNetworkFamily, step
from trainables.losses import masked_map_loss
from trainables.optimizers import build_optimizer


class AutoencoderFamily(OneNetworkFamily):
    card = AUTOENCODER  # name, aliases, config, noise: trainables/families.py
    net_key = "unet"

    def __init__(self, hp: AutoencoderConfig, settings: RunSettings, device: torch.device) -> None:
        super().__init__(hp, settings, device)
        width = scaled_width(hp.width, settings.width_divisor)
        self.net = build_unet(UNetConfig(width=width, norm=hp.norm, dropout=hp.dropout)).to(device)
        self.opt = build_optimizer(self.net.parameters(), hp)
        self.scaler = self.precision.scaler()
        self.map_loss = hp.map_loss

    # Fused trials (trainables/fused.py): configurations that differ only in what is not listed here (the optimizer's
    # settings, augmentation, the seed) train as one batched network, each with its own optimizer.
    fusion_fields = ("width", "norm", "dropout", "map_loss", "batch_size", "optimizer")

    def member_loss(self, logits: torch.Tensor, vms: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The training loss of the network's logits on a batch: the one function a lone and a fused trial both take."""
        return masked_map_loss(self.map_loss, logits, vms, valid)

    def train_step(self, image: torch.Tensor, vms: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.precision.autocast():
            loss = self.member_loss(self.net.logits(image), vms, valid)
        step(loss, self.opt, self.scaler)
        return {"train_loss": loss.detach()}

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


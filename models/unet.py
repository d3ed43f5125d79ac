"""The pix2pix-style UNet generator (report Experiments 1 and 2).

Encoder widths (3, c, 2c, 4c, 8c, 16c) and decoder widths (16c, 8c, 4c, 2c, c), each
level a 4x4 stride-2 convolution, with skip connections between mirrored levels and a
tanh output of 3 channels in [-1, 1]. At 64x64 the bottleneck is 2x2. :meth:`UNet.logits`
gives the output before the tanh, for losses that must not saturate with it
(``trainables/losses.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.layers import down_block, up_block
from models.registry import NORMS

LEVELS = 5  # 64 -> 2: the report's five encoder widths


@dataclass(frozen=True)
class UNetConfig:
    width: int = 64
    norm: str = "batch"
    dropout: float = 0.0
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {tuple(NORMS)}, got {self.norm!r}")
        if self.width < 1:
            raise ValueError(f"width must be positive, got {self.width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        c = cfg.width
        widths = [c * 2**i for i in range(LEVELS)]  # c, 2c, 4c, 8c, 16c
        self.down = nn.ModuleList()
        cin = cfg.in_channels
        for i, cout in enumerate(widths):
            self.down.append(down_block(cin, cout, cfg.norm, normalise=i > 0))
            cin = cout
        self.up = nn.ModuleList()
        # Decoder: 16c -> 8c -> 4c -> 2c -> c, each output concatenated with its mirror.
        for i in reversed(range(LEVELS - 1)):
            source = widths[i + 1] if i == LEVELS - 2 else widths[i + 1] * 2
            self.up.append(up_block(source, widths[i], cfg.norm, dropout=cfg.dropout if i >= LEVELS - 3 else 0.0))
        self.head = nn.Sequential(nn.ConvTranspose2d(widths[0] * 2, cfg.out_channels, 4, 2, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head[1](self.logits(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The map before the output tanh: ``forward(x) == tanh(logits(x))``."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck is not a skip
        for block in self.up:
            x = torch.cat([block(x), skips.pop()], dim=1)
        return self.head[0](x)


def build_unet(cfg: UNetConfig) -> UNet:
    return UNet(cfg)

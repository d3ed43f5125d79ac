"""Building blocks shared by every model family: the norm choice and the conv blocks.

The norm layer is chosen once by name (pix2pix style) and injected into blocks as a
callable; whether a conv carries a bias follows from the norm in one place.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from models.registry import NORMS

NormFactory = Callable[[int], nn.Module]


def instance_norm(channels: int) -> nn.Module:
    # affine=False, no running stats: what pix2pix uses for instance norm.
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def no_norm(channels: int) -> nn.Module:  # noqa: ARG001 - a norm factory's signature
    return nn.Identity()


def norm_layer(name: str) -> NormFactory:
    """A factory ``channels -> nn.Module`` for the named normalisation (models.registry.NORMS)."""
    return NORMS.get(name)


def conv_bias(norm: str) -> bool:
    """BatchNorm has its own shift, so the conv before it needs no bias; the others do."""
    return norm != "batch"


def scaled_width(width: int, divisor: int) -> int:
    """Channel base after dividing by ``divisor`` (the CPU presets shrink the report's widths)."""
    if width < 1 or divisor < 1:
        raise ValueError(f"width and divisor must be positive, got {width} and {divisor}")
    return max(4, round(width / divisor))


def down_block(cin: int, cout: int, norm: str, *, normalise: bool = True) -> nn.Sequential:
    """4x4 stride-2 conv, norm, LeakyReLU(0.2): halves the resolution."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, 1, bias=conv_bias(norm) or not normalise)]
    if normalise:
        layers.append(norm_layer(norm)(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def up_block(cin: int, cout: int, norm: str, *, dropout: float = 0.0) -> nn.Sequential:
    """4x4 stride-2 transposed conv, norm, optional dropout, ReLU: doubles the resolution."""
    layers: list[nn.Module] = [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=conv_bias(norm)), norm_layer(norm)(cout)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)

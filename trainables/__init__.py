"""Ray Tune trainables, one per model family, and the data they train on."""

from __future__ import annotations

FAMILIES = ("autoencoder", "gan", "diffusion")
ALIASES = {"autoencoder": "autoencoder", "unet": "autoencoder", "gan": "gan", "pix2pix": "gan",
           "diffusion": "diffusion", "palette": "diffusion"}


def family_parts(family: str):
    """(trainable function, Family class, config dataclass) of a family name or alias."""
    name = ALIASES.get(family)
    if name == "autoencoder":
        from trainables.autoencoder import AutoencoderConfig, AutoencoderFamily, train_autoencoder
        return train_autoencoder, AutoencoderFamily, AutoencoderConfig
    if name == "gan":
        from trainables.gan import GANConfig, GANFamily, train_gan
        return train_gan, GANFamily, GANConfig
    if name == "diffusion":
        from trainables.diffusion import DiffusionConfig, DiffusionFamily, train_diffusion
        return train_diffusion, DiffusionFamily, DiffusionConfig
    raise ValueError(f"unknown model {family!r}; choose one of {', '.join(sorted(ALIASES))}")

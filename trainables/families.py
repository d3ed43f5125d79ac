"""The model families, by name: the one registry, imported by the driver and by Ray's workers alike.

To add a family: write its module (a :class:`~trainables.family.Family` subclass with its config
dataclass), add it to the tuple below, and write ``studies/<name>.toml`` (CONTRIBUTING.md).
"""

from __future__ import annotations

from trainables.autoencoder import AutoencoderFamily
from trainables.diffusion import DiffusionFamily
from trainables.family import Family
from trainables.gan import GANFamily

FAMILIES: dict[str, type[Family]] = {}
ALIASES: dict[str, str] = {}  # every name and alias -> the family's name


def register(family: type[Family]) -> type[Family]:
    """Add a family under its name and aliases (a name already taken is refused)."""
    taken = set(ALIASES) & {family.name, *family.aliases}
    if taken and FAMILIES.get(family.name) is not family:
        raise ValueError(f"family names {sorted(taken)} are taken already")
    FAMILIES[family.name] = family
    ALIASES.update({alias: family.name for alias in (family.name, *family.aliases)})
    return family


def unregister(name: str) -> None:
    """Remove a family registered by :func:`register` (tests register tiny ones)."""
    family = FAMILIES.pop(name)
    for alias in (family.name, *family.aliases):
        ALIASES.pop(alias, None)


def find_family(name: str) -> type[Family]:
    """The family of a name or alias (``unet``, ``pix2pix``, ``palette``)."""
    if name not in ALIASES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(ALIASES))}")
    return FAMILIES[ALIASES[name]]


for _family in (AutoencoderFamily, GANFamily, DiffusionFamily):
    register(_family)

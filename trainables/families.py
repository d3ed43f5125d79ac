"""The model families, by name (``--model``): one registry of cards, read by the driver and by Ray's workers alike.

A :class:`FamilyCard` is what the search knows of a family before any network is built: its name and aliases, its
hyperparameters (a config dataclass of :mod:`trainables.config`), the hyperparameters that set its widths, its
measured seed-to-seed noise, the losses it reports every epoch (the columns of ``epochs.parquet`` it adds), its
benchmark variants, and where its :class:`~trainables.family.Family` class is (imported only when a trial trains).
Nothing here imports torch, so ``--help`` and a refused option or study file answer at once.

To add a family: write its module (a ``Family`` subclass with ``card = <its card>``) and its config dataclass, and
register its card here (or call :func:`register` from anywhere, with a card or a ``Family`` class); then write
``studies/<name>.toml`` (CONTRIBUTING.md).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

from models.registry import Registry
from trainables.config import OPTIMIZER_SETTINGS, AutoencoderConfig, DiffusionConfig, GANConfig


@dataclass(frozen=True)
class FamilyCard:
    """A model family as the search sees it (see the module's docstring)."""

    name: str
    aliases: tuple[str, ...]
    config_cls: type  # a frozen dataclass of trainables.config.AugmentConfig: every hyperparameter, with a default
    implementation: Any  # "module:attr" of its Family class, or the class itself
    # Seed-to-seed noise of one run's best val L1, as a fraction of it (sd / mean over seeds at the cpu preset,
    # python -m benchmarks.seeds); greedy adopts a value only when it beats the held one by sqrt(2) x this.
    noise: float = 0.0
    width_params: tuple[str, ...] = ("width",)  # hyperparameters that set the networks' widths
    metrics: tuple[str, ...] = ("train_loss",)  # what its train_step reports every epoch (epochs.parquet columns)
    metric_meanings: dict[str, str] = field(default_factory=dict)  # what each of its own metrics is (docs/results.md)
    # Named changes to its study defaults that the benchmarks train (benchmarks/seeds.py and learning.py).
    variants: dict[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)
    # What may change while a model trains (population-based training, Family.retune): the loss weights it names,
    # and the optimizers' settings under each prefix (the GAN's g_ and d_).
    loss_weights: tuple[str, ...] = ()
    retune_prefixes: tuple[str, ...] = ("",)

    def retunable_names(self) -> list[str]:
        return [*self.loss_weights, *(f"{p}{s}" for p in self.retune_prefixes for s in OPTIMIZER_SETTINGS)]

    def retunable(self, name: str) -> bool:
        """Whether ``name`` can change while a model trains: a loss weight or an optimizer setting."""
        return name in self.retunable_names()

    def noise_margin(self) -> float:
        """sqrt(2) x :attr:`noise`: the spread of the difference between two single runs of one configuration,
        what one run must beat another (or a baseline) by to count as evidence."""
        return math.sqrt(2.0) * self.noise

    def load(self) -> Any:
        """The family's class (imported on first use: torch and its networks come with it)."""
        return FAMILIES.get(self.name)


def carry(family_cls: type, card: FamilyCard) -> None:
    """Give a Family class its card's facts as class attributes (what the loop and the search read off the class)."""
    family_cls.card = card
    family_cls.name, family_cls.aliases, family_cls.config_cls = card.name, card.aliases, card.config_cls
    family_cls.noise, family_cls.width_params, family_cls.metrics = card.noise, card.width_params, card.metrics
    family_cls.loss_weights, family_cls.retune_prefixes = card.loss_weights, card.retune_prefixes


FAMILIES = Registry("model")  # name -> the family's class, imported on first use
CARDS: dict[str, FamilyCard] = {}


def register(family: Any) -> FamilyCard:
    """Add a family (its card, or a ``Family`` class that carries its facts itself) under its name and aliases;
    a name already taken is refused."""
    if not isinstance(family, FamilyCard):
        family = FamilyCard(family.name, tuple(family.aliases), family.config_cls, family, noise=family.noise,
                            width_params=tuple(family.width_params), metrics=tuple(family.metrics),
                            loss_weights=tuple(family.loss_weights), retune_prefixes=tuple(family.retune_prefixes))
    if isinstance(family.implementation, type) and family.implementation.__dict__.get("card") is None:
        carry(family.implementation, family)  # a class registered with a card made for it (a test's, a user's)
        _ship_by_value(family.implementation)
    FAMILIES.add(family.name, family.implementation, aliases=family.aliases)
    CARDS[family.name] = family
    return family


_BY_VALUE: set[str] = set()  # modules whose classes Ray's pickler sends by value (_ship_by_value)


def _ship_by_value(family_cls: type) -> None:
    """The facts :func:`carry` gave a class at run time live in this process only: a Ray worker that imported the
    class's module by name got the class without them (every trial errored on its missing ``config_cls``). Ray's
    pickler sends that module's classes by value instead, their attributes with them (``__main__``'s always go so)."""
    module = family_cls.__module__
    if module == "__main__" or module not in sys.modules or module in _BY_VALUE:
        return
    from ray import cloudpickle  # the pickler Ray sends trials with; imported only for a family registered at run time

    cloudpickle.register_pickle_by_value(sys.modules[module])
    _BY_VALUE.add(module)


def unregister(name: str) -> None:
    """Remove a family added by :func:`register` (tests register tiny ones)."""
    implementation = CARDS.pop(name).implementation
    FAMILIES.remove(name)
    module = implementation.__module__ if isinstance(implementation, type) else None
    if module in _BY_VALUE and not any(isinstance(card.implementation, type) and card.implementation.__module__ == module
                                       for card in CARDS.values()):
        from ray import cloudpickle

        cloudpickle.unregister_pickle_by_value(sys.modules[module])
        _BY_VALUE.discard(module)


def family_card(name: str) -> FamilyCard:
    """The card of a family name or alias (``unet``, ``pix2pix``, ``palette``); nothing is imported."""
    return CARDS[FAMILIES.canonical(name)]


def find_family(name: str) -> Any:
    """The family class of a name or alias, imported on first use."""
    return FAMILIES.get(name)


def epoch_metrics() -> list[str]:
    """Every registered family's per-epoch losses, in registration order, each once."""
    return list(dict.fromkeys(metric for card in CARDS.values() for metric in card.metrics))


# The families of the report. Each noise is the largest row of benchmarks/results/seeds.json among what greedy
# holds once its first block is decided (benchmarks/README.md, section 9).
AUTOENCODER = register(FamilyCard(
    "autoencoder", ("unet",), AutoencoderConfig, "trainables.autoencoder:AutoencoderFamily", noise=0.040,
    variants={"seeds": ({}, {"p_translation": 0.0}), "learning": ({},)}))
GAN = register(FamilyCard(
    "gan", ("pix2pix",), GANConfig, "trainables.gan:GANFamily", noise=0.047, width_params=("g_width", "d_width"),
    metrics=("train_loss", "g_loss", "g_adv_loss", "d_loss"),
    metric_meanings={"g_loss": "gan: the generator's whole loss (adversarial + L1 weight x map loss)",
                     "g_adv_loss": "gan: the generator's adversarial term", "d_loss": "gan: the discriminator's loss"},
    loss_weights=("l1_weight",), retune_prefixes=("g_", "d_"),
    # seeds: every L1 weight greedy's block 0 visits (1 is the study default), then what it holds after block 0.
    variants={"seeds": ({}, {"l1_weight": 10.0}, {"l1_weight": 100.0}, {"l1_weight": 100.0, "p_translation": 0.0}),
              "learning": ({}, {"l1_weight": 100.0})}))
DIFFUSION = register(FamilyCard(
    "diffusion", ("palette",), DiffusionConfig, "trainables.diffusion:DiffusionFamily", noise=0.035,
    metrics=("train_loss", "noise_loss"),
    metric_meanings={"noise_loss": "diffusion: the denoising loss on its target (eps, x0 or v)"},
    variants={"seeds": ({"p_translation": 0.0},), "learning": ({}, {"denoise_loss": "mse"})}))

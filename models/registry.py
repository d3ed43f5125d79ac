"""One small registry type for every kind of plug-in: names (and aliases) to objects imported only when asked for.

A plug-in is one object (a strategy, a model family, a loss, an optimizer, a noise schedule, ...), found by name in
the one registry of its kind, as Ray Tune's ``create_searcher`` finds a searcher: the registry maps a name to
``"module:attr"`` and imports it on first use, so listing the choices (``--help``) or refusing a name imports nothing
heavy. An object can also be registered as it is (a test's toy plug-in). An unknown name gets one message that lists
the choices. This module sits at the lowest floor (models) so that every floor can keep its plug-ins in one.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterator


TRIAL_REGISTRIES: list["Registry"] = []  # the registries trials read where they train, in the order made


class UnknownName(ValueError):
    """A name no plug-in of the registry's kind has; the message lists the choices."""


class Registry:
    """Plug-ins of one kind by name: ``add`` them (an object, or ``"module:attr"`` imported on first use), ``get`` one."""

    def __init__(self, kind: str, entries: dict[str, Any] | None = None, *, in_trials: bool = False) -> None:
        """``in_trials``: trials read it where they train (a Ray worker), so what a driver adds reaches them there
        (:func:`registrations`)."""
        self.kind = kind  # in messages: "unknown {kind} 'x'; choose one of ..."
        self._targets: dict[str, Any] = {}
        self._loaded: dict[str, Any] = {}
        self._aliases: dict[str, str] = {}  # every name and alias -> the name
        for name, target in (entries or {}).items():
            self.add(name, target)
        if in_trials:
            TRIAL_REGISTRIES.append(self)

    def add(self, name: str, target: Any, *, aliases: tuple[str, ...] = (), replace: bool = False) -> None:
        """Register ``target`` (an object, or ``"module:attr"``) under ``name`` and its ``aliases``."""
        taken = sorted({name, *aliases} & set(self._aliases))
        if taken and not replace:
            raise ValueError(f"{self.kind} names {taken} are taken already")
        self._targets[name] = target
        self._loaded.pop(name, None)
        self._aliases.update({alias: name for alias in (name, *aliases)})

    def remove(self, name: str) -> None:
        """Take a plug-in out again (a test's toy one)."""
        self._targets.pop(name)
        self._loaded.pop(name, None)
        self._aliases = {alias: to for alias, to in self._aliases.items() if to != name}

    def names(self) -> list[str]:
        return list(self._targets)

    def aliases(self, name: str) -> list[str]:
        return [alias for alias, to in self._aliases.items() if to == name and alias != name]

    def __contains__(self, name: object) -> bool:
        return name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)

    def choices(self) -> str:
        """The names, each with its aliases, for messages and --help: ``autoencoder (unet), gan (pix2pix)``."""
        return ", ".join(name + (f" ({', '.join(self.aliases(name))})" if self.aliases(name) else "")
                         for name in self._targets)

    def canonical(self, name: str, *, what: str | None = None) -> str:
        """The name an alias stands for; :class:`UnknownName` for a name no plug-in has."""
        if name not in self._aliases:
            raise UnknownName(f"unknown {what or self.kind} {name!r}; choose one of {self.choices()}.")
        return self._aliases[name]

    def get(self, name: str, *, what: str | None = None) -> Any:
        """The plug-in of ``name`` (or alias), imported on first use."""
        name = self.canonical(name, what=what)
        if name not in self._loaded:
            target = self._targets[name]
            if isinstance(target, str):
                module, _, attr = target.partition(":")
                target = getattr(importlib.import_module(module), attr)
            self._loaded[name] = target
        return self._loaded[name]

    __getitem__ = get

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every (name, plug-in), each imported: for code that needs them all (a benchmark, a test)."""
        for name in self._targets:
            yield name, self.get(name)


def registrations() -> dict[str, dict[str, tuple[Any, tuple[str, ...]]]]:
    """What this process has registered in the registries trials read (kind -> name -> (target, aliases)): sent
    with a search's trials, so that a plug-in a driver's script added (``MAP_LOSSES.add`` from anywhere) is there in
    the Ray workers that train them, which import only the project's own registrations."""
    return {r.kind: {name: (r._targets[name], tuple(r.aliases(name))) for name in r} for r in TRIAL_REGISTRIES}


def register_missing(sent: dict[str, dict[str, tuple[Any, tuple[str, ...]]]]) -> None:
    """In a worker: add what :func:`registrations` sent and this process lacks (a registry not imported here yet is
    skipped: nothing of it runs here before it is)."""
    by_kind = {r.kind: r for r in TRIAL_REGISTRIES}
    for kind, entries in sent.items():
        registry = by_kind.get(kind)
        for name, (target, aliases) in entries.items() if registry is not None else ():
            if name not in registry:
                registry.add(name, target, aliases=tuple(a for a in aliases if a not in registry))


# The models' plug-ins, by the name a study file gives (each imported only when a network is built):
NORMS = Registry("norm", {"batch": "torch.nn:BatchNorm2d", "instance": "models.layers:instance_norm",
                          "none": "models.layers:no_norm"}, in_trials=True)  # name -> factory channels -> nn.Module
GAN_LOSSES = Registry("GAN loss", {"lsgan": "models.patchgan:LSGANLoss", "wgan-gp": "models.patchgan:WGANGPLoss",
                                   "vanilla": "models.patchgan:VanillaGANLoss"}, in_trials=True)  # -> patchgan.GANLoss
SCHEDULES = Registry("noise schedule", {"linear": "models.diffusion:linear_betas", "cosine": "models.diffusion:cosine_betas",
                                        "sigmoid": "models.diffusion:sigmoid_betas"}, in_trials=True)  # -> betas
SAMPLERS = Registry("sampler", {"ddim": "models.diffusion:DDIMSampler", "ancestral": "models.diffusion:AncestralSampler"},
                    in_trials=True)
PREDICTIONS = ("eps", "x0", "v")  # what a denoiser predicts (models.diffusion.NoiseSchedule.target)

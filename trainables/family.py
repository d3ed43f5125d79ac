"""What a model family is to the shared training loop: how to take one step and how to predict maps.

:class:`Family` is the interface every family implements (trainables/autoencoder.py, gan.py,
diffusion.py); :func:`step` is the backward-and-update they share. The loop that runs the
epochs is :mod:`trainables.loop`.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from trainables.config import OPTIMIZER_SETTINGS, RunSettings
from trainables.families import carry
from trainables.device import FastPath, Precision


def step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward and update through the (possibly disabled) loss scaler."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


class Family(ABC):
    """One model family inside the shared loop.

    The loop calls, in order: ``__init__`` (build nets and optimizers on ``device``),
    ``load_state_dict`` when resuming, then each epoch ``train_step`` per batch (in train
    mode), ``calibration_forward`` on a fixed set of augmented training batches (BatchNorm
    statistics are re-estimated from them, see :func:`recalibrate_batchnorm`), ``predict`` per validation
    batch (in eval mode), and ``state_dict`` to checkpoint. ``final_predict`` is used once
    after the last epoch.

    What the search needs of a family is said here too, so a family is one class: its ``name``
    and ``aliases`` (``--model``), its config dataclass, its measured seed-to-seed noise (greedy's
    default margin) and the hyperparameters that set its network widths (its widest configuration:
    what the estimate and GPU packing measure). Families are listed in :mod:`trainables.families`.
    """

    # Its card (trainables/families.py: name, aliases, config, noise, widths, metrics) sets the class attributes below;
    # a family registered without a card (a test's) sets them itself.
    card: ClassVar[Any] = None
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    config_cls: ClassVar[type]  # a frozen dataclass of AugmentConfig: every hyperparameter and fixed setting
    noise: ClassVar[float] = 0.0  # seed-to-seed noise of one run's best val L1, as a fraction of it
    width_params: ClassVar[tuple[str, ...]] = ("width",)  # hyperparameters that set the networks' widths
    metrics: ClassVar[tuple[str, ...]] = ("train_loss",)  # what train_step reports (epochs.parquet columns)
    # --channels-last auto on the CPU: on where benchmarks/levers.py measured it faster for this family (paired).
    cpu_channels_last: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        card = cls.__dict__.get("card")
        if card is not None:
            carry(cls, card)

    @classmethod
    def noise_margin(cls) -> float:
        """sqrt(2) x :attr:`noise`: the spread of the difference between two single runs of one configuration,
        what one run must beat another (or a baseline) by to count as evidence."""
        return math.sqrt(2.0) * cls.noise

    def __init__(self, hp: Any, settings: RunSettings, device: torch.device) -> None:
        self.hp, self.settings, self.device = hp, settings, device
        self.precision = Precision(device, settings.precision)
        self.fast = FastPath.resolve(device, settings.channels_last, settings.compile, self.cpu_channels_last)

    @classmethod
    def build(cls, hp: Any, settings: RunSettings, device: torch.device) -> "Family":
        """The family with its networks in the device's fast path (memory format, compilation)."""
        family = cls(hp, settings, device)
        for module in family.modules.values():
            family.fast.prepare(module)
        return family

    @property
    @abstractmethod
    def modules(self) -> dict[str, nn.Module]: ...

    @property
    def prediction_modules(self) -> dict[str, nn.Module]:
        """The networks ``predict`` runs (the GAN's discriminator is not one of them)."""
        return self.modules

    @abstractmethod
    def train_step(self, image: torch.Tensor, vms: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on an augmented batch; returns detached scalar losses (``train_loss`` at least).

        ``valid`` (N, 1, H, W) is 0 where augmentation hid the image: the map there is unknown
        and must not enter any loss.
        """

    def calibration_forward(self, image: torch.Tensor, vms: torch.Tensor) -> None:
        """Run the prediction networks as training does on one batch (for BatchNorm statistics); no global RNG."""
        self.predict(image)

    @abstractmethod
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Maps in [-1, 1] for a batch of images."""

    has_final_mode = False  # True when final_predict differs from predict (diffusion's final sampler)

    def final_predict(self, image: torch.Tensor) -> torch.Tensor:
        """Maps from the family's final evaluation mode (only called when ``has_final_mode``)."""
        return self.predict(image)

    def map_photos(self, image: torch.Tensor) -> torch.Tensor:
        """The maps ``search.predict`` writes for a batch of photos: the final evaluation mode, each photo's map the
        one it would get alone (a family that samples noise overrides this so that its map does not depend on the
        other photos of the batch or its place there)."""
        return self.final_predict(image) if self.has_final_mode else self.predict(image)

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def scalers(self) -> dict[str, torch.amp.GradScaler]:
        """The fp16 loss scalers (disabled on CPU and with bf16); their state is checkpointed."""
        return {}

    def state_dict(self, nets_only: bool = False) -> dict[str, Any]:
        """Networks, optimizers and loss scalers (``nets_only``: the networks, all a prediction needs)."""
        state = {f"net.{k}": m.state_dict() for k, m in self.modules.items()}
        if nets_only:
            return state
        state.update({f"opt.{k}": o.state_dict() for k, o in self.optimizers().items()})
        state.update({f"scaler.{k}": s.state_dict() for k, s in self.scalers().items()})
        return state

    def load_state_dict(self, state: dict[str, Any], nets_only: bool = False) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state[f"net.{name}"])
        if nets_only:
            return
        cuda = self.device.type == "cuda"
        for name, optimizer in self.optimizers().items():
            optimizer.load_state_dict(state[f"opt.{name}"])
            # Saved on another device (a CPU trial resumed on a GPU, or back): the step count lives on the
            # device exactly when the optimizer is capturable, as CUDA graphs need (trainables/config.py).
            for group in optimizer.param_groups:
                if "capturable" in group:
                    group["capturable"] = cuda
            for param_state in optimizer.state.values():
                if isinstance(param_state.get("step"), torch.Tensor):
                    param_state["step"] = param_state["step"].to(self.device if cuda else "cpu")
        for name, scaler in self.scalers().items():  # a resumed fp16 trial continues with the same loss scale
            if f"scaler.{name}" in state:
                scaler.load_state_dict(state[f"scaler.{name}"])

    # Hyperparameters that may change while a model trains (population-based training, search/strategies/population.py):
    # the optimizers' settings, by prefix (optimizer_prefixes), and the loss weights a family names here.
    OPTIMIZER_SETTINGS: ClassVar[tuple[str, ...]] = OPTIMIZER_SETTINGS
    loss_weights: ClassVar[tuple[str, ...]] = ()
    retune_prefixes: ClassVar[tuple[str, ...]] = ("",)  # the prefixes optimizer_prefixes returns

    def optimizer_prefixes(self) -> dict[str, torch.optim.Optimizer]:
        """Config prefix -> the optimizer its settings configure (``"g_"`` -> the generator's); ``""`` for one optimizer."""
        optimizers = list(self.optimizers().values())
        return {"": optimizers[0]} if len(optimizers) == 1 else {}

    @classmethod
    def retunable(cls, name: str) -> bool:
        """Whether ``name`` can change while a model trains (:meth:`retune`): a loss weight or an optimizer setting."""
        if name in cls.loss_weights:
            return True
        return name in cls.retunable_names()

    def retune(self, changes: dict[str, Any]) -> None:
        """Change hyperparameters of a model in training: its config, and the optimizers' parameter groups.

        Only what :meth:`retunable` allows (the architecture, the optimizer's kind and the data stay
        fixed): a new learning rate or beta takes effect at the next step, with the optimizer's
        moments kept, as population-based training expects.
        """
        wrong = sorted(name for name in changes if not self.retunable(name))
        if wrong:
            raise ValueError(f"{', '.join(wrong)} cannot change while a {self.name} model trains; "
                             f"what can: {', '.join(self.retunable_names())}")
        self.hp = dataclasses.replace(self.hp, **changes)
        for prefix, optimizer in self.optimizer_prefixes().items():
            for group in optimizer.param_groups:
                for setting in self.OPTIMIZER_SETTINGS:
                    if f"{prefix}{setting}" not in changes:
                        continue
                    value = changes[f"{prefix}{setting}"]
                    if setting in ("beta1", "beta2"):
                        if "betas" in group:
                            betas = list(group["betas"])
                            betas[setting == "beta2"] = value
                            group["betas"] = tuple(betas)
                    elif setting in group:
                        group[setting] = value

    @classmethod
    def retunable_names(cls) -> list[str]:
        return [*cls.loss_weights, *(f"{p}{s}" for p in cls.retune_prefixes for s in cls.OPTIMIZER_SETTINGS)]

    def train(self, mode: bool = True) -> None:
        for module in self.modules.values():
            module.train(mode)


class OneNetworkFamily(Family):
    """A family that trains one network (``net``) with one optimizer (``opt``) and one loss scaler (``scaler``),
    checkpointed under ``net_key`` (``net.<key>``, ``opt.<key>``, ``scaler.<key>``)."""

    net_key: ClassVar[str]
    net: nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {self.net_key: self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {self.net_key: self.opt}

    def scalers(self) -> dict[str, torch.amp.GradScaler]:
        return {self.net_key: self.scaler}

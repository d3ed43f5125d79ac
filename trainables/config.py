"""Typed configs at the edge of Ray Tune's flat config dict.

A trial's config is one flat dict: the family's hyperparameters (searched or fixed) plus
the run settings every family shares. :func:`parse_config` splits it into two frozen
dataclasses and rejects unknown keys and wrong types, so a typo in a study file fails
loudly instead of silently training the default.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, TypeVar

from models.registry import GAN_LOSSES, NORMS, PREDICTIONS, SAMPLERS, SCHEDULES, Registry

# How a trial runs on CUDA (trainables/device.py): choices of the run settings below.
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SWITCHES = ("auto", "on", "off")

# The optimizers a study may name: name -> (parameters, the config's settings, on CUDA) -> optimizer.
OPTIMIZERS = Registry("optimizer", {"sgd": "trainables.optimizers:sgd", "adam": "trainables.optimizers:adam",
                                    "adamw": "trainables.optimizers:adamw", "adadelta": "trainables.optimizers:adadelta"},
                      in_trials=True)
# The map losses a study may name (``map_loss``; diffusion's ``denoise_loss`` on the x0 target):
# name -> (logits, target, valid) -> loss. Adding one: a function in trainables/losses.py and an entry here
# (or ``MAP_LOSSES.add`` from anywhere): every family that takes a map loss takes it.
MAP_LOSSES = Registry("map loss", {"l1": "trainables.losses:map_l1", "ce": "trainables.losses:map_ce",
                                   "l1+ce": "trainables.losses:map_l1_ce"}, in_trials=True)
PLAIN_DENOISE_LOSSES = ("mse", "l1")
OPTIMIZER_SETTINGS = ("lr", "beta1", "beta2", "momentum", "weight_decay")  # what an optimizer's groups may change
DIVERGED_L1 = 2.0  # the worst possible L1 between maps in [-1, 1]: how searchers score a diverged trial  # diffusion's losses on any target: MSE (the report's) and L1


def denoise_losses() -> list[str]:
    """What diffusion's ``denoise_loss`` may be: the plain losses on any target, and every map loss (on the x0
    target, reading the network's output as the map's logits)."""
    return [*PLAIN_DENOISE_LOSSES, *(name for name in MAP_LOSSES if name not in PLAIN_DENOISE_LOSSES)]


def choice(default: str, allowed: Registry | tuple[str, ...] | Callable[[], list[str]]) -> Any:
    """A hyperparameter that names a plug-in: its value must be one of ``allowed`` (checked when a config is made,
    so a misspelled value in a study file is refused before anything runs)."""
    return field(default=default, metadata={"choices": allowed})


def check_choices(config: Any) -> None:
    """Every :func:`choice` field of a config holds one of its names; else a ValueError naming them."""
    for item in fields(config):
        check_choice(type(config), item.name, getattr(config, item.name))


def check_choice(config_cls: type, name: str, value: Any) -> None:
    """``value`` is one of the names the field ``name`` of ``config_cls`` allows (if it is a :func:`choice`)."""
    allowed = next((f.metadata.get("choices") for f in fields(config_cls) if f.name == name), None)
    if allowed is None:
        return
    names = allowed() if callable(allowed) and not isinstance(allowed, Registry) else allowed
    if value not in names:
        listing = names.choices() if isinstance(names, Registry) else ", ".join(names)
        raise ValueError(f"{name} {value!r} is not one of {listing}")


@dataclass(frozen=True)
class RunSettings:
    """What the driver fixes for every trial of a study (not searched)."""

    epochs: int = 100
    seed: int = 0
    width_divisor: int = 1  # the report's widths are divided by this (CPU presets shrink models)
    checkpoint_root: str = ""  # folder holding one sub-folder per trial key; "" = no checkpoints
    threads: int = 0  # torch intra-op threads on CPU (0: leave torch's default)
    train_eval_size: int = 320  # training images (fixed subset) on which train_l1 is measured
    eval_every: int = 1  # epochs between validation passes (diffusion sampling is the costly one)
    evaluate_test: bool = False  # final re-training only: measure the best-val epoch's model on the test split, once
    # How a trial runs on CUDA (trainables/device.py); speed and rounding only, not in the trial key.
    precision: str = "auto"  # auto (bf16, fp16 where bf16 is missing) | bf16 | fp16 | fp32; the CPU is always fp32
    channels_last: str = "auto"  # auto | on | off
    compile: str = "auto"  # torch.compile the networks: auto | on | off
    cuda_graphs: str = "auto"  # replay each training step as one CUDA graph: auto | on | off
    # Population-based training (trainables/population.py, search/strategies/population.py).
    member: int = -1  # the population member this trial is (-1: not one)
    snapshots: int = 2  # a member keeps its newest this many epoch snapshots (donors' weights are read from them)
    replay: str = ""  # JSON [[epoch, {hyperparameter: value}], ...]: changes applied before those epochs (a replay)

    def __post_init__(self) -> None:
        for name in ("epochs", "width_divisor", "train_eval_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in DEVICE_SWITCHES:
            if getattr(self, name) not in SWITCHES:
                raise ValueError(f"{name} must be one of {', '.join(SWITCHES)}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings, shared by every family's config: study data like any hyperparameter
    (DiffAugment, trainables/augment.py). The defaults are the report's: translation and cutout, each with
    probability 0.9."""

    augment: bool = True  # False turns both operations off
    p_translation: float = 0.9
    p_cutout: float = 0.9
    translation_ratio: float = 0.125  # largest shift, as a fraction of the image size
    cutout_ratio: float = 0.5  # side of the cut-out box, as a fraction of the image size

    def __post_init__(self) -> None:
        for name in ("p_translation", "p_cutout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.translation_ratio < 0.5:
            raise ValueError(f"translation_ratio must be in [0, 0.5), got {self.translation_ratio}")
        if not 0.0 < self.cutout_ratio < 1.0:
            raise ValueError(f"cutout_ratio must be in (0, 1), got {self.cutout_ratio}")
        check_choices(self)
        check_numbers(self)


# What a family's numeric hyperparameter may be, by how its name ends (g_lr, d_width, beta1): (low, high, whether
# each end is allowed). A value outside is refused as the config is made: by a study file's check, before Ray starts.
NUMBER_RULES = (("width", 1, None, True), ("batch_size", 1, None, True), ("lr", 0.0, None, False),
                ("dropout", 0.0, 1.0, "low"), ("momentum", 0.0, 1.0, "low"), ("beta1", 0.0, 1.0, "low"),
                ("beta2", 0.0, 1.0, "low"), ("weight_decay", 0.0, None, True), ("l1_weight", 0.0, None, True))


def check_numbers(config: Any) -> None:
    """Refuse a numeric hyperparameter outside what its optimizer or network can take (:data:`NUMBER_RULES`)."""
    for field_ in fields(config):
        value = getattr(config, field_.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        for suffix, low, high, closed in NUMBER_RULES:
            if field_.name == suffix or field_.name.endswith("_" + suffix):
                low_ok = value >= low if closed in (True, "low") else value > low
                high_ok = high is None or (value <= high if closed is True else value < high)
                if not (low_ok and high_ok):
                    bounds = ("[" if closed in (True, "low") else "(") + f"{low:g}, " + (
                        "inf)" if high is None else f"{high:g}" + ("]" if closed is True else ")"))
                    raise ValueError(f"{field_.name} must be in {bounds}, got {value}")


# Each family's hyperparameters (its study file's names), beside the run settings: plain data, so a study file is
# checked (names, types, the plug-ins its values name) without importing torch. The families are in
# trainables/autoencoder.py, gan.py and diffusion.py.

@dataclass(frozen=True)
class AutoencoderConfig(AugmentConfig):
    norm: str = choice("batch", NORMS)
    width: int = 64
    dropout: float = 0.0
    optimizer: str = choice("adam", OPTIMIZERS)
    lr: float = 1e-3
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    batch_size: int = 16
    map_loss: str = choice("l1+ce", MAP_LOSSES)  # "l1" (the report's), "ce", "l1+ce": see trainables/losses.py


@dataclass(frozen=True)
class GANConfig(AugmentConfig):
    g_norm: str = choice("batch", NORMS)
    g_width: int = 64
    g_dropout: float = 0.0
    g_optimizer: str = choice("adam", OPTIMIZERS)
    g_lr: float = 1e-3
    g_momentum: float = 0.0
    g_beta1: float = 0.9
    g_beta2: float = 0.999
    g_weight_decay: float = 0.0
    d_norm: str = choice("batch", NORMS)
    d_width: int = 64
    d_optimizer: str = choice("adam", OPTIMIZERS)
    d_lr: float = 1e-3
    d_momentum: float = 0.0
    d_beta1: float = 0.9
    d_beta2: float = 0.999
    d_weight_decay: float = 0.0
    batch_size: int = 16
    l1_weight: float = 1.0
    gan_loss: str = choice("lsgan", GAN_LOSSES)
    map_loss: str = choice("l1+ce", MAP_LOSSES)  # the reconstruction term: "l1" (the report's), "ce", "l1+ce"


@dataclass(frozen=True)
class DiffusionConfig(AugmentConfig):
    norm: str = choice("batch", NORMS)
    width: int = 64
    optimizer: str = choice("adam", OPTIMIZERS)
    lr: float = 1e-3
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    batch_size: int = 16
    schedule: str = choice("linear", SCHEDULES)
    beta_start: float = 1e-6
    beta_end: float = 0.01
    steps: int = 2000
    zero_terminal_snr: bool = True  # rescale the betas so the last step is pure noise (Lin et al. 2024)
    prediction: str = choice("x0", PREDICTIONS)  # x0 suits few-step DDIM; the report used eps
    sampler: str = choice("ddim", SAMPLERS)  # used for validation during the search
    sampling_steps: int = 10
    final_sampler: str = choice("ddim", SAMPLERS)  # used once after the last epoch
    final_sampling_steps: int = 50
    # "mse" (the report's), "l1"; with the x0 target also every map loss ("ce", "l1+ce"; trainables/diffusion.py)
    denoise_loss: str = choice("mse", denoise_losses)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.denoise_loss not in PLAIN_DENOISE_LOSSES and self.prediction != "x0":
            raise ValueError(f"denoise_loss {self.denoise_loss!r} reads the network's output as the map's logits, "
                             f"so it needs prediction = 'x0', not {self.prediction!r}")
        if self.sampling_steps < 1 or self.final_sampling_steps < 1:
            raise ValueError("sampling_steps and final_sampling_steps must be at least 1")


T = TypeVar("T")
KINDS = {"int": int, "float": float, "str": str, "bool": bool}  # a hyperparameter's kind -> its Python type


def coerce(kind: str, value: Any) -> Any:
    """``value`` as a hyperparameter of ``kind`` (int, float, str or bool): an int where a float is wanted becomes
    one, a whole float where an int is wanted becomes one; anything else of the wrong type (a bool for a number
    included) raises ``TypeError`` naming what it got. The one coercion of a searched value, from a study file
    (search.space) to a trial's config (here)."""
    expected = KINDS[kind]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) and expected is not bool:
        raise TypeError(f"must be {kind}, got the boolean {value!r}")
    if not isinstance(value, expected):
        raise TypeError(f"must be {kind}, got {type(value).__name__} {value!r}")
    return value


def _coerce(cls: type, name: str, kind: str, value: Any) -> Any:
    try:
        return coerce(kind, value)
    except TypeError as err:
        raise TypeError(f"{cls.__name__}.{name} {err}") from None


def _build(cls: type[T], values: dict[str, Any]) -> T:
    kinds = {f.name: f.type for f in fields(cls)}
    return cls(**{k: _coerce(cls, k, kinds[k], v) for k, v in values.items()})


def parse_config(config: dict[str, Any], family_cls: type[T]) -> tuple[RunSettings, T]:
    """Split a flat trial config into (RunSettings, family config); reject unknown keys and bad types."""
    run_keys = {f.name for f in fields(RunSettings)}
    family_keys = {f.name for f in fields(family_cls)}
    unknown = sorted(set(config) - run_keys - family_keys)
    if unknown:
        raise ValueError(
            f"unknown config keys for {family_cls.__name__}: {', '.join(unknown)}; "
            f"known: {', '.join(sorted(family_keys | run_keys))}"
        )
    settings = _build(RunSettings, {k: v for k, v in config.items() if k in run_keys})
    hp = _build(family_cls, {k: v for k, v in config.items() if k in family_keys})
    return settings, hp


# Settings that do not change what a trial computes: a trial resumed with more epochs,
# another checkpoint folder or another thread count is the same trial.
# How a trial runs on its device (trainables/device.py): rounding and speed only, so neither in the
# trial key nor in a study's identity (search/runner/plan.py).
DEVICE_SWITCHES = ("channels_last", "compile", "cuda_graphs")  # each auto | on | off
DEVICE_SETTINGS = ("precision", *DEVICE_SWITCHES)
_KEY_EXCLUDED = ("epochs", "checkpoint_root", "threads", "evaluate_test", "snapshots", *DEVICE_SETTINGS)
# Run settings a trial's own config may set (the study's settings give the rest): a population member's index.
PER_TRIAL_SETTINGS = ("member", "snapshots", "replay")


def member_folder(member: int) -> str:
    """The checkpoint folder of population member ``member`` (under the study's checkpoint root)."""
    return f"member-{member}"


def checkpoint_folder(trial_id: str, config: dict[str, Any] | None) -> str:
    """Where (under the checkpoint root) the trial ``trial_id`` with this flat config keeps best.pt and
    predictions.npz: a population member in its member's folder (its weights pass between trials), else its key."""
    member = int((config or {}).get("member", -1))
    return member_folder(member) if member >= 0 else trial_id


def trial_key(settings: RunSettings, hp: Any) -> str:
    """A stable 12-hex-digit identity of what a trial trains, used for its checkpoint folder."""
    payload = {k: v for k, v in asdict(settings).items() if k not in _KEY_EXCLUDED}
    for name in PER_TRIAL_SETTINGS:  # at their defaults, keys stay what they were before population-based training
        if name in payload and payload[name] == getattr(RunSettings, name):
            del payload[name]
    payload.update(asdict(hp))
    payload["family"] = type(hp).__name__
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def resolved_config(settings: RunSettings, hp: Any) -> dict[str, Any]:
    """The whole config with every default filled in: saved with every checkpoint."""
    return {**asdict(settings), **asdict(hp)}

"""Typed configs at the edge of Ray Tune's flat config dict.

A trial's config is one flat dict: the family's hyperparameters (searched or fixed) plus
the run settings every family shares. :func:`parse_config` splits it into two frozen
dataclasses and rejects unknown keys and wrong types, so a typo in a study file fails
loudly instead of silently training the default.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, TypeVar

import torch



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
        from trainables.device import PRECISIONS, SWITCHES

        for name in ("epochs", "width_divisor", "train_eval_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in DEVICE_SWITCHES:
            if getattr(self, name) not in SWITCHES:
                raise ValueError(f"{name} must be one of {', '.join(SWITCHES)}, got {getattr(self, name)!r}")


Option = Callable[[str], Any]  # an optimizer setting of the family config by its plain name ("lr" -> hp.g_lr)


def _sgd(params: list, option: Option, cuda: bool) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=option("lr"), momentum=option("momentum"), weight_decay=option("weight_decay"))


def _fast(cuda: bool) -> dict[str, bool]:
    # On CUDA: fused, and capturable (its step count on the device), so a training step can be a CUDA graph.
    return {"fused": True, "capturable": True} if cuda else {}


def _adam(params: list, option: Option, cuda: bool) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=option("lr"), betas=(option("beta1"), option("beta2")),
                            weight_decay=option("weight_decay"), **_fast(cuda))


def _adamw(params: list, option: Option, cuda: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=option("lr"), betas=(option("beta1"), option("beta2")),
                             weight_decay=option("weight_decay"), **_fast(cuda))


def _adadelta(params: list, option: Option, cuda: bool) -> torch.optim.Optimizer:
    return torch.optim.Adadelta(params, lr=option("lr"), weight_decay=option("weight_decay"), capturable=cuda)


# The optimizers a study may name: name -> (parameters, the config's settings, on CUDA) -> optimizer.
OPTIMIZERS: dict[str, Callable[[list, Option, bool], torch.optim.Optimizer]] = {
    "sgd": _sgd, "adam": _adam, "adamw": _adamw, "adadelta": _adadelta}


def build_optimizer(params, hp: Any, prefix: str = "") -> torch.optim.Optimizer:
    """The optimizer a family config names in ``{prefix}optimizer``, with its ``{prefix}lr``, ``momentum``,
    ``beta1``, ``beta2`` and ``weight_decay``: SGD (momentum), Adam/AdamW (betas), Adadelta, the report's
    optimizers plus AdamW.

    On CUDA, Adam and AdamW use PyTorch's fused kernels (one launch per step instead of a
    few per parameter group; the same update up to rounding), and every optimizer keeps its
    step count on the device (``capturable``) so the loop can replay a step as a CUDA graph.
    """
    params = list(params)

    def option(name: str) -> Any:
        return getattr(hp, f"{prefix}{name}")

    if option("lr") <= 0:
        raise ValueError(f"learning rate must be positive, got {option('lr')}")
    if option("optimizer") not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {option('optimizer')!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[option("optimizer")](params, option, bool(params) and all(p.is_cuda for p in params))


T = TypeVar("T")
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _coerce(cls: type, name: str, kind: str, value: Any) -> Any:
    expected = _TYPES[kind]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) and expected is not bool:
        raise TypeError(f"{cls.__name__}.{name} must be {kind}, got the boolean {value!r}")
    if not isinstance(value, expected):
        raise TypeError(f"{cls.__name__}.{name} must be {kind}, got {type(value).__name__} {value!r}")
    return value


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

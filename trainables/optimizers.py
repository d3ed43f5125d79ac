"""The optimizers a study may name (``optimizer``, the GAN's ``g_optimizer`` and ``d_optimizer``), found by name in
:data:`trainables.config.OPTIMIZERS`: the report's SGD, Adam and Adadelta, plus AdamW.

Each is a function ``(parameters, option, cuda) -> optimizer``, where ``option("lr")`` reads the config's setting by
its plain name (``g_lr`` for the GAN's generator). On CUDA, Adam and AdamW use PyTorch's fused kernels (one launch
per step instead of a few per parameter group; the same update up to rounding), and every optimizer keeps its step
count on the device (``capturable``) so the loop can replay a step as a CUDA graph.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from trainables.config import OPTIMIZERS

Option = Callable[[str], Any]  # an optimizer setting of the family config by its plain name ("lr" -> hp.g_lr)


def sgd(params: list, option: Option, cuda: bool) -> torch.optim.Optimizer:  # noqa: ARG001 - one signature for all
    return torch.optim.SGD(params, lr=option("lr"), momentum=option("momentum"), weight_decay=option("weight_decay"))


def _fast(cuda: bool) -> dict[str, bool]:
    # On CUDA: fused, and capturable (its step count on the device), so a training step can be a CUDA graph.
    return {"fused": True, "capturable": True} if cuda else {}


def adam(params: list, option: Option, cuda: bool) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=option("lr"), betas=(option("beta1"), option("beta2")),
                            weight_decay=option("weight_decay"), **_fast(cuda))


def adamw(params: list, option: Option, cuda: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=option("lr"), betas=(option("beta1"), option("beta2")),
                             weight_decay=option("weight_decay"), **_fast(cuda))


def adadelta(params: list, option: Option, cuda: bool) -> torch.optim.Optimizer:
    return torch.optim.Adadelta(params, lr=option("lr"), weight_decay=option("weight_decay"), capturable=cuda)


def build_optimizer(params, hp: Any, prefix: str = "") -> torch.optim.Optimizer:
    """The optimizer a family config names in ``{prefix}optimizer``, with its ``{prefix}lr``, ``momentum``,
    ``beta1``, ``beta2`` and ``weight_decay``."""
    params = list(params)

    def option(name: str) -> Any:
        return getattr(hp, f"{prefix}{name}")

    if option("lr") <= 0:
        raise ValueError(f"learning rate must be positive, got {option('lr')}")
    make = OPTIMIZERS.get(option("optimizer"))
    return make(params, option, bool(params) and all(p.is_cuda for p in params))

"""Measuring a model on a split: predictions, L1 (overall and per map channel), Spearman's rho.

:func:`evaluate` predicts a whole split in eval mode; :func:`recalibrate_batchnorm` re-estimates
the BatchNorm statistics first (the loop does so before every evaluation). Maps are in [-1, 1]
throughout; :func:`as_float` turns the uint8 tensors the data is held in into that range.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from trainables.augment import AugmentConfig, diff_augment, hide_invalid
from trainables.data import MAP_CHANNELS
from trainables.family import Family

from trainables.config import DIVERGED_L1  # noqa: E402,F401 - the loop's and the tests' name for it
EVAL_BATCH = 64


def as_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.float().div_(127.5).sub_(1.0)


def image_scores(maps: torch.Tensor) -> np.ndarray:
    """Image-level memorability implied by a map: mean of the 'remembered' channel in [0, 1]."""
    return ((maps[:, 0].float() + 1.0) / 2.0).mean(dim=(1, 2)).cpu().numpy()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation with average ranks for ties (NaN when either side is constant)."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


@dataclass
class Evaluation:
    """A model's predictions over one split, and their errors. Spearman's rho and the uint8 predictions are worked
    out when first read: train L1's pass reads neither."""

    l1: float  # mean absolute error over every pixel and channel, maps in [-1, 1]
    channel_l1: dict[str, float]  # the same per meaningful map channel (MAP_CHANNELS), so a model that ignores one shows it
    per_image_l1: np.ndarray
    pred: torch.Tensor  # float (N, 3, H, W) in [-1, 1]
    truth: torch.Tensor

    @functools.cached_property
    def spearman(self) -> float:
        """rho between the image-level scores the predicted and true maps imply"""
        return spearman(image_scores(self.pred), image_scores(self.truth))

    @functools.cached_property
    def predictions(self) -> torch.Tensor:
        """uint8 (N, 3, H, W)"""
        return ((self.pred + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)

    def metrics(self, prefix: str) -> dict[str, float]:
        return {prefix: self.l1, **{f"{prefix}_{name}": value for name, value in self.channel_l1.items()}}


def recalibrate_batchnorm(family: Family, images: torch.Tensor, maps: torch.Tensor, augment: AugmentConfig,
                          *, seed: int = 0) -> None:
    """Re-estimate the prediction networks' BatchNorm statistics on a fixed set of training batches.

    During training the running statistics are an exponential average (momentum 0.1) over
    the last few dozen batches, so they wander with the batch order and eval-mode predictions
    jump from epoch to epoch. Here they are recomputed as a plain average (``momentum=None``)
    over the same training images, augmented as in training with a fixed generator: the
    statistics the weights were trained under, without the drift. (Statistics of clean
    images are *not* what the weights expect: measured on the synthetic set, calibrating on
    clean images raised the autoencoder's val L1 from 0.067 to 0.099.) Only the norm layers
    are in train mode here (dropout stays off) and no global random numbers are drawn, so
    training continues exactly as it would have.
    """
    norms = [m for net in family.prediction_modules.values() for m in net.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    family.train(False)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train(True)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    with torch.no_grad(), family.precision.autocast():
        for start in range(0, len(images), EVAL_BATCH):
            image, vms, valid = diff_augment(as_float(images[start : start + EVAL_BATCH]),
                                             as_float(maps[start : start + EVAL_BATCH]), augment, generator=generator)
            family.calibration_forward(family.fast.input(image), family.fast.input(hide_invalid(vms, valid)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        m.train(False)


def evaluate(family: Family, images: torch.Tensor, maps: torch.Tensor, final: bool = False) -> Evaluation:
    """Predict a whole split in eval mode and measure it against the true maps."""
    family.train(False)
    preds = []
    with torch.no_grad(), family.precision.autocast():
        for start in range(0, len(images), EVAL_BATCH):
            batch = family.fast.input(as_float(images[start : start + EVAL_BATCH]))
            out = family.final_predict(batch) if final else family.predict(batch)
            preds.append(out.float().clamp(-1, 1))
    family.train(True)
    pred = torch.cat(preds)
    truth = as_float(maps)
    error = (pred - truth).abs()
    per_image = error.mean(dim=(1, 2, 3))
    channel_l1 = {name: float(error[:, c].mean()) for name, c in MAP_CHANNELS.items()}
    return Evaluation(float(per_image.mean()), channel_l1, per_image.cpu().numpy(), pred, truth)

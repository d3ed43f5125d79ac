"""Measuring a model on a split: predictions, L1 (overall and per map channel), Spearman's rho.

:func:`evaluate` predicts a whole split in eval mode, batch by batch; :func:`recalibrate_batchnorm`
re-estimates the BatchNorm statistics first (the loop does so before every evaluation) on the trial's
:class:`CalibrationBatches`, augmented once and kept while they are small. Maps are in [-1, 1]
throughout; :func:`as_float` turns the uint8 tensors the data is held in into that range.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from trainables.augment import AugmentConfig, diff_augment, hide_invalid
from trainables.data import MAP_CHANNELS
from trainables.family import Family

from trainables.config import DIVERGED_L1  # noqa: E402,F401 - the loop's and the tests' name for it
EVAL_BATCH = 64
KEEP_BYTES = 64 * 2**20  # CalibrationBatches keeps its augmented batches up to this size


def as_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.float().div_(127.5).sub_(1.0)


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """Image-level memorability implied by a map: mean of the 'remembered' channel in [0, 1]."""
    return ((maps[:, 0].float() + 1.0) / 2.0).mean(dim=(1, 2))


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
    batches: list[torch.Tensor]  # the predictions, float (B, 3, H, W) in [-1, 1], one tensor per batch
    scores: tuple[torch.Tensor, torch.Tensor]  # image-level scores the predicted and the true maps imply (image_scores)

    @functools.cached_property
    def spearman(self) -> float:
        """rho between the image-level scores the predicted and true maps imply"""
        return spearman(*(scores.cpu().numpy() for scores in self.scores))

    @functools.cached_property
    def predictions(self) -> torch.Tensor:
        """uint8 (N, 3, H, W)"""
        return torch.cat([((pred + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8) for pred in self.batches])

    def metrics(self, prefix: str) -> dict[str, float]:
        return {prefix: self.l1, **{f"{prefix}_{name}": value for name, value in self.channel_l1.items()}}


class CalibrationBatches:
    """The training batches BatchNorm statistics are re-estimated on, augmented as in training by a generator seeded
    the same each time: so the same batches at every evaluation. They are augmented once and kept while they take at
    most :data:`KEEP_BYTES` (the fixed subset at 64 px: about 16 MB); larger ones are augmented again each time."""

    def __init__(self, images: torch.Tensor, maps: torch.Tensor, seed: int = 0) -> None:
        self.images, self.maps, self.seed = images, maps, seed
        self._kept: tuple[AugmentConfig, list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def get(self, augment: AugmentConfig) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """(augmented image, map with its invalid pixels hidden) per batch of at most EVAL_BATCH: the kept list, or,
        for a set over KEEP_BYTES, made one batch at a time (no more than one batch held, as without keeping)."""
        if self._kept is not None and self._kept[0] == augment:
            return self._kept[1]
        batches = self._augmented(augment)
        if self.images.numel() * 2 * 4 > KEEP_BYTES:  # two float32 tensors per image: the image and its map
            return batches
        kept = list(batches)
        self._kept = (augment, kept)
        return kept

    def _augmented(self, augment: AugmentConfig) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator(device=self.images.device).manual_seed(self.seed)
        for start in range(0, len(self.images), EVAL_BATCH):
            image, vms, valid = diff_augment(as_float(self.images[start : start + EVAL_BATCH]),
                                             as_float(self.maps[start : start + EVAL_BATCH]), augment,
                                             generator=generator)
            yield image, hide_invalid(vms, valid)


def recalibrate_batchnorm(family: Family, batches: CalibrationBatches, augment: AugmentConfig) -> None:
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
    with torch.no_grad(), family.precision.autocast():
        for image, vms in batches.get(augment):
            family.calibration_forward(family.fast.input(image), family.fast.input(vms))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        m.train(False)


def evaluate(family: Family, images: torch.Tensor, maps: torch.Tensor, final: bool = False) -> Evaluation:
    """Predict a whole split in eval mode and measure it against the true maps, batch by batch (no split-sized
    float copy of the maps or the errors)."""
    family.train(False)
    preds, per_image, per_channel, scores = [], [], [], ([], [])
    with torch.no_grad():
        for start in range(0, len(images), EVAL_BATCH):
            with family.precision.autocast():
                batch = family.fast.input(as_float(images[start : start + EVAL_BATCH]))
                out = family.final_predict(batch) if final else family.predict(batch)
            pred = out.float().clamp(-1, 1)
            truth = as_float(maps[start : start + EVAL_BATCH])
            error = (pred - truth).abs().mean(dim=(2, 3))  # (B, 3): each image's L1 per channel
            preds.append(pred)
            per_image.append(error.mean(dim=1))
            per_channel.append(error)
            scores[0].append(image_scores(pred))
            scores[1].append(image_scores(truth))
    family.train(True)
    image_l1, channel = torch.cat(per_image), torch.cat(per_channel).mean(dim=0)
    channel_l1 = {name: float(channel[c]) for name, c in MAP_CHANNELS.items()}
    return Evaluation(float(image_l1.mean()), channel_l1, image_l1.cpu().numpy(), preds,
                      (torch.cat(scores[0]), torch.cat(scores[1])))

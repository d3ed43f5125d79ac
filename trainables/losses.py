"""The map losses of the UNet autoencoder and the GAN's reconstruction term, and the masked L1 and MSE
every family takes over the pixels augmentation left known (:func:`masked_l1`, :func:`masked_mse`).

The UNet ends in ``tanh``, so its map is ``tanh(z)`` for a pre-activation ``z``. Trained with
L1 alone (the report's loss), a sparse channel dies: the "falsely remembered" (green)
channel is lit on about 3% of the pixels, so early in training 97% of its pixels push it
towards black, ``tanh`` saturates at -1, and from then on the gradient of every pixel,
the lit ones included, is multiplied by ``tanh'(z) ~ 0``. Measured on the synthetic default
(autoencoder, `cpu` preset size, no translation, 12 epochs): the green output was -1.000 on
lit and unlit pixels alike (their ranking AUC 0.27), and its L1 never left the all-black
map's. Without the tanh (a linear head) the gradient survives but L1 still barely learns the
channel (AUC 0.62, green L1 0.058, worse than black): L1 is minimised by the per-pixel
*median*, and a feature that raises a pixel's chance of being lit from 5% to 30% leaves the
median, and so the L1 signal, at black. Learning the channel needs a loss that rewards
such features: a regression of the probability itself.

``ce`` reads the map as a per-pixel probability, ``(map + 1) / 2 = sigmoid(2 z)``, and takes
the binary cross-entropy against the true intensity ``(truth + 1) / 2``. Its gradient with
respect to ``2 z`` is ``(map - truth) / 2``: proportional to the error and never multiplied
by the saturating ``tanh'``, so a lit pixel predicted black always pulls. Its optimum is the
conditional *mean*, which for uncertain pixels is a faint grey that L1 (minimised by the
conditional *median*) penalises; ``l1+ce`` adds the two, so the channel keeps learning and
the output still settles where L1, the metric, wants it. Same run with ``l1+ce``: green AUC
0.98 and green L1 0.041 against the all-black map's 0.0523.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from trainables.config import MAP_LOSSES


def masked_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the valid pixels only (``valid`` is (N, 1, H, W) 0/1)."""
    return masked_mean((pred - target).abs(), valid)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the valid pixels only."""
    return masked_mean((pred - target).square(), valid)


def masked_mean(error: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The mean of ``error`` over the valid pixels (``valid`` (N, 1, H, W) 0/1, broadcast over channels)."""
    weight = valid.expand_as(error)
    return (error * weight).sum() / weight.sum().clamp(min=1.0)


def map_l1(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The report's loss: L1 between the map ``tanh(logits)`` and the truth."""
    return masked_mean((torch.tanh(logits) - target).abs(), valid)


def map_ce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the map read as a per-pixel probability, ``sigmoid(2 logits)``, against the truth's."""
    probability = ((target + 1.0) / 2.0).clamp(0.0, 1.0)
    return masked_mean(F.binary_cross_entropy_with_logits(2.0 * logits, probability, reduction="none"), valid)


def map_l1_ce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return map_l1(logits, target, valid) + map_ce(logits, target, valid)


def masked_map_loss(name: str, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The map loss ``name`` between ``tanh(logits)`` and ``target`` (both in [-1, 1]) over the valid pixels.

    ``logits`` is the UNet's pre-activation (:meth:`models.unet.UNet.logits`); ``valid``
    (N, 1, H, W) is 0 where augmentation hid the image (see :func:`trainables.augment.diff_augment`).
    """
    return MAP_LOSSES.get(name)(logits.float(), target, valid)  # trainables.config.MAP_LOSSES: the ones a study may name

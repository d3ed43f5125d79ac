"""DiffAugment keeps image and map aligned, and what the image loses never becomes a black label."""

from __future__ import annotations

import pytest
import torch

from trainables.families import FAMILIES, find_family
from trainables.augment import AugmentConfig, diff_augment
from trainables.config import RunSettings
from trainables.losses import masked_l1

BOTH = AugmentConfig(p_translation=1.0, p_cutout=1.0)


def test_image_and_map_move_together():
    torch.manual_seed(0)
    image = torch.rand(8, 3, 64, 64) * 2 + 1  # strictly positive, so fills show
    out_image, out_map, valid = diff_augment(image, image.clone(), BOTH)
    assert torch.equal(out_image * valid, out_map * valid)
    assert not torch.equal(out_image, image)


def test_hidden_pixels_are_marked_invalid_not_black():
    torch.manual_seed(1)
    image = torch.rand(16, 3, 32, 32) + 1.0  # strictly positive: a 0 is a filled or cut-out pixel
    vms = torch.rand(16, 3, 32, 32)
    out_image, out_map, valid = diff_augment(image, vms, BOTH)
    lost = (out_image == 0).all(dim=1, keepdim=True)
    assert lost.any() and valid.shape == (16, 1, 32, 32)
    assert torch.equal(lost, valid == 0)  # exactly the pixels the image lost are invalid
    assert not (out_map == -1.0).any()  # nothing is written into the map as black


def test_probability_zero_or_off_is_identity_and_gradients_flow():
    image = torch.randn(4, 3, 32, 32, requires_grad=True)
    vms = torch.randn(4, 3, 32, 32)
    for cfg in (AugmentConfig(p_translation=0.0, p_cutout=0.0), AugmentConfig(augment=False)):
        same, same_map, valid = diff_augment(image, vms, cfg)
        assert torch.equal(same, image) and torch.equal(same_map, vms) and bool((valid == 1).all())
    out, _, _ = diff_augment(image, vms)
    out.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_each_operation_applies_with_its_probability():
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(2000, 1, 8, 8) + 1.0
    out, _, _ = diff_augment(image, torch.zeros_like(image), AugmentConfig(p_translation=0.0, p_cutout=0.9),
                             generator=generator)
    changed = (out == 0).flatten(1).any(dim=1).float().mean().item()
    assert 0.86 < changed < 0.94


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="p_cutout"):
        AugmentConfig(p_cutout=1.5)
    with pytest.raises(ValueError, match="cutout_ratio"):
        AugmentConfig(cutout_ratio=0.0)


def test_masked_l1_ignores_invalid_pixels():
    pred, target = torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
    valid = torch.ones(2, 1, 8, 8)
    valid[:, :, :4] = 0
    changed = target.clone()
    changed[:, :, :4] = -1.0  # what the old augmentation wrote there
    assert masked_l1(pred, target, valid) == masked_l1(pred, changed, valid) == 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_map_pixels_never_enter_a_loss(family):
    """Whatever the map holds where the image was hidden, every family's step is the same."""
    family_cls = find_family(family)
    config_cls = family_cls.config_cls
    extra = {"diffusion": {"steps": 20, "prediction": "x0"}}.get(family, {})
    settings = RunSettings(epochs=1, width_divisor=16)
    image = torch.rand(4, 3, 64, 64) * 2 - 1
    vms = torch.rand(4, 3, 64, 64) * 2 - 1
    generator = torch.Generator().manual_seed(2)
    image, vms, valid = diff_augment(image, vms, BOTH, generator=generator)
    assert (valid == 0).any()
    blackened = torch.where(valid.bool(), vms, torch.full_like(vms, -1.0))
    losses = []
    for labels in (vms, blackened):
        torch.manual_seed(0)
        model = family_cls(config_cls(**extra), settings, torch.device("cpu"))
        torch.manual_seed(1)
        out = model.train_step(image, labels, valid)
        losses.append({k: float(v) for k, v in out.items()})
    assert losses[0] == losses[1]


def test_the_calibration_batches_are_augmented_once_as_a_fresh_generator_would(monkeypatch):
    """BatchNorm re-estimation augments its fixed subset with a generator seeded the same each time: the kept batches
    are those a fresh augmentation gives; another augmentation is made afresh; too large a set is not kept."""
    from dataclasses import replace

    from trainables import evaluation
    from trainables.evaluation import CalibrationBatches

    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (70, 3, 16, 16), dtype=torch.uint8, generator=generator)
    maps = torch.randint(0, 256, (70, 3, 16, 16), dtype=torch.uint8, generator=generator)
    kept = CalibrationBatches(images, maps, seed=3)
    first = kept.get(BOTH)
    assert kept.get(BOTH) is first and len(first) == 2  # batches of 64 and 6
    fresh = CalibrationBatches(images, maps, seed=3).get(BOTH)
    assert all(torch.equal(a, b) for pair, again in zip(first, fresh) for a, b in zip(pair, again))
    other = kept.get(replace(BOTH, p_cutout=0.0))
    assert not torch.equal(other[0][0], first[0][0])
    monkeypatch.setattr(evaluation, "KEEP_BYTES", 0)
    small = CalibrationBatches(images, maps, seed=3)
    again = list(small.get(BOTH))
    assert small.get(BOTH) is not small.get(BOTH) and torch.equal(list(small.get(BOTH))[1][1], again[1][1])

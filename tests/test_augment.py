from __future__ import annotations

import torch

from trainables.augment import diff_augment


def test_image_and_map_move_together():
    torch.manual_seed(0)
    image = torch.rand(8, 3, 64, 64) * 2 - 1
    vms = image.clone()
    out_image, out_map = diff_augment(image, vms, p_translation=1.0, p_cutout=1.0)
    # Where the image was not filled (0) the map equals it; where it was, the map is black.
    filled = out_map == -1.0
    assert torch.equal(out_image[~filled], out_map[~filled])
    assert (out_image[filled] == 0).all()
    assert not torch.equal(out_image, image)


def test_probability_zero_is_identity_and_gradients_flow():
    image = torch.randn(4, 3, 32, 32, requires_grad=True)
    vms = torch.randn(4, 3, 32, 32)
    same, _ = diff_augment(image, vms, p_translation=0.0, p_cutout=0.0)
    assert torch.equal(same, image)
    out, _ = diff_augment(image, vms)
    out.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_each_operation_applies_with_its_probability():
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(2000, 1, 8, 8) + 1.0  # strictly positive, so fills show
    out, _ = diff_augment(image, torch.zeros_like(image), p_translation=0.0, p_cutout=0.9, generator=generator)
    changed = (out == 0).flatten(1).any(dim=1).float().mean().item()
    assert 0.86 < changed < 0.94

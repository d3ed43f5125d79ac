"""DiffAugment (Zhao et al. 2020): translation and cutout, applied to image and map together.

Both operations are built from indexing and multiplication, so gradients flow through
them, and they run on whatever device the batch is on. The same random offsets and
cut-out boxes are used for the image and its map, so the pair stays aligned.

What the image loses is *unknown*, not "nothing remembered": pixels that come from outside
the frame or are cut out become 0 (mid-grey) in the image, and :func:`diff_augment`
returns a validity mask that is 0 there. The losses (see :func:`trainables.losses.masked_l1`) and the GAN's
discriminator ignore those pixels, so augmentation never teaches a model to paint black
(writing them into the map as -1, as an earlier version did, turned about a quarter of
the training-map pixels into black labels).
"""

from __future__ import annotations

import torch

from trainables.config import AugmentConfig


def _translate(x: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift each sample; returns the shifted batch (0 where nothing moved in) and the (N, 1, H, W) inside mask."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1) - shift_y.view(n, 1, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - shift_x.view(n, 1, 1)
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)
    rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    moved = x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    return moved * inside, inside


def _cutout_mask(n: int, h: int, w: int, ratio: float, generator: torch.Generator | None, device) -> torch.Tensor:
    """(N, 1, H, W) boolean boxes of ratio*H x ratio*W, centred anywhere in the frame (clipped at edges)."""
    cut_h, cut_w = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    top = torch.randint(0, h, (n, 1, 1), generator=generator, device=device) - cut_h // 2
    left = torch.randint(0, w, (n, 1, 1), generator=generator, device=device) - cut_w // 2
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + cut_h) & (cols >= left) & (cols < left + cut_w)
    return inside.unsqueeze(1)


def diff_augment(
    image: torch.Tensor,
    vms: torch.Tensor,
    cfg: AugmentConfig = AugmentConfig(),
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment a batch of images (N, C, H, W) and their maps identically.

    Each sample is translated with probability ``cfg.p_translation`` (by up to
    ``cfg.translation_ratio`` of its size) and gets a cut-out box of ``cfg.cutout_ratio``
    of its size with probability ``cfg.p_cutout``. Returns ``(image, vms, valid)``:
    ``valid`` (N, 1, H, W, float 0/1) is 0 where the image lost its content (moved in
    from outside the frame, or cut out); the map's value there means nothing and every
    loss must ignore it.
    """
    assert image.shape[0] == vms.shape[0] and image.shape[2:] == vms.shape[2:], \
        f"image {tuple(image.shape)} and map {tuple(vms.shape)} must share batch and spatial size"
    n, _, h, w = image.shape
    device = image.device
    valid = torch.ones(n, 1, h, w, dtype=torch.bool, device=device)
    if not cfg.augment:
        return image, vms, valid.to(image.dtype)
    if cfg.p_translation > 0:
        max_y, max_x = int(h * cfg.translation_ratio + 0.5), int(w * cfg.translation_ratio + 0.5)
        shift_y = torch.randint(-max_y, max_y + 1, (n,), generator=generator, device=device)
        shift_x = torch.randint(-max_x, max_x + 1, (n,), generator=generator, device=device)
        apply = torch.rand(n, generator=generator, device=device) < cfg.p_translation
        shift_y, shift_x = shift_y * apply, shift_x * apply
        image, inside = _translate(image, shift_y, shift_x)
        vms, _ = _translate(vms, shift_y, shift_x)
        valid &= inside
    if cfg.p_cutout > 0:
        box = _cutout_mask(n, h, w, cfg.cutout_ratio, generator, device)
        apply = (torch.rand(n, generator=generator, device=device) < cfg.p_cutout).view(n, 1, 1, 1)
        box = box & apply
        image = image * ~box
        valid &= ~box
    return image, vms, valid.to(image.dtype)


def hide_invalid(vms: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The map with its unknown pixels set to 0: what the discriminator sees of real and fake alike,
    so it can tell them apart only where the truth is known."""
    return vms * valid

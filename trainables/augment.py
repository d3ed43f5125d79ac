"""DiffAugment (Zhao et al. 2020): translation and cutout, applied to image and map together.

Both operations are built from indexing and multiplication, so gradients flow through
them, and they run on whatever device the batch is on. The same random offsets and
cut-out boxes are used for the image and its map, so the pair stays aligned. Pixels that
come from outside the frame or are cut out become 0 (mid-grey) in the image and -1
(black: "nothing remembered") in the map.
"""

from __future__ import annotations

import torch


def _translate(x: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor, fill: float) -> torch.Tensor:
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1) - shift_y.view(n, 1, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - shift_x.view(n, 1, 1)
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)
    rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    moved = x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    return torch.where(inside, moved, torch.full_like(moved, fill))


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
    *,
    p_translation: float = 0.9,
    p_cutout: float = 0.9,
    translation_ratio: float = 0.125,
    cutout_ratio: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch of images (N, C, H, W) and their maps identically.

    Each sample is translated with probability ``p_translation`` (by up to
    ``translation_ratio`` of its size) and gets a cut-out box of ``cutout_ratio`` of its
    size with probability ``p_cutout``, as in the report (0.9 each).
    """
    assert image.shape[0] == vms.shape[0] and image.shape[2:] == vms.shape[2:], \
        f"image {tuple(image.shape)} and map {tuple(vms.shape)} must share batch and spatial size"
    n, _, h, w = image.shape
    device = image.device
    if p_translation > 0:
        max_y, max_x = int(h * translation_ratio + 0.5), int(w * translation_ratio + 0.5)
        shift_y = torch.randint(-max_y, max_y + 1, (n,), generator=generator, device=device)
        shift_x = torch.randint(-max_x, max_x + 1, (n,), generator=generator, device=device)
        apply = torch.rand(n, generator=generator, device=device) < p_translation
        shift_y, shift_x = shift_y * apply, shift_x * apply
        image = _translate(image, shift_y, shift_x, fill=0.0)
        vms = _translate(vms, shift_y, shift_x, fill=-1.0)
    if p_cutout > 0:
        box = _cutout_mask(n, h, w, cutout_ratio, generator, device)
        apply = (torch.rand(n, generator=generator, device=device) < p_cutout).view(n, 1, 1, 1)
        box = box & apply
        image = torch.where(box, torch.zeros_like(image), image)
        vms = torch.where(box, torch.full_like(vms, -1.0), vms)
    return image, vms

"""Decoding image files as datasets and predictions read them: any common format to 8-bit RGB, resized.

PNG (grayscale, alpha, 16-bit), JPEG, BMP, TIFF and WebP become RGB: 16-bit images are scaled,
alpha is laid over black. A file that cannot be decoded is a :class:`DataError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainables.errors import InputError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}


class DataError(InputError):
    """A dataset problem the user must fix; the message says what, where and how."""


def open_rgb(path: Path) -> Image.Image:
    """Decode any supported image file to 8-bit RGB at its own size (16-bit scaled, alpha over black)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                array = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I") and array.max() > 255 else 255.0
                img = Image.fromarray((array / top * 255.0).clip(0, 255).astype(np.uint8))
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (0, 0, 0, 255))
                img = Image.alpha_composite(background, img)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot be decoded ({err}); the file is corrupt, truncated or not an image. "
                        "Replace it or move it out of the dataset.") from None


def resized_array(img: Image.Image, size: int) -> np.ndarray:
    """An RGB image as a (3, size, size) uint8 array: box-filtered when shrinking, bilinear when growing."""
    if img.size != (size, size):
        shrinking = img.size[0] > size or img.size[1] > size
        img = img.resize((size, size), Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def decode_rgb(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode any supported image file to a (3, size, size) uint8 array; also return its original (w, h)."""
    img = open_rgb(path)
    return resized_array(img, size), img.size

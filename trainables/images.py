"""Decoding image files as datasets and predictions read them: any common format to 8-bit RGB, resized.

PNG (grayscale, alpha, 16-bit), JPEG, BMP, TIFF and WebP become RGB as a viewer shows them (a camera's EXIF
rotation applied): 16-bit images are scaled by their depth, float images read as [0, 1], alpha is laid over
black. A file that cannot be decoded is a :class:`DataError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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
            img = ImageOps.exif_transpose(img)  # as a viewer shows it (and a map was drawn on): a camera's rotation
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                img = Image.fromarray(_to_8_bit(img))
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (0, 0, 0, 255))
                img = Image.alpha_composite(background, img)
            return img.convert("RGB")
    except Image.DecompressionBombError as err:  # Pillow's guard against a file that decodes to gigabytes
        raise DataError(f"{path}: too large to decode safely ({err}); shrink it, or move it out.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot be decoded ({err}); the file is corrupt, truncated or not an image. "
                        "Replace it or move it out of the dataset.") from None


def _to_8_bit(img: Image.Image) -> np.ndarray:
    """A single-channel image of more than 8 bits as uint8, scaled by what its mode holds, never by its content (a
    faint map stays faint): 16-bit by 65535; 32-bit integers by 65535 where a value exceeds 255 (Pillow opens some
    16-bit files so), else as 8-bit values; floats as [0, 1] where none exceeds 1, else as [0, 255]."""
    array = np.asarray(img, dtype=np.float64)
    top = array.max(initial=0.0)
    if img.mode.startswith("I;16") or (img.mode == "I" and top > 255):
        scale = 255.0 / 65535.0
    elif img.mode == "F" and top <= 1.0:
        scale = 255.0
    else:
        scale = 1.0
    return (array * scale).round().clip(0, 255).astype(np.uint8)


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

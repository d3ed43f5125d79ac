"""The embedded synthetic VMS-like dataset.

VISCHEMA Plus cannot be redistributed, so the project ships a generator instead. Each
image is a textured background with a few objects (shape, colour, texture, size); its
3-channel map marks, on a coarse block grid, the regions a hidden rule on *object
content* calls "remembered" (red channel) and "falsely remembered" (green channel). The
blue channel stays black. Position alone tells nothing: the same place is remembered or
not depending on what is drawn there, so a model has to look at the image.

The hidden rule (documented here so results can be interpreted, not so models can cheat):

* remembered: a red or yellow object that is not a ring (intensity grows with its size),
  or any circle with stripes (intensity 0.7);
* falsely remembered: a blue or cyan triangle (0.8), or a green object with dots (0.6).

A block (``size // 8`` pixels square) takes the strongest rule of the objects that cover
more than a quarter of it, after occlusion. About a quarter of the maps (27% of the default validation set) are all black.

With ``maps="independent"`` the maps are drawn instead from a generator of their own, blocks on
the same grid lit at random (``lit_share`` of them, in the red or the green channel), so nothing
in an image tells anything about its map: data a model cannot learn, on which the best answer
under L1 is the all-black map (``python -m trainables.data generate --maps independent``).

Files are written in the layout the real-data loader reads (``images/``, ``maps/``,
``splits/``), so one loader serves both.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

GENERATOR_VERSION = 1

COLOURS = {
    "red": (220, 40, 40),
    "yellow": (230, 205, 40),
    "green": (40, 175, 60),
    "cyan": (40, 195, 210),
    "blue": (45, 70, 220),
    "magenta": (200, 50, 200),
}
SHAPES = ("circle", "square", "triangle", "ring")
TEXTURES = ("solid", "stripes", "dots")
R_MIN, R_MAX = 0.12, 0.27  # object radius as a fraction of the image size
MAP_KINDS = ("scene", "independent")


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. The defaults mirror VISCHEMA Plus (1,280 train + 320 val), plus 320 test pairs.

    The pairs are drawn in the order train, val, test from one generator, so adding the test
    split left the train and val pairs (and the data fingerprint of existing studies) as they were.
    """

    n_train: int = 1280
    n_val: int = 320
    size: int = 64
    seed: int = 0
    n_test: int = 320
    maps: str = "scene"  # "scene": the hidden rule above; "independent": random blocks, unrelated to the image
    lit_share: float = 0.2  # with maps="independent": the share of blocks (and so of pixels) that are lit

    def __post_init__(self) -> None:
        if self.maps not in MAP_KINDS:
            raise ValueError(f"maps must be one of {', '.join(MAP_KINDS)}, got {self.maps!r}")
        if not 0.0 < self.lit_share < 1.0:
            raise ValueError(f"lit_share must be between 0 and 1, got {self.lit_share}")
        if self.n_train < 1 or self.n_val < 1 or self.n_test < 0:
            raise ValueError(f"n_train and n_val must be positive and n_test not negative, "
                             f"got {self.n_train}, {self.n_val}, {self.n_test}")
        if self.size < 16 or self.size % 8:
            raise ValueError(f"size must be a multiple of 8 and at least 16, got {self.size}")

    @property
    def name(self) -> str:
        test = f"x{self.n_test}" if self.n_test else ""
        kind = "" if self.maps == "scene" else f"-independent{self.lit_share:g}"
        return f"synthetic-v{GENERATOR_VERSION}-s{self.seed}-{self.n_train}x{self.n_val}{test}-{self.size}px{kind}"


def object_rule(shape: str, colour: str, texture: str, size_frac: float) -> tuple[float, float]:
    """Return (remembered, falsely_remembered) intensities in [0, 1] for one object."""
    remembered = 0.0
    if colour in ("red", "yellow") and shape != "ring":
        remembered = 0.55 + 0.45 * size_frac
    if shape == "circle" and texture == "stripes":
        remembered = max(remembered, 0.7)
    false = 0.0
    if shape == "triangle" and colour in ("blue", "cyan"):
        false = 0.8
    if texture == "dots" and colour == "green":
        false = max(false, 0.6)
    return remembered, false


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted, smoothly varying texture: low-frequency colour field plus fine grain."""
    coarse = rng.uniform(60, 170, size=(4, 4, 3)).astype(np.float32)
    grey = coarse.mean(axis=2, keepdims=True)
    coarse = grey + 0.35 * (coarse - grey)  # desaturate so objects stand out by colour
    field = np.asarray(
        Image.fromarray(coarse.clip(0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    grain = rng.normal(0, 10, size=(size, size, 1)).astype(np.float32)
    return field + grain


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy * dy + dx * dx <= r * r
    if shape == "ring":
        d2 = dy * dy + dx * dx
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    # triangle pointing up: half-width grows linearly from the apex to the base
    t = (dy + r) / (2 * r)
    return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)


def _texture(texture: str, yy: np.ndarray, xx: np.ndarray, phase: int) -> np.ndarray:
    """1.0 where the object shows its colour, a dark shade elsewhere."""
    if texture == "stripes":
        return np.where(((xx + yy + phase) // 3) % 2 == 0, 1.0, 0.3)
    if texture == "dots":
        return np.where(((xx + phase) % 4 < 2) & ((yy + phase) % 4 < 2), 1.0, 0.3)
    return np.ones_like(xx, dtype=np.float64)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    texture: str
    radius: float  # pixels
    cy: float
    cx: float
    phase: int = 0  # texture offset
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0)  # colour jitter


def random_objects(rng: np.random.Generator, size: int) -> list[SceneObject]:
    n_objects = int(rng.choice([1, 2, 3, 4], p=[0.25, 0.35, 0.25, 0.15]))
    objects = []
    for _ in range(n_objects):
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        texture = TEXTURES[rng.integers(len(TEXTURES))]
        r = float(rng.uniform(size * R_MIN, size * R_MAX))
        cy, cx = rng.uniform(r * 0.6, size - r * 0.6, size=2)
        tint = tuple(float(t) for t in rng.normal(0, 12, size=3))
        phase = int(rng.integers(4))
        objects.append(SceneObject(shape, colour, texture, r, float(cy), float(cx), phase, tint))
    return objects


def render_scene(objects: list[SceneObject], background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``objects`` (in order, later ones on top) on ``background``; return uint8 (image, map)."""
    size = background.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image = background.copy()
    owner = np.full((size, size), -1, dtype=np.int64)  # which object is visible where
    rules: list[tuple[float, float]] = []
    r_min, r_max = size * R_MIN, size * R_MAX
    for index, obj in enumerate(objects):
        mask = _shape_mask(obj.shape, yy, xx, obj.cy, obj.cx, obj.radius)
        colour = np.array(COLOURS[obj.colour], dtype=np.float32) + np.array(obj.tint, dtype=np.float32)
        shade = _texture(obj.texture, yy, xx, obj.phase)
        painted = shade[..., None] * colour[None, None, :]
        image[mask] = painted[mask]
        owner[mask] = index
        size_frac = float(np.clip((obj.radius - r_min) / (r_max - r_min), 0, 1))
        rules.append(object_rule(obj.shape, obj.colour, obj.texture, size_frac))

    block = size // 8
    vms = np.zeros((size, size, 3), dtype=np.float32)
    for by in range(0, size, block):
        for bx in range(0, size, block):
            cell = owner[by : by + block, bx : bx + block]
            for index, (remembered, false) in enumerate(rules):
                if (cell == index).mean() > 0.25:
                    vms[by : by + block, bx : bx + block, 0] = max(vms[by, bx, 0], remembered)
                    vms[by : by + block, bx : bx + block, 1] = max(vms[by, bx, 1], false)
    image_u8 = image.clip(0, 255).round().astype(np.uint8)
    map_u8 = (vms * 255).round().astype(np.uint8)
    return image_u8, map_u8


def render_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One random (image, map) pair as uint8 HxWx3 arrays."""
    background = _background(rng, size)
    return render_scene(random_objects(rng, size), background)


def independent_map(rng: np.random.Generator, size: int, lit_share: float) -> np.ndarray:
    """A map of random blocks on the scene maps' grid, drawn without looking at any image (uint8 HxWx3).

    Each block is lit with probability ``lit_share``, in the red (remembered, 60%) or the green
    (falsely remembered) channel, at an intensity between 0.5 and 1.
    """
    grid = 8
    block = size // grid
    lit = rng.random((grid, grid)) < lit_share
    channel = np.where(rng.random((grid, grid)) < 0.6, 0, 1)
    level = rng.uniform(0.5, 1.0, (grid, grid))
    vms = np.zeros((grid, grid, 3), dtype=np.float64)
    for c in (0, 1):
        vms[..., c] = np.where(lit & (channel == c), level, 0.0)
    vms = np.kron(vms, np.ones((block, block, 1)))
    return np.round(vms * 255).astype(np.uint8)


def generate(root: Path, spec: SyntheticSpec) -> Path:
    """Write the dataset described by ``spec`` into ``root`` (which must not exist yet).

    The result is written into a temporary sibling first and renamed into place, so a
    crash never leaves a half-written dataset where the cache expects a whole one.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        (staging / "images").mkdir()
        (staging / "maps").mkdir()
        (staging / "splits").mkdir()
        rng = np.random.default_rng(spec.seed)
        map_rng = np.random.default_rng([spec.seed, 1])  # "independent": the maps' own generator
        stems = [f"syn_{i:05d}" for i in range(spec.n_train + spec.n_val + spec.n_test)]
        for stem in stems:
            image, vms = render_pair(rng, spec.size)
            if spec.maps == "independent":
                vms = independent_map(map_rng, spec.size, spec.lit_share)
            Image.fromarray(image).save(staging / "images" / f"{stem}.png", optimize=False)
            Image.fromarray(vms).save(staging / "maps" / f"{stem}.png", optimize=False)
        (staging / "splits" / "train.txt").write_text("\n".join(stems[: spec.n_train]) + "\n")
        (staging / "splits" / "val.txt").write_text("\n".join(stems[spec.n_train : spec.n_train + spec.n_val]) + "\n")
        if spec.n_test:
            (staging / "splits" / "test.txt").write_text("\n".join(stems[spec.n_train + spec.n_val :]) + "\n")
        manifest = {"generator_version": GENERATOR_VERSION, **asdict(spec)}
        (staging / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def cache_root() -> Path:
    """Where generated datasets are cached: ``$MEMSEARCH_CACHE`` or ``~/.cache/memsearch``."""
    return Path(os.environ.get("MEMSEARCH_CACHE", Path.home() / ".cache" / "memsearch"))


def ensure_synthetic(spec: SyntheticSpec | None = None, root: Path | None = None) -> Path:
    """Return the folder of the synthetic dataset, generating it once if needed."""
    spec = spec or SyntheticSpec()
    folder = (root or cache_root()) / spec.name
    if not (folder / "MANIFEST.json").is_file():
        if folder.exists():  # an old partial folder (pre-atomic writes): regenerate
            shutil.rmtree(folder)
        try:
            generate(folder, spec)
        except OSError:
            # Another process may have renamed an identical dataset into place first.
            if not (folder / "MANIFEST.json").is_file():
                raise
    return folder

"""Image/VMS-map datasets: one loader for real VISCHEMA copies and the synthetic default.

Accepted layouts (folder names are case-sensitive, file extensions are not)::

    DIR/images/<stem>.<ext>   DIR/maps/<stem>.<ext>   [DIR/splits/train.txt, val.txt, [test.txt]]
    DIR/train/images/...      DIR/train/maps/...      DIR/val/images/...   DIR/val/maps/...   [DIR/test/...]

A test split (``splits/test.txt``, or ``test/images`` + ``test/maps``) is optional; the
search never reads it: only the final re-training of the best configurations measures it,
once. A dataset without one (VISCHEMA ships train and val lists only) gets one by
:meth:`VMSDataset.hold_out`: its val split becomes the test split, and the search selects on
a seeded share of its training pairs (``--val-share``, 0.2 by default), so the headline is
measured on data no selection read, and is comparable with numbers published on the official val.

``maps/`` may also be called ``vms/`` or ``labels/``. Images and maps are paired by file
stem; any size and any common format (PNG incl. grayscale, alpha, 16-bit; JPEG; BMP;
TIFF; WebP) is converted to RGB and resized to the working resolution. Maps are scaled to
[-1, 1]. Splits come from the list files (one stem per line) when present, otherwise a
seeded 80/20 split. Hidden and system files (``.DS_Store``, ``Thumbs.db``) are skipped
and counted. Everything else that is wrong is reported in one :class:`DataError` naming
the files, and nothing is dropped silently.

Command line::

    python -m trainables.data describe [--data DIR] [--size 64]
    python -m trainables.data generate OUT_DIR [--train 1280 --val 320 --test 320 --seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainables import decoded
from trainables.images import DataError, decode_rgb
from trainables.layouts import MAX_LISTED, find_splits, listing
from trainables.synthetic import MAP_KINDS, SyntheticSpec, cache_root, ensure_synthetic, generate

# The two meaningful channels of a VMS map (red: remembered, green: falsely remembered; blue stays black).
MAP_CHANNELS = {"remembered": 0, "falsely_remembered": 1}
DEFAULT_SIZE = 64  # the working side images and maps are resized to (--size), the report's


@dataclass
class VMSDataset:
    """A decoded dataset held as compact uint8 arrays (N, 3, S, S), ready for any device."""

    train_images: np.ndarray
    train_maps: np.ndarray
    val_images: np.ndarray
    val_maps: np.ndarray
    train_stems: list[str]
    val_stems: list[str]
    source: str
    size: int
    notes: list[str] = field(default_factory=list)
    test_images: np.ndarray | None = None  # None: the dataset has no test split
    test_maps: np.ndarray | None = None
    test_stems: list[str] = field(default_factory=list)
    splits: dict[str, str] = field(default_factory=dict)  # split -> where its pairs came from ("splits/val.txt", ...)

    @property
    def has_test(self) -> bool:
        return self.test_images is not None and len(self.test_images) > 0

    @property
    def fingerprint(self) -> str:
        """A short hash of the decoded content: two studies on different data never mix."""
        digest = hashlib.sha1()
        for array in (self.train_images, self.train_maps, self.val_images, self.val_maps):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]

    @property
    def test_fingerprint(self) -> str | None:
        """The same of the test split (None where there is none): a study's final stage is measured on one test set."""
        if self.test_images is None:
            return None
        digest = hashlib.sha1()
        for array in (self.test_images, self.test_maps):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]

    def baselines(self, split: str = "val") -> dict[str, float]:
        """L1 of the all-black map and of the mean training map (maps in [-1, 1]) on a split
        (``val`` or ``test``), overall (``black_l1``, ``mean_map_l1``) and per meaningful channel
        (``black_l1_remembered``, ``mean_map_l1_falsely_remembered``, ...)."""
        if split == "test" and not self.has_test:
            raise ValueError(f"{self.source} has no test split")
        val = to_unit_range(self.test_maps if split == "test" else self.val_maps)
        mean_map = to_unit_range(self.train_maps).mean(axis=0, keepdims=True)
        errors = {"black_l1": np.abs(val + 1.0), "mean_map_l1": np.abs(val - mean_map)}
        result = {name: float(error.mean()) for name, error in errors.items()}
        for name, error in errors.items():
            for channel, index in MAP_CHANNELS.items():
                result[f"{name}_{channel}"] = float(error[:, index].mean())
        return result

    def subset(self, n_train: int | None, n_val: int | None) -> "VMSDataset":
        """The first ``n_train``/``n_val`` pairs of each split (None keeps all; the test split is cut like val)."""
        return VMSDataset(
            self.train_images[:n_train], self.train_maps[:n_train],
            self.val_images[:n_val], self.val_maps[:n_val],
            self.train_stems[:n_train], self.val_stems[:n_val],
            self.source, self.size, list(self.notes),
            None if self.test_images is None else self.test_images[:n_val],
            None if self.test_maps is None else self.test_maps[:n_val], self.test_stems[:n_val], dict(self.splits),
        )

    def hold_out(self, val_share: float | None, seed: int) -> "VMSDataset":
        """The dataset a search runs on: as it is when it has a test split (or ``val_share`` is None or 0);
        without one, its val split becomes the test split, read once by the final stage, and a seeded
        ``val_share`` of its training pairs becomes the validation split the search selects on.

        Raises :class:`DataError` when the share leaves no training or no validation pair."""
        if self.has_test or not val_share:
            return self
        if not 0.0 < val_share < 1.0:
            raise DataError(f"--val-share is the share of the training pairs held out for validation, in (0, 1); "
                            f"got {val_share}.")
        n = len(self.train_stems)
        n_val = int(round(n * val_share))
        if n_val < 1 or n - n_val < 1:
            raise DataError(f"{self.source}: --val-share {val_share} of its {n} training pairs leaves {n - n_val} "
                            f"to train on and {n_val} to validate on; both must be at least 1 (this dataset has no "
                            "test split, so its val split is held out as the test split). Add pairs or change the share.")
        order = np.random.default_rng(seed).permutation(n)
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
        where = self.splits.get("train", "the training pairs")
        share = f"{val_share:.0%}" if round(val_share * 100, 6).is_integer() else f"{val_share:g}"
        return VMSDataset(
            self.train_images[train], self.train_maps[train], self.train_images[val], self.train_maps[val],
            [self.train_stems[i] for i in train], [self.train_stems[i] for i in val], self.source, self.size,
            [*(n for n in self.notes if not n.startswith("split:")),
             f"split: no test split, so the val split ({self.splits.get('val', 'as loaded')}) is held out as the test "
             f"split, and validation is a seeded {share} of the training pairs (seed {seed}, --val-share)"],
            self.val_images, self.val_maps, list(self.val_stems),
            {"train": f"{where}, less the validation share", "val": f"a seeded {share} of {where}, seed {seed}",
             "test": self.splits.get("val", "the val split")},
        )

    def roles(self) -> str:
        """Which split plays which role, in one line (the search's first lines, study.json, the dashboard)."""
        def part(name: str, count: int, role: str) -> str:
            where = self.splits.get(name)
            return f"{name} {count} pairs" + (f" ({where})" if where else "") + role

        parts = [part("train", len(self.train_stems), ""),
                 part("val", len(self.val_stems), ", on which the search selects epochs and configurations")]
        if self.has_test:
            parts.append(part("test", len(self.test_stems), ", read once by the final stage"))
        else:
            parts.append("no test split: the final numbers are validation numbers, selected on the same data "
                         "(optimistic)")
        return "; ".join(parts)


def to_unit_range(array: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return array.astype(np.float32) / 127.5 - 1.0


def _decode_pairs(pairs: list[tuple[str, Path, Path]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The split's arrays: decoded once, then kept in the cache until one of its files changes (trainables.decoded)."""
    return decoded.cached(pairs, size, _decode_files)


def _decode_files(pairs: list[tuple[str, Path, Path]], size: int) -> tuple[np.ndarray, np.ndarray]:
    def one(pair: tuple[str, Path, Path]) -> tuple[np.ndarray, np.ndarray, str | None]:
        _, image_path, map_path = pair
        try:
            image, image_wh = decode_rgb(image_path, size)
            vms, map_wh = decode_rgb(map_path, size)
        except DataError as err:
            return None, None, str(err)
        image_aspect, map_aspect = image_wh[0] / image_wh[1], map_wh[0] / map_wh[1]
        if abs(image_aspect - map_aspect) > 0.05 * image_aspect:
            return None, None, (
                f"{map_path}: map is {map_wh[0]}x{map_wh[1]} but its image {image_path.name} is "
                f"{image_wh[0]}x{image_wh[1]}; their shapes differ, so the map cannot be aligned. "
                "Export the map at the image's size."
            )
        return image, vms, None

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, pairs))
    errors = [err for _, _, err in results if err]
    if errors:
        raise DataError(f"{len(errors)} files could not be used: " + " | ".join(errors[:MAX_LISTED])
                        + (f" | ... ({len(errors) - MAX_LISTED} more)" if len(errors) > MAX_LISTED else ""))
    images = np.stack([image for image, _, _ in results]) if results else np.zeros((0, 3, size, size), np.uint8)
    maps = np.stack([vms for _, vms, _ in results]) if results else np.zeros((0, 3, size, size), np.uint8)
    return images, maps


def check_data_folder(data_dir: str | Path, *, layout: bool = False) -> Path:
    """The folder, or a :class:`DataError` when it is missing or a file; with ``layout``, also when its layout is
    wrong (no images/ and maps/, unpaired files, split lists naming missing pairs): the search checks all that before
    Ray starts, from the listing alone (no file is decoded)."""
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass --data with the folder holding images/ and maps/.")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder; pass --data with the folder holding images/ and maps/.")
    if layout:
        skipped: dict[str, list[str]] = {"hidden or system file": [], "sub-folder": [], "not an image file (extension)": []}
        find_splits(root, skipped, [], {}, seed=0, val_fraction=0.2)
    return root


def load_dataset(data_dir: str | Path, *, size: int = DEFAULT_SIZE, seed: int = 0, val_fraction: float = 0.2) -> VMSDataset:
    """Read a dataset folder (see module docstring) into a :class:`VMSDataset`.

    Raises :class:`DataError` with a message naming each faulty file.
    """
    root = check_data_folder(data_dir)
    skipped: dict[str, list[str]] = {"hidden or system file": [], "sub-folder": [], "not an image file (extension)": []}
    notes: list[str] = []
    sources: dict[str, str] = {}

    train_pairs, val_pairs, test_pairs = find_splits(root, skipped, notes, sources, seed=seed, val_fraction=val_fraction)
    if not train_pairs or not val_pairs:
        raise DataError(f"{root}: the split leaves {len(train_pairs)} training and {len(val_pairs)} validation pairs; "
                        "both must be non-empty.")
    for reason, paths in skipped.items():
        if paths:
            notes.append(f"skipped {len(paths)} files ({reason}): {listing([Path(p).name for p in paths])}")

    train_images, train_maps = _decode_pairs(train_pairs, size)
    val_images, val_maps = _decode_pairs(val_pairs, size)
    test_images, test_maps = _decode_pairs(test_pairs, size) if test_pairs else (None, None)
    gray = sum(_gray_maps(maps) for maps in (train_maps, val_maps, test_maps) if maps is not None)
    if gray:
        total = sum(len(s) for s in (train_pairs, val_pairs, test_pairs))
        notes.append(f"{gray} of {total} maps are gray (one value in all three channels): each is read as remembered "
                     "(red) and falsely remembered (green) alike; a map of one kind of memory belongs in the red "
                     "channel, with green and blue black (docs/data.md)")
    return VMSDataset(
        train_images, train_maps, val_images, val_maps,
        [s for s, _, _ in train_pairs], [s for s, _, _ in val_pairs],
        source=str(root), size=size, notes=notes,
        test_images=test_images, test_maps=test_maps, test_stems=[s for s, _, _ in test_pairs],
        splits={k: v for k, v in sources.items() if k != "test" or test_pairs},
    )


def _gray_maps(maps: np.ndarray) -> int:
    """How many of the maps (N, 3, S, S) hold one value in all three channels, somewhere not black (a gray file read
    as RGB; an all-black map says nothing either way)."""
    same = (maps[:, 0] == maps[:, 1]).all(axis=(1, 2)) & (maps[:, 1] == maps[:, 2]).all(axis=(1, 2))
    return int((same & maps.any(axis=(1, 2, 3))).sum())


DEFAULT_VAL_SHARE = 0.2  # of the training pairs, held out for validation when a dataset has no test split


def resolve_data(data_dir: str | Path | None, *, size: int = DEFAULT_SIZE, seed: int = 0,
                 val_share: float | None = DEFAULT_VAL_SHARE) -> VMSDataset:
    """The dataset at ``data_dir`` (a folder, or a bucket's URI), or the embedded synthetic default when it is None,
    with a test split held out where it has none (:meth:`VMSDataset.hold_out`; ``val_share`` None or 0: as it is)."""
    if data_dir is None:
        folder = ensure_synthetic(SyntheticSpec(size=size) if size != 64 else SyntheticSpec())
        dataset = load_dataset(folder, size=size, seed=seed)
    else:
        from trainables.storage import is_uri
        from trainables.opening import fetch_folder

        if is_uri(data_dir):  # copied once into the driver's cache; trials get the arrays through Ray's object store
            dataset = load_dataset(fetch_folder(str(data_dir), cache_root() / "remote", what="--data"), size=size,
                                   seed=seed)
            dataset.source = str(data_dir)
        else:
            dataset = load_dataset(data_dir, size=size, seed=seed)
    return dataset.hold_out(val_share, seed)



def describe(dataset: VMSDataset) -> str:
    """A short human-readable summary: counts, split, sparsity and both baselines."""
    base = dataset.baselines()
    val = to_unit_range(dataset.val_maps)
    black_share = float(((val + 1.0).reshape(len(val), -1).max(axis=1) < 0.05).mean()) if len(val) else 0.0
    lines = [
        f"dataset:        {dataset.source}",
        f"pairs:          {len(dataset.train_stems)} train + {len(dataset.val_stems)} val + {len(dataset.test_stems)} test "
        f"at {dataset.size}x{dataset.size}",
        f"splits:         {dataset.roles()}",
        f"all-black maps: {black_share:.0%} of validation maps",
        f"baseline val L1, all-black map:     {base['black_l1']:.4f}",
        f"baseline val L1, mean training map: {base['mean_map_l1']:.4f}",
        "per channel (remembered / falsely remembered): all-black "
        f"{base['black_l1_remembered']:.4f} / {base['black_l1_falsely_remembered']:.4f}, mean map "
        f"{base['mean_map_l1_remembered']:.4f} / {base['mean_map_l1_falsely_remembered']:.4f}",
        f"fingerprint:    {dataset.fingerprint}",
    ]
    lines += [f"note: {note}" for note in dataset.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainables.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_describe = sub.add_parser("describe", help="counts, split and the two baseline L1s of a dataset")
    p_describe.add_argument("--data", default=None, help="dataset folder (default: the embedded synthetic set)")
    p_describe.add_argument("--size", type=int, default=64, help="working resolution (default 64)")
    p_describe.add_argument("--seed", type=int, default=0, help="seed of the 80/20 split when no lists exist")
    p_describe.add_argument("--val-share", type=float, default=DEFAULT_VAL_SHARE,
                            help="without a test split: the share of the training pairs the search validates on "
                                 "(the val split becomes the test split; 0: keep the val split, no test split)")
    p_gen = sub.add_parser("generate", help="write a synthetic dataset to a folder")
    p_gen.add_argument("out", help="folder to create (must not exist)")
    p_gen.add_argument("--train", type=int, default=1280)
    p_gen.add_argument("--val", type=int, default=320)
    p_gen.add_argument("--test", type=int, default=320)
    p_gen.add_argument("--size", type=int, default=64)
    p_gen.add_argument("--seed", type=int, default=0)
    p_gen.add_argument("--maps", choices=MAP_KINDS, default="scene",
                       help="scene: maps follow a hidden rule on the objects (the default set); independent: random "
                            "blocks unrelated to the images, data no model can learn")
    p_gen.add_argument("--lit-share", type=float, default=0.2, help="with --maps independent: share of lit blocks")
    args = parser.parse_args(argv)
    try:
        if args.command == "describe":
            print(describe(resolve_data(args.data, size=args.size, seed=args.seed, val_share=args.val_share)))
        else:
            out = Path(args.out)
            if out.exists():
                raise DataError(f"{out} already exists; choose a new folder.")
            try:
                spec = SyntheticSpec(n_train=args.train, n_val=args.val, size=args.size, seed=args.seed, n_test=args.test,
                                     maps=args.maps, lit_share=args.lit_share)
            except ValueError as err:
                raise DataError(str(err)) from None
            generate(out, spec)
            print(f"wrote {args.train} train + {args.val} val + {args.test} test pairs to {out}")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

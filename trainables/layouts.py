"""Where a dataset folder's image/map pairs and its splits are: the two layouts of :mod:`trainables.data`.

``DIR/images`` + ``DIR/maps`` (split by ``DIR/splits/*.txt``, else a seeded 80/20 split), or
``DIR/train``, ``DIR/val`` and an optional ``DIR/test``, each with both folders. Pairs match by file
stem; what is skipped (hidden and system files, sub-folders, other extensions) is counted in
``skipped`` and every problem is one :class:`DataError` naming the files.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from trainables.images import IMAGE_EXTENSIONS, SYSTEM_FILES, DataError

IMAGE_DIR_NAMES = ("images", "imgs")
MAP_DIR_NAMES = ("maps", "vms", "labels")
MAX_LISTED = 8

Pair = tuple[str, Path, Path]  # (stem, image file, map file)


def find_splits(root: Path, skipped: dict[str, list[str]], notes: list[str], sources: dict[str, str], *, seed: int,
                val_fraction: float) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(train, val, test) pairs of the dataset folder ``root``, in whichever of the two layouts it has;
    ``sources`` gets where each split came from (``{"train": "splits/train.txt", ...}``), for the first lines."""
    image_dir, map_dir = _find_dir(root, IMAGE_DIR_NAMES), _find_dir(root, MAP_DIR_NAMES)
    train_root, val_root = root / "train", root / "val"
    if image_dir and map_dir:
        return _one_folder_splits(root, image_dir, map_dir, skipped, notes, sources, seed=seed,
                                  val_fraction=val_fraction)
    if train_root.is_dir() and val_root.is_dir():
        return _split_folders(root, train_root, val_root, skipped, notes, sources)
    raise DataError(
        f"{root} has no images/ and maps/ folders (nor train/ and val/ folders holding them). "
        "Expected DIR/images/<stem>.<ext> beside DIR/maps/<stem>.<ext>."
    )


def _find_dir(parent: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (parent / name).is_dir():
            return parent / name
    return None


def _scan(folder: Path, skipped: dict[str, list[str]]) -> dict[str, Path]:
    """Map stem -> file for the image files in ``folder``; note what is skipped and why."""
    by_stem: dict[str, Path] = {}
    duplicates: list[str] = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith(".") or name.lower() in SYSTEM_FILES:
            skipped["hidden or system file"].append(str(path))
            continue
        if path.is_dir():
            skipped["sub-folder"].append(str(path))
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped["not an image file (extension)"].append(str(path))
            continue
        if path.stem in by_stem:
            duplicates.append(f"{by_stem[path.stem].name} and {name}")
        by_stem[path.stem] = path
    if duplicates:
        raise DataError(
            f"{folder}: {len(duplicates)} stems have more than one file ({listing(duplicates)}); "
            "keep one file per stem."
        )
    return by_stem


def listing(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def _pairs(image_dir: Path, map_dir: Path, skipped: dict[str, list[str]]) -> list[tuple[str, Path, Path]]:
    images = _scan(image_dir, skipped)
    maps = _scan(map_dir, skipped)
    problems = []
    lonely_images = sorted(set(images) - set(maps))
    lonely_maps = sorted(set(maps) - set(images))
    if lonely_images:
        problems.append(
            f"{len(lonely_images)} images in {image_dir} have no map in {map_dir}: "
            f"{listing([images[s].name for s in lonely_images])}"
        )
    if lonely_maps:
        problems.append(
            f"{len(lonely_maps)} maps in {map_dir} have no image in {image_dir}: "
            f"{listing([maps[s].name for s in lonely_maps])}"
        )
    if problems:
        passed_over = [path for path in skipped["not an image file (extension)"]
                       if Path(path).parent in (image_dir, map_dir)]
        if passed_over:  # the pairs may be there in a format this reader does not take
            problems.append(f"{len(passed_over)} files were passed over as not images by their extension: "
                            f"{listing([Path(path).name for path in passed_over])} (read: "
                            f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
        raise DataError("; ".join(problems) + ". Add the missing files or move the unpaired ones out.")
    return [(stem, images[stem], maps[stem]) for stem in sorted(images)]


def _read_list(path: Path) -> list[str]:
    """A split list's stems, one per line (blank lines and ``#`` comments skipped, an image extension or folder
    dropped); a list that is empty, not UTF-8 text, or names a stem twice is a :class:`DataError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8, one stem "
                        "per line.") from None
    stems = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            stems.append(Path(line).stem if Path(line).suffix.lower() in IMAGE_EXTENSIONS else line)
    if not stems:
        raise DataError(f"{path}: lists no pair; put one stem per line (an image's file name without its extension)"
                        + (", or delete the file to have no test split." if path.name == "test.txt" else "."))
    repeated = sorted(stem for stem, count in collections.Counter(stems).items() if count > 1)
    if repeated:
        raise DataError(f"{path}: {len(repeated)} stems are listed more than once: {listing(repeated)}. List each "
                        "pair once (a repeated pair is trained on, or measured, twice).")
    return stems


def _one_folder_splits(root: Path, image_dir: Path, map_dir: Path, skipped: dict[str, list[str]], notes: list[str],
                       sources: dict[str, str], *, seed: int, val_fraction: float) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """The first layout (DIR/images + DIR/maps): (train, val, test) pairs from splits/*.txt, else a seeded split."""
    pairs = _pairs(image_dir, map_dir, skipped)
    if not pairs:
        raise DataError(f"{root}: no image/map pairs found in {image_dir} and {map_dir}.")
    by_stem = {stem: (stem, i, m) for stem, i, m in pairs}
    train_list, val_list = root / "splits" / "train.txt", root / "splits" / "val.txt"
    test_list = root / "splits" / "test.txt"
    if test_list.exists() and not (train_list.exists() and val_list.exists()):
        raise DataError(f"{root / 'splits'}: test.txt needs train.txt and val.txt beside it (the split must be explicit).")
    if train_list.exists() or val_list.exists():
        sources.update(train="splits/train.txt", val="splits/val.txt", test="splits/test.txt")
        return _listed_splits(root, by_stem, train_list, val_list, test_list, notes)
    elsewhere = _lists_elsewhere(root)
    if elsewhere:  # a split the user meant would be replaced by a random one, and the "official val" with it
        raise DataError(f"{root}: found {listing(elsewhere)}, but split lists are read from splits/train.txt, "
                        "splits/val.txt and (optional) splits/test.txt, one stem per line. Move or rename them there, "
                        "or move them out of the folder to have the pairs split at random (seeded).")
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, int(round(len(pairs) * val_fraction)))
    val_pairs = [pairs[i] for i in sorted(order[:n_val])]
    train_pairs = [pairs[i] for i in sorted(order[n_val:])]
    test_pairs: list[Pair] = []
    share = round(val_fraction * 100)
    notes.append(f"split: seeded {100 - share}/{share} split (seed {seed}), no split lists; "
                 "add splits/train.txt, val.txt and test.txt to fix it")
    sources.update(train=f"a seeded {100 - share}% of {image_dir.name}/ (seed {seed})",
                   val=f"the other {share}% of {image_dir.name}/")
    return train_pairs, val_pairs, test_pairs


SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing", "trainval"}


def _lists_elsewhere(root: Path) -> list[str]:
    """Files that look like split lists where none is read: DIR/train.txt, splits/validation.txt, splits/train.csv."""
    return [str(path.relative_to(root)) for folder in (root, root / "splits") if folder.is_dir()
            for path in sorted(folder.iterdir())
            if path.is_file() and path.stem.lower() in SPLIT_NAMES and path.suffix.lower() in (".txt", ".csv", ".lst")]


def _listed_splits(root: Path, by_stem: dict[str, Pair], train_list: Path, val_list: Path, test_list: Path,
                   notes: list[str]) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(train, val, test) pairs as splits/train.txt, val.txt and (optional) test.txt list them."""
    if not (train_list.exists() and val_list.exists()):
        raise DataError(f"{root / 'splits'}: found only one of train.txt and val.txt; provide both or neither.")
    train_stems, val_stems = _read_list(train_list), _read_list(val_list)
    test_stems = _read_list(test_list) if test_list.exists() else []
    for listed, stems in ((train_list, train_stems), (val_list, val_stems), (test_list, test_stems)):
        unknown = [s for s in stems if s not in by_stem]
        if unknown:
            raise DataError(f"{listed}: {len(unknown)} listed stems have no image/map pair: {listing(unknown)}. "
                            "Fix the list or add the files.")
    for (a, sa), (b, sb) in [(("train.txt", train_stems), ("val.txt", val_stems)),
                             (("train.txt", train_stems), ("test.txt", test_stems)),
                             (("val.txt", val_stems), ("test.txt", test_stems))]:
        both = sorted(set(sa) & set(sb))
        if both:
            raise DataError(f"{root / 'splits'}: {len(both)} stems are in both {a} and {b}: {listing(both)}.")
    unlisted = sorted(set(by_stem) - set(train_stems) - set(val_stems) - set(test_stems))
    if unlisted:
        notes.append(f"{len(unlisted)} pairs are in no split list and were left out: {listing(unlisted)}")
    train_pairs = [by_stem[s] for s in train_stems]
    val_pairs = [by_stem[s] for s in val_stems]
    test_pairs = [by_stem[s] for s in test_stems]
    notes.append("split: from splits/train.txt, val.txt" + (" and test.txt" if test_pairs else " (no test.txt: no test split)"))
    return train_pairs, val_pairs, test_pairs


def _split_folders(root: Path, train_root: Path, val_root: Path, skipped: dict[str, list[str]],
                   notes: list[str], sources: dict[str, str]) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """The second layout (DIR/train, DIR/val, optional DIR/test, each with images/ and maps/): their pairs."""
    found = []
    for split_root in (train_root, val_root):
        i_dir, m_dir = _find_dir(split_root, IMAGE_DIR_NAMES), _find_dir(split_root, MAP_DIR_NAMES)
        if not (i_dir and m_dir):
            raise DataError(f"{split_root} needs images/ and maps/ sub-folders.")
        found.append(_pairs(i_dir, m_dir, skipped))
    train_pairs, val_pairs = found
    test_pairs = []
    test_root = root / "test"
    if test_root.is_dir():
        i_dir, m_dir = _find_dir(test_root, IMAGE_DIR_NAMES), _find_dir(test_root, MAP_DIR_NAMES)
        if not (i_dir and m_dir):
            raise DataError(f"{test_root} needs images/ and maps/ sub-folders (or remove it: the test split is optional).")
        test_pairs = _pairs(i_dir, m_dir, skipped)
    notes.append("split: from train/ and val/ folders" + (" and test/" if test_pairs else " (no test/ folder: no test split)"))
    sources.update(train="train/", val="val/", test="test/")
    return train_pairs, val_pairs, test_pairs

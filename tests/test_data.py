"""The synthetic generator, the real-data loader (with every bad input) and the baselines."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import assert_clean_error, run_cli
from trainables.data import DataError, load_dataset, to_unit_range
from trainables.synthetic import SceneObject, SyntheticSpec, generate, render_scene


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_generator_is_deterministic(tmp_path):
    spec = SyntheticSpec(n_train=6, n_val=2, seed=11, n_test=2)
    a, b = generate(tmp_path / "a", spec), generate(tmp_path / "b", spec)
    c = generate(tmp_path / "c", SyntheticSpec(n_train=6, n_val=2, seed=12, n_test=2))
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_label_rule_depends_on_content_not_position():
    background = np.full((64, 64, 3), 110.0, dtype=np.float32)
    red = SceneObject("circle", "red", "solid", radius=14, cy=32, cx=32)
    green = SceneObject("circle", "green", "solid", radius=14, cy=32, cx=32)
    blue_triangle = SceneObject("triangle", "blue", "solid", radius=14, cy=32, cx=32)
    _, map_red = render_scene([red], background)
    _, map_green = render_scene([green], background)
    _, map_false = render_scene([blue_triangle], background)
    assert map_red[..., 0].max() > 100 and map_red[..., 1].max() == 0  # remembered
    assert map_green.max() == 0  # same place, other colour: nothing
    assert map_false[..., 1].max() > 100 and map_false[..., 0].max() == 0  # falsely remembered
    # Blocky: the map is constant on each 8x8 cell.
    cells = map_red[..., 0].reshape(8, 8, 8, 8)
    assert (cells == cells[:, :1, :, :1]).all()


def test_loader_reads_the_synthetic_folder(tiny_data_dir):
    data = load_dataset(tiny_data_dir)
    assert data.train_images.shape == (48, 3, 64, 64) and data.val_maps.shape == (16, 3, 64, 64)
    assert data.train_images.dtype == np.uint8
    maps = to_unit_range(data.val_maps)
    assert maps.min() >= -1 and maps.max() <= 1
    base = data.baselines()
    assert 0 < base["black_l1"] < 1 and 0 < base["mean_map_l1"] < 1
    assert any("splits/train.txt" in note for note in data.notes)


def test_default_dataset_is_mostly_black_and_blocky(tmp_path):
    folder = generate(tmp_path / "d", SyntheticSpec(n_train=150, n_val=50, seed=0, n_test=0))
    data = load_dataset(folder)
    val = to_unit_range(data.val_maps) + 1
    black_share = (val.reshape(len(val), -1).max(axis=1) < 0.05).mean()
    assert 0.15 < black_share < 0.6
    assert data.baselines()["black_l1"] < data.baselines()["mean_map_l1"]


def test_independent_maps_share_the_images_but_not_their_rule(tmp_path):
    """--maps independent: the same images as the default set, maps of random blocks unrelated to them."""
    scene = load_dataset(generate(tmp_path / "s", SyntheticSpec(n_train=120, n_val=40, seed=2, n_test=0, size=32)), size=32)
    folder = generate(tmp_path / "i", SyntheticSpec(n_train=120, n_val=40, seed=2, n_test=0, size=32,
                                                     maps="independent", lit_share=0.2))
    independent = load_dataset(folder, size=32)
    assert np.array_equal(independent.train_images, scene.train_images)
    maps = to_unit_range(np.concatenate([independent.train_maps, independent.val_maps])) + 1
    lit = maps.max(axis=1) > 0.05
    assert 0.15 < lit.mean() < 0.25 and maps[:, 2].max() == 0  # a fifth lit; blue stays black
    blocks = lit.reshape(len(lit), 8, 4, 8, 4)
    assert (blocks == blocks[:, :, :1, :, :1]).all()  # blocky, on the scene maps' grid
    scene_lit = (to_unit_range(scene.train_maps) + 1).max(axis=1) > 0.05
    overlap = (lit[:120] & scene_lit).mean()
    assert abs(overlap - lit[:120].mean() * scene_lit.mean()) < 0.02  # as often together as chance makes them
    assert independent.baselines()["black_l1"] < independent.baselines()["mean_map_l1"]
    with pytest.raises(ValueError, match="maps must be one of"):
        SyntheticSpec(maps="shuffled")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_seeded_split_without_lists_and_formats(tiny_data_dir, tmp_path):
    root = _copy(tiny_data_dir, tmp_path / "d")
    shutil.rmtree(root / "splits")
    # Other formats a real copy comes in: JPEG with an upper-case extension, grayscale,
    # 16-bit and alpha PNGs, and a larger size that must be resized.
    stem = "syn_00000"
    Image.open(root / "images" / f"{stem}.png").convert("RGB").resize((200, 200)).save(root / "images" / f"{stem}.JPG")
    (root / "images" / f"{stem}.png").unlink()
    Image.open(root / "maps" / "syn_00001.png").convert("L").save(root / "maps" / "syn_00001.png")
    lit = next(p.stem for p in sorted((root / "maps").glob("*.png"))
               if p.stem > "syn_00001" and np.asarray(Image.open(p)).max() > 0)
    arr16 = (np.asarray(Image.open(root / "maps" / f"{lit}.png").convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(arr16).save(root / "maps" / f"{lit}.png")
    Image.open(root / "images" / "syn_00003.png").convert("RGBA").save(root / "images" / "syn_00003.png")
    (root / "images" / ".DS_Store").write_bytes(b"\0junk")
    (root / "maps" / "Thumbs.db").write_bytes(b"junk")
    a = load_dataset(root, seed=5)
    b = load_dataset(root, seed=5)
    assert len(a.train_stems) + len(a.val_stems) == 80 and len(a.val_stems) == 16 and not a.has_test  # 48 + 16 + 16 pairs
    assert a.val_stems == b.val_stems and a.fingerprint == b.fingerprint
    assert any("skipped 2 files (hidden or system file)" in n for n in a.notes)
    assert any("seeded 80/20" in n for n in a.notes)
    gray = 1 + int(np.asarray(Image.open(root / "maps" / "syn_00001.png")).max() > 0)  # the 16-bit map, and this one
    assert any(n.startswith(f"{gray} of 80 maps are gray (one value in all three channels)") for n in a.notes), a.notes
    # 16-bit map decoded to the same 8-bit content as the original
    all_stems = a.train_stems + a.val_stems
    maps = np.concatenate([a.train_maps, a.val_maps])
    grey = maps[all_stems.index(lit)]
    assert grey.max() > 0 and (grey[0] == grey[1]).all()


def test_train_val_subfolder_layout(tiny_data_dir, tmp_path):
    root = tmp_path / "v"
    for split, lst in (("train", "train.txt"), ("val", "val.txt")):
        for kind in ("images", "maps"):
            (root / split / kind).mkdir(parents=True)
        for stem in (tiny_data_dir / "splits" / lst).read_text().split():
            shutil.copy(tiny_data_dir / "images" / f"{stem}.png", root / split / "images")
            shutil.copy(tiny_data_dir / "maps" / f"{stem}.png", root / split / "maps")
    data = load_dataset(root)
    assert len(data.train_stems) == 48 and len(data.val_stems) == 16


@pytest.mark.parametrize("fault, needle", [
    ("missing", "does not exist"),
    ("empty", "has no images/ and maps/ folders"),
    ("image_without_map", "have no map"),
    ("map_without_image", "have no image"),
    ("corrupt", "cannot be decoded"),
    ("truncated", "cannot be decoded"),
    ("other_shape", "shapes differ"),
    ("text_as_image", "cannot be decoded"),
    ("bad_split", "val.txt: 1 listed stems have no image/map pair"),
    ("repeated_stem", "train.txt: 1 stems are listed more than once: syn_00004"),
    ("empty_list", "val.txt: lists no pair"),
    ("not_utf8", "train.txt: not UTF-8 text"),
    ("broken_link", "syn_00004.png: cannot be read"),
    ("gif_map", "passed over as not images by their extension: syn_00004.gif"),
    ("lists_elsewhere", "found splits/train.csv, splits/validation.txt, but split lists are read from"),
])
def test_bad_input_is_refused_with_a_clear_message(tiny_data_dir, tmp_path, fault, needle):
    root = tmp_path / "bad"
    if fault == "missing":
        root = tmp_path / "nowhere"
    elif fault == "empty":
        root.mkdir()
    else:
        _copy(tiny_data_dir, root)
        image, vms = root / "images" / "syn_00004.png", root / "maps" / "syn_00004.png"
        if fault == "image_without_map":
            vms.unlink()
        elif fault == "map_without_image":
            image.unlink()
        elif fault == "corrupt":
            image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
        elif fault == "truncated":
            image.write_bytes(image.read_bytes()[:200])
        elif fault == "other_shape":
            Image.open(vms).resize((64, 32)).save(vms)
        elif fault == "text_as_image":
            image.write_text("not an image")
        elif fault == "bad_split":
            (root / "splits" / "val.txt").write_text("syn_99999\n")
        elif fault == "repeated_stem":  # listed twice: trained on twice, or split across train and validation
            listed = root / "splits" / "train.txt"
            listed.write_text(listed.read_text().replace("syn_00004\n", "syn_00004\nsyn_00004\n"))
            assert listed.read_text().count("syn_00004") == 2
        elif fault == "empty_list":
            (root / "splits" / "val.txt").write_text("# nothing yet\n\n")
        elif fault == "not_utf8":  # Windows Notepad's "Unicode"
            listed = root / "splits" / "train.txt"
            listed.write_bytes(listed.read_text().encode("utf-16"))
        elif fault == "broken_link":
            image.unlink()
            image.symlink_to(tmp_path / "moved-away.png")
        elif fault == "lists_elsewhere":  # not the names read: the pairs would be split at random instead
            (root / "splits" / "train.txt").rename(root / "splits" / "train.csv")
            (root / "splits" / "val.txt").rename(root / "splits" / "validation.txt")
            (root / "splits" / "test.txt").unlink()
        elif fault == "gif_map":
            Image.open(vms).save(vms.with_suffix(".gif"))
            vms.unlink()
    with pytest.raises(DataError, match=needle):
        load_dataset(root)
    result = run_cli("trainables.data", "describe", "--data", str(root), timeout=60)
    assert_clean_error(result, needle)


def test_files_decode_as_a_viewer_shows_them(tmp_path):
    """A camera's EXIF rotation is applied (a map is drawn on the photo as shown); a faint 16-bit map stays faint
    whatever its brightest pixel; a float map in [0, 1] is not read as black."""
    from trainables.images import open_rgb

    pixels = np.zeros((2, 4, 3), np.uint8)
    pixels[0, 0] = 255
    photo = Image.fromarray(pixels)
    exif = photo.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to show
    photo.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    assert Image.open(tmp_path / "rotated.jpg").size == (4, 2) and open_rgb(tmp_path / "rotated.jpg").size == (2, 4)
    faint = np.zeros((4, 4), np.uint16)
    faint[0, 0] = 200  # of 65535: black at 8 bits
    Image.fromarray(faint).save(tmp_path / "faint.png")
    faint[1, 1] = 65535
    Image.fromarray(faint).save(tmp_path / "faint_with_a_peak.png")
    for name in ("faint.png", "faint_with_a_peak.png"):
        assert np.asarray(open_rgb(tmp_path / name))[0, 0].tolist() == [1, 1, 1], name
    unit = np.zeros((4, 4), np.float32)
    unit[0, 0] = 0.5
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    assert np.asarray(open_rgb(tmp_path / "unit.tif"))[0, 0].tolist() == [128, 128, 128]


def test_describe_prints_counts_and_both_baselines(tiny_data_dir):
    result = run_cli("trainables.data", "describe", "--data", str(tiny_data_dir), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "48 train + 16 val" in result.stdout
    assert "all-black map" in result.stdout and "mean training map" in result.stdout


def test_a_test_split_from_lists_or_folders_and_never_overlapping(tiny_data_dir, tmp_path):
    data = load_dataset(tiny_data_dir)
    assert data.has_test and len(data.test_stems) == 16 and not set(data.test_stems) & set(data.val_stems + data.train_stems)
    assert data.baselines("test")["black_l1"] > 0 and data.subset(8, 4).test_images.shape[0] == 4
    # A test stem also listed for training is refused, naming the lists.
    root = _copy(tiny_data_dir, tmp_path / "overlap")
    test_list = root / "splits" / "test.txt"
    test_list.write_text(test_list.read_text() + "syn_00000\n")
    with pytest.raises(DataError, match="both train.txt and test.txt"):
        load_dataset(root)
    # train/ val/ test/ folders.
    folders = tmp_path / "folders"
    for split, stems in (("train", data.train_stems[:6]), ("val", data.val_stems[:2]), ("test", data.test_stems[:3])):
        for kind in ("images", "maps"):
            (folders / split / kind).mkdir(parents=True)
            for stem in stems:
                shutil.copy(tiny_data_dir / kind / f"{stem}.png", folders / split / kind / f"{stem}.png")
    loaded = load_dataset(folders)
    assert loaded.test_stems == sorted(data.test_stems[:3]) and "and test/" in loaded.notes[-1]


def test_decoded_splits_are_kept_until_a_file_changes(tiny_data_dir, tmp_path, monkeypatch):
    """A second load of the same files reads the kept arrays; a changed, added or removed file is decoded afresh;
    a split that fails to decode is never kept."""
    from trainables import decoded
    from trainables.data import _decode_files
    from trainables.layouts import find_splits

    monkeypatch.setenv("MEMSEARCH_CACHE", str(tmp_path / "cache"))
    folder = _copy(tiny_data_dir, tmp_path / "d")
    calls: list[int] = []

    def counting(pairs, size):
        calls.append(len(pairs))
        return _decode_files(pairs, size)

    def split():
        train, _, _ = find_splits(folder, {"hidden or system file": [], "sub-folder": [],
                                           "not an image file (extension)": []}, [], {}, seed=0, val_fraction=0.2)
        return train

    first = decoded.cached(split(), 64, counting)
    again = decoded.cached(split(), 64, counting)
    assert calls == [48] and all(np.array_equal(a, b) for a, b in zip(first, again))
    assert load_dataset(folder).train_images.tobytes() == first[0].tobytes()  # the loader goes through it

    stem = split()[0][0]
    Image.new("RGB", (64, 64), (255, 255, 255)).save(folder / "maps" / f"{stem}.png")
    changed = decoded.cached(split(), 64, counting)
    assert calls == [48, 48] and changed[1][0].min() == 255 and not np.array_equal(changed[1], first[1])

    (folder / "images" / f"{stem}.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot be decoded"):
        decoded.cached(split(), 64, counting)
    with pytest.raises(DataError, match="cannot be decoded"):  # not kept: refused again, not read from the cache
        load_dataset(folder)
    assert len(list((tmp_path / "cache" / "decoded").glob("*.npz"))) == 2 + 2  # both kept versions, val and test


def test_decoded_cache_keeps_the_most_recently_used(tmp_path, monkeypatch):
    from trainables import decoded

    monkeypatch.setenv("MEMSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(decoded, "KEEP", 2)
    files = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), (i, i, i)).save(path)
        files.append([(str(i), path, path)])

    def decode(pairs, size):
        return np.full((1, 3, size, size), int(pairs[0][0]), np.uint8), np.zeros((1, 3, size, size), np.uint8)

    for pairs in files:
        decoded.cached(pairs, 4, decode)
    kept = {p.stem for p in (tmp_path / "cache" / "decoded").glob("*.npz")}
    assert kept == {decoded.key(files[1], 4), decoded.key(files[2], 4)}
    assert not list((tmp_path / "cache" / "decoded").glob("*.tmp"))

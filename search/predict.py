"""Memorability maps for your own images, from a finished study (or one checkpoint).

    python -m search.predict runs/greedy-gan photos/ --out maps/
    python -m search.predict runs/greedy-gan/trials/<id>/best.pt a.jpg b.png --out maps/

Given a study folder it uses the study's best trial (the lowest best val L1 of the search, as
``summary.json`` names it; read from ``trials.parquet``, so a search that runs or was stopped
gives its best so far, and says so), given a ``best.pt`` or ``latest.pt`` that checkpoint (its family is read
from the study folder it sits in, or ``--model``). Inputs are image files or folders of
them (not recursive), of any size and of the formats the dataset loader reads. For each
image ``<stem>`` it writes into ``--out``:

* ``<stem>_map.png``: the predicted map at the image's own size (red: remembered, green:
  falsely remembered, as in the training maps);
* ``<stem>_overlay.png``: the map laid over the photo (the brighter the map, the more it shows);

and one ``scores.csv`` with a row per input: the image-level memorability score the map
implies (the mean of its "remembered" channel in [0, 1], the score the search's Spearman's
rho uses), the mean of the "falsely remembered" channel, the image's size, and an error
for an image that could not be read. A bad image gets the loader's message and the rest
are still written; the command then exits 1. Runs on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from search.runner.baseline import recommended, study_verdict
from trainables.storage import Location
from trainables.opening import open_location
from search.store.results import ResultsStore, best_trial
from search.store.study import StudyStore
from trainables.checkpoints import family_from_state, load_family, load_state
from trainables.errors import InputError
from trainables.data import DEFAULT_SIZE
from trainables.evaluation import EVAL_BATCH, as_float
from trainables.images import IMAGE_EXTENSIONS, SYSTEM_FILES, DataError, open_rgb, resized_array

OVERLAY_ALPHA = 0.65  # how much of the map shows where it is brightest


def resolve_checkpoint(source: str | Path, model: str | None) -> tuple[Location, str, int | None]:
    """(checkpoint, family, working size: its study's, None outside one) for a study folder or a checkpoint file,
    local or in a bucket."""
    where = open_location(source, what="the study")
    if where.is_dir():
        study = StudyStore(where.parent, where.name)
        checkpoint = _best_checkpoint(study, source)
    elif where.is_file():
        checkpoint = where
        study_root = where.parent.parent.parent  # <study>/trials/<key>/best.pt
        study = StudyStore(study_root.parent, study_root.name) if where.parent.parent.name == "trials" else None
    else:
        raise DataError(f"{source} does not exist; give a study folder (runs/<study>) or a checkpoint (best.pt)")
    record = study.read_record() if study is not None else None
    family = model or (record["family"] if record else None)
    if family is None:
        raise DataError(f"{checkpoint} is not inside a study folder; say which family it is with --model")
    val = study.read_val_data() if record else None
    return checkpoint, family, int(val["images"].shape[-1]) if val is not None else None


def _trained_size(state: dict, checkpoint: Location) -> int:
    """The side of the images a checkpoint outside its study folder was trained at (recorded in it), or 64, said,
    for a checkpoint from before that was recorded."""
    if state.get("image_size"):
        return int(state["image_size"])
    print(f"note: {checkpoint} does not record the image size it was trained at (it predates that), nor does a "
          f"study folder around it; photos are resized to {DEFAULT_SIZE} px, the default --size", flush=True)
    return DEFAULT_SIZE


def _best_checkpoint(study: StudyStore, source: str | Path) -> Location:
    """The best.pt of a study's best trial so far (what summary.json names once its search ends), or a message saying
    why there is none."""
    if not study.record.exists():
        raise DataError(f"{source} is not a study folder (no study.json); give runs/<study> or a trial's best.pt")
    summary = study.read_summary() or {}
    trial, config, val_l1 = _best_so_far(study)
    if not trial:
        raise DataError(f"{study.root}: no trial finished with a val L1 yet, so there is no best model to use; "
                        "let its search run (or re-run its command), or give a trial's best.pt")
    if not summary.get("finished"):
        print(f"note: study {study.name}'s search has not ended (it runs, or was stopped): its best trial so far",
              flush=True)
    if study_verdict(summary) is False:
        print(f"warning: study {study.name}: no configuration beats the better of the all-black and mean maps on its "
              "data (summary.json, beats_baseline); these maps are no better than that trivial map "
              "(docs/data.md, 'When nothing beats the baseline')", file=sys.stderr)
    checkpoint = study.best_checkpoint(trial, config)
    if not checkpoint.is_file():
        raise DataError(f"{checkpoint} is missing (the study's best trial {trial} has no best.pt); "
                        "give another trial's best.pt")
    print(f"model: the search's best trial {trial}" + (f" (val L1 {val_l1:.4f})" if val_l1 is not None else "")
          + f", {checkpoint}", flush=True)
    chosen = recommended(summary.get("final"))
    if chosen and chosen["source_trial_id"] != trial:
        print(f"note: the final stage recommends the configuration of trial {chosen['source_trial_id']} (over its "
              "re-trained seeds: the dashboard's answer); give its best.pt, in its folder under "
              f"{study.root}/trials/, to predict with it", flush=True)
    return checkpoint


def _best_so_far(study: StudyStore) -> tuple[str | None, dict | None, float | None]:
    """The search's best trial as summary.json names it when the search ends (the lowest best val L1 of the trials
    that completed or were stopped), read from trials.parquet, which a running or stopped search keeps current:
    (trial id, its config, its val L1), or Nones."""
    table = study.read_table(ResultsStore.TRIALS)
    best = best_trial(table.to_pylist() if table is not None else [])
    if best is None:
        return None, None, None
    return best["trial_id"], json.loads(best["config_json"]), best["best_val_l1"]


def collect_images(inputs: list[Path]) -> tuple[list[Path], list[str]]:
    """The image files named or inside the folders named (sorted, not recursive); and problems found."""
    files, problems = [], []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not p.name.startswith(".") and p.name.lower() not in SYSTEM_FILES)
            if not found:
                problems.append(f"{item}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            problems.append(f"{item}: no such file or folder")
    return files, problems


def _output_stems(files: list[Path]) -> list[str]:
    """One output name per input, never one taken (``a.jpg`` and ``a.png`` give ``a`` and ``a-2``; ``A.jpg`` and
    ``a.png`` differ only in case, which a macOS or Windows disk does not tell apart, so they do too)."""
    taken: set[str] = set()
    stems = []
    for path in files:
        stem, count = path.stem, 1
        while stem.casefold() in taken:
            count += 1
            stem = f"{path.stem}-{count}"
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def _check_out(out: str, inputs: list[str]) -> None:
    """Refuse an --out that would not hold what is written, or would be read back as photos next time."""
    if "://" in out:
        raise DataError(f"--out {out}: maps are written to a local folder; give a path, and copy the folder to the "
                        "bucket afterwards")
    if any(Path(item).is_dir() and Path(item).resolve() == Path(out).resolve() for item in inputs):
        raise DataError(f"--out {out} is a folder of the photos: the next run would read its maps and overlays as "
                        "photos; give another folder")


def _device(device: str | None) -> torch.device:
    """The device maps are computed on: --device, else a CUDA GPU when there is one."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError:
        raise DataError(f"--device {device}: not a device; use cpu or cuda (cuda:1 for the second GPU)") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {device}: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                        "use --device cpu, or check the driver and CUDA_VISIBLE_DEVICES")
    return target


def _load(path: Path, size: int) -> tuple[np.ndarray | None, tuple[int, int] | None, str | None]:
    """The model's input (3, size, size) and the photo's own (width, height), or the loader's message. Decoded as the
    dataset loader decodes it; the photo at its own size is not kept (a batch of camera photos would hold gigabytes),
    but decoded again, the same way, when its overlay is written."""
    try:
        full = open_rgb(path)
    except DataError as err:
        return None, None, str(err)
    return resized_array(full, size), full.size, None


def write_outputs(photo: Image.Image, pred: np.ndarray, out_dir: Path, stem: str) -> None:
    """The map at the photo's size and the overlay, as PNG."""
    vms = Image.fromarray(pred.transpose(1, 2, 0)).resize(photo.size, Image.Resampling.BILINEAR)
    vms.save(out_dir / f"{stem}_map.png")
    heat = np.asarray(vms, dtype=np.float32)
    base = np.asarray(photo, dtype=np.float32)
    alpha = OVERLAY_ALPHA * heat.max(axis=2, keepdims=True) / 255.0
    overlay = base * (1 - alpha) + heat * alpha
    Image.fromarray(overlay.round().clip(0, 255).astype(np.uint8)).save(out_dir / f"{stem}_overlay.png")


def predict_images(source: str | Path, inputs: list[Path], out_dir: Path, *, model: str | None = None,
                   device: str | None = None, progress: bool = True) -> tuple[int, list[str]]:
    """Write maps, overlays and scores.csv for ``inputs``; returns (images written, error messages)."""
    checkpoint, family_name, size = resolve_checkpoint(source, model)
    files, problems = collect_images(inputs)
    if not files:
        raise DataError("no images to predict: " + "; ".join(problems or ["no inputs given"]))
    target = _device(device)
    state = load_state(checkpoint)
    family = family_from_state(state, family_name, target)
    size = size or _trained_size(state, checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = _output_stems(files)
    rows, errors, written = [], list(problems), 0
    bar = _progress(len(files), progress)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for start in range(0, len(files), EVAL_BATCH):
            chunk = list(zip(files[start : start + EVAL_BATCH], stems[start : start + EVAL_BATCH]))
            loaded = list(pool.map(lambda item: _load(item[0], size), chunk))
            good = [(path, stem, small, shape) for (path, stem), (small, shape, _) in zip(chunk, loaded)
                    if small is not None]
            for (path, stem), (_, _, err) in zip(chunk, loaded):
                if err:
                    errors.append(err)
                    rows.append({"file": str(path), "output": "", "width": "", "height": "", "memorability": "",
                                 "falsely_remembered": "", "error": err})
            if good:
                batch = torch.from_numpy(np.stack([g[2] for g in good])).to(target)
                with torch.no_grad(), family.precision.autocast():
                    image = as_float(batch)
                    out = family.map_photos(image)
                maps = ((out.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
                for (path, stem, _, (width, height)), pred in zip(good, maps):
                    write_outputs(open_rgb(path), pred, out_dir, stem)  # one photo at its own size at a time
                    rows.append({"file": str(path), "output": stem, "width": width, "height": height,
                                 "memorability": round(float(pred[0].mean()) / 255.0, 6),
                                 "falsely_remembered": round(float(pred[1].mean()) / 255.0, 6), "error": ""})
                    written += 1
            bar.update(len(chunk))
    bar.close()
    with open(out_dir / "scores.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "output", "width", "height", "memorability",
                                                    "falsely_remembered", "error"])
        writer.writeheader()
        writer.writerows(rows)
    return written, errors


def predict_from_checkpoint(checkpoint: str | Path, model: str, images: np.ndarray, *, device: str | None = None) -> np.ndarray:
    """uint8 maps (N, 3, S, S) predicted for uint8 images (N, 3, S, S) by the checkpointed model."""
    target = _device(device)
    family = load_family(checkpoint, model, target)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), EVAL_BATCH):
            batch = as_float(torch.from_numpy(np.ascontiguousarray(images[start : start + EVAL_BATCH])).to(target))
            pred = family.predict(batch).float().clamp(-1, 1)
            out.append(((pred + 1) * 127.5).round().to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    on_terminal = sys.stderr.isatty()  # a log file or a pipe gets no bar
    return tqdm(total=total, unit="image", disable=not enabled or total < 2 or not on_terminal, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a study folder (runs/<study>: its best trial) or a checkpoint (best.pt)")
    parser.add_argument("inputs", nargs="+", help="image files and folders of images")
    parser.add_argument("--out", required=True, help="folder for the maps, overlays and scores.csv")
    parser.add_argument("--model", default=None, help="the family, for a checkpoint outside a study folder")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        _check_out(args.out, args.inputs)
        written, errors = predict_images(args.source, [Path(p) for p in args.inputs], Path(args.out),
                                         model=args.model, device=args.device, progress=not args.quiet)
    except InputError as err:  # the data, the study, its location (a bucket's URI or credentials)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # writing the maps, or reading what was named
        where = Path(err.filename) if err.filename else Path(args.out)
        writing = Path(args.out).resolve() in (where.resolve(), *where.resolve().parents)
        print(f"error: {where}: {err.strerror or err}; "
              + ("give an --out folder you can write to" if writing else "check that it can be read"), file=sys.stderr)
        return 2
    except (ValueError, KeyError, RuntimeError) as err:
        print(f"error: {args.source}: cannot load the model ({str(err).splitlines()[0]}); "
              "is it a memsearch checkpoint of this family?", file=sys.stderr)
        return 2
    for err in errors:
        print(f"error: {err}", file=sys.stderr)
    print(f"wrote {written} maps and overlays to {args.out} (scores.csv)"
          + (f"; inputs that could not be used: {len(errors)} (listed above and in scores.csv)" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

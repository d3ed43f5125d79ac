"""Galleries of validation predictions (image | true map | predicted map) of each study's best trial:
the best, the worst and the most informative."""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np
from PIL import Image

from dashboards.study import Study, empty, finished

GALLERY_SIZE = 4


def _png(array_chw: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array_chw.transpose(1, 2, 0))).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def gallery_selection(per_image_l1: np.ndarray, truth: np.ndarray, k: int = GALLERY_SIZE) -> dict[str, list[int]]:
    """Indices of the best, worst and most informative predictions.

    "Best" are the lowest-L1 predictions among images whose true map is not all black: an
    all-black map predicted black says nothing about the model. "Most informative" (the
    report's favourites): among predictions better than the median, those whose true maps
    have the largest lit area; the all-black ones that win on L1 by painting black are what
    the report warned about, so they are not chosen here either.
    """
    order = np.argsort(per_image_l1, kind="stable")
    lit = (truth.astype(np.float32) > 25).mean(axis=(1, 2, 3))
    best = [int(i) for i in order if lit[i] > 0][:k]
    good = per_image_l1 <= np.median(per_image_l1)
    informative = [int(i) for i in np.argsort(-(lit * good), kind="stable") if good[i] and lit[i] > 0][:k]
    return {"best": best, "worst": [int(i) for i in order[::-1][:k]], "most informative": informative}


def section_galleries(studies: list[Study]) -> str:
    parts = []
    for study in studies:
        done = finished(study)
        val = study.store.read_val_data()
        if done.empty or val is None:
            continue
        best = done.iloc[0]
        pred = study.store.read_predictions(best["trial_id"], json.loads(best["config_json"]))
        if pred is None:
            continue
        images, truth, stems = val["images"], val["maps"], val["stems"]
        predictions, per_image = pred["predictions"], pred["per_image_l1"]
        chosen = gallery_selection(per_image, truth)
        rows = [f'<h3>{html.escape(study.label)}: best trial {html.escape(best["trial_id"])} '
                f'(val L1 {best["best_val_l1"]:.4f})</h3>']
        for kind, indices in chosen.items():
            cells = "".join(
                f'<figure><div class="triple"><img src="{_png(images[i])}" alt="image"><img src="{_png(truth[i])}" alt="true map">'
                f'<img src="{_png(predictions[i])}" alt="predicted map"></div>'
                f'<figcaption>{html.escape(str(stems[i]))}: L1 {per_image[i]:.4f}</figcaption></figure>'
                for i in indices)
            rows.append(f'<h4>{kind}</h4><div class="gallery" data-kind="{kind}">{cells or empty("none")}</div>')
        parts.append("\n".join(rows))
    return "\n".join(parts) or empty("No finished trial with stored predictions yet.")

"""A dataset without a test list (the way VISCHEMA ships): its val split becomes the test split, read once by
the final stage, and the search selects on a seeded share of its training pairs; a study made before that rule
resumes with the split it was made with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import assert_clean_error, run_cli
from trainables.data import load_dataset, resolve_data
from trainables.images import DataError

FINAL = ("--final-top-k", "1", "--final-seeds", "2")


@pytest.fixture(scope="module")
def vischema_layout(tiny_data_dir, tmp_path_factory) -> Path:
    """images/, maps/, splits/train.txt and val.txt, no test list: 48 train and 16 val pairs, and 2 pairs in no list."""
    root = tmp_path_factory.mktemp("vischema") / "VISCHEMA"
    shutil.copytree(tiny_data_dir, root)
    (root / "splits" / "test.txt").unlink()
    for stem in (tiny_data_dir / "splits" / "test.txt").read_text().split()[2:]:  # the first 2 are left in no list
        for kind in ("images", "maps"):
            (root / kind / f"{stem}.png").unlink()
    return root


def _search(runs: Path, data: Path, *args: str):
    return run_cli("search.run", "--strategy", "greedy", "--model", "autoencoder", "--preset", "smoke",
                   "--runs-dir", str(runs), "--data", str(data), *args, timeout=300)


def test_the_val_list_becomes_the_test_split_and_validation_is_carved_from_train(vischema_layout):
    data = resolve_data(vischema_layout, seed=0)
    listed = load_dataset(vischema_layout)
    assert not listed.has_test and data.has_test
    assert data.test_stems == listed.val_stems  # the official val list is the test split, whole
    assert len(data.val_stems) == round(48 * 0.2) and len(data.train_stems) == 48 - len(data.val_stems)
    assert not set(data.val_stems) & set(data.train_stems) and set(data.val_stems) < set(listed.train_stems)
    assert resolve_data(vischema_layout, seed=0).val_stems == data.val_stems  # seeded
    assert resolve_data(vischema_layout, seed=1).val_stems != data.val_stems
    assert "test 16 pairs (splits/val.txt), read once by the final stage" in data.roles()
    assert "a seeded 20% of splits/train.txt, seed 0" in data.roles()
    assert resolve_data(vischema_layout, val_share=0).val_stems == listed.val_stems  # 0: as it is, no test split
    with pytest.raises(DataError, match="both must be at least 1"):
        resolve_data(vischema_layout, val_share=0.001)


def test_images_and_maps_alone_get_a_seeded_three_way_split(tiny_data_dir, tmp_path):
    root = tmp_path / "plain"
    for kind in ("images", "maps"):
        shutil.copytree(tiny_data_dir / kind, root / kind)
    data = resolve_data(root, seed=4)
    stems = set(data.train_stems) | set(data.val_stems) | set(data.test_stems)
    assert len(stems) == 80 and len(data.test_stems) == 16 and len(data.val_stems) == 13
    assert "test 16 pairs (the other 20% of images/)" in data.roles()
    described = run_cli("trainables.data", "describe", "--data", str(root), "--seed", "4", timeout=60)
    assert described.returncode == 0, described.stderr
    assert "51 train + 13 val + 16 test" in described.stdout and "read once by the final stage" in described.stdout


def test_a_search_on_train_and_val_lists_reports_test_numbers(vischema_layout, tmp_path):
    result = _search(tmp_path, vischema_layout, "--study", "vis", *FINAL)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    first = [line for line in out.splitlines() if line.startswith("data: ")]
    assert first and "val 10 pairs (a seeded 20% of splits/train.txt, seed 0), on which the search selects" in first[0]
    assert "test 16 pairs (splits/val.txt), read once by the final stage" in first[0]
    assert "data: note: 2 pairs are in no split list and were left out" in out  # said, not dropped in silence
    assert " nan" not in out and "None" not in out, out
    final = pd.read_parquet(tmp_path / "vis" / "final.parquet")
    assert len(final) == 2 and final["test_l1"].notna().all() and final["best_epoch"].notna().all()
    assert "measured once on the test split (16 pairs, splits/val.txt)" in out
    record = json.loads((tmp_path / "vis" / "study.json").read_text())
    assert record["val_share"] == 0.2 and record["splits"]["test"] == "splits/val.txt"
    summary = json.loads((tmp_path / "vis" / "summary.json").read_text())
    assert summary["final"]["has_test"] and summary["final"]["configurations"][0]["test_l1"]["n"] == 2
    # The dashboard's answer and its final section say what was measured.
    report = tmp_path / "report.html"
    built = run_cli("dashboards.build", str(tmp_path / "vis"), "-o", str(report), timeout=120)
    assert built.returncode == 0, built.stderr
    text = report.read_text()
    assert "no test numbers" not in text and text.count("test 16 pairs (splits/val.txt), read once by the final stage") >= 2
    # Another share on the same study would change its splits: refused, nothing touched.
    refused = _search(tmp_path, vischema_layout, "--study", "vis", "--val-share", "0.3", *FINAL)
    assert_clean_error(refused, "was made with --val-share 0.2")
    # So would another test list (its final runs were measured on this one): refused, nothing touched.
    edited = tmp_path / "edited"
    shutil.copytree(vischema_layout, edited)
    listed = (edited / "splits" / "val.txt").read_text().splitlines()
    (edited / "splits" / "val.txt").write_text("\n".join(listed[:-1]) + "\n")
    before = (tmp_path / "vis" / "final.parquet").read_bytes()
    refused = _search(tmp_path, edited, "--study", "vis", *FINAL)
    assert_clean_error(refused, "created with other settings", "test_fingerprint")
    assert (tmp_path / "vis" / "final.parquet").read_bytes() == before and record["test_fingerprint"]


def test_a_study_made_before_the_rule_resumes_with_its_split(vischema_layout, tmp_path):
    """A study made before --val-share existed validated on the folder's val list and had no test split; its
    study.json has no val_share. It resumes with that split, and its final stage reports validation numbers."""
    made = _search(tmp_path, vischema_layout, "--study", "old", "--val-share", "0", "--final-top-k", "0")
    assert made.returncode == 0, made.stderr[-3000:]
    record_file = tmp_path / "old" / "study.json"
    record = json.loads(record_file.read_text())
    assert record.pop("val_share") == 0 and record.pop("splits")
    record_file.write_text(json.dumps(record))  # as the study files of the previous release were
    trials = pd.read_parquet(tmp_path / "old" / "trials.parquet")
    resumed = _search(tmp_path, vischema_layout, "--study", "old", *FINAL)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stdout
    assert "val 16 pairs (splits/val.txt)" in out and "no test split" in out
    assert pd.read_parquet(tmp_path / "old" / "trials.parquet")["trial_id"].tolist() == trials["trial_id"].tolist()
    assert " nan" not in out and "None" not in out, out
    final = pd.read_parquet(tmp_path / "old" / "final.parquet")
    assert final["selected_val_l1"].notna().all() and final["test_l1"].isna().all()
    assert "the numbers below are validation numbers" in out
    headline = [line for line in out.splitlines() if line.strip().startswith("#1 (trial")]
    assert headline and "val L1 " in headline[0] and "test L1" not in headline[0] and "x all-black" in headline[0]

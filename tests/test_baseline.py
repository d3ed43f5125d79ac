"""The trivial maps are contenders: what beats them, on val in the search and on test after the final stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from search.runner.baseline import beats_on_final, beats_on_val, better_baseline, verdict_line
from search.runner.options import Preset, SearchOptions
from trainables.synthetic import SyntheticSpec, generate

VAL = {"black_l1": 0.0700, "mean_map_l1": 0.1200}
TEST = {"black_l1": 0.0600, "mean_map_l1": 0.0500}  # here the mean map is the stronger one


def _final(test_mean, test_ci, val_mean=0.05, has_test=True, n=3):
    stat = {"mean": test_mean, "ci95": test_ci, "n": n}
    return {"has_test": has_test, "test_baselines": TEST if has_test else None, "seeds": [1000, 1001, 1002],
            "configurations": [{"rank": 1, "val_l1": {"mean": val_mean + 0.01, "ci95": 0.001, "n": n}, "test_l1": stat},
                               {"rank": 2, "val_l1": {"mean": val_mean, "ci95": 0.001, "n": n}, "test_l1": stat}]}


def test_the_better_baseline_is_the_lower_of_the_two():
    assert better_baseline(VAL) == ("the all-black map", 0.07)
    assert better_baseline(TEST) == ("the mean training map", 0.05)


def test_one_rule_names_the_best_trial_everywhere():
    """summary.json's best trial, the final stage's top k, predict's model and --from-study read one ranking: the
    lowest best val L1 of the trials that completed or were stopped, a tie going to the lower trial id."""
    from search.store.results import best_trial, ranked_trials

    rows = [{"trial_id": "c", "status": "completed", "best_val_l1": 0.20},
            {"trial_id": "b", "status": "stopped", "best_val_l1": 0.10},
            {"trial_id": "a", "status": "completed", "best_val_l1": 0.10},
            {"trial_id": "d", "status": "diverged", "best_val_l1": 0.01},  # diverged and errored trials never rank
            {"trial_id": "e", "status": "errored", "best_val_l1": None},
            {"trial_id": "f", "status": "running", "best_val_l1": 0.05},
            {"trial_id": "g", "status": "completed", "best_val_l1": None}]
    assert [r["trial_id"] for r in ranked_trials(rows)] == ["a", "b", "c"]
    assert best_trial(rows)["trial_id"] == "a" and best_trial(rows[3:5]) is None


def test_on_val_a_configuration_must_beat_the_baseline_by_more_than_the_noise_margin():
    assert beats_on_val(0.0600, VAL, margin=0.058) is True  # 14% below black
    assert beats_on_val(0.0680, VAL, margin=0.058) is False  # 3% below: within one run's noise
    assert beats_on_val(0.0800, VAL, margin=0.058) is False  # worse than black
    assert beats_on_val(None, VAL, margin=0.058) is None  # nothing finished: no claim either way


def test_after_the_final_stage_the_whole_interval_must_lie_below_the_test_baseline():
    assert beats_on_final(_final(0.040, 0.005), VAL) is True  # up to 0.045 < 0.050 (the mean map, on test)
    assert beats_on_final(_final(0.048, 0.005), VAL) is False  # the interval reaches 0.053
    assert beats_on_final(_final(0.040, None, n=1), VAL) is False  # one seed: no interval, no claim
    no_test = _final(None, None, has_test=False)
    for entry in no_test["configurations"]:
        entry["val_l1"] = {"mean": 0.060, "ci95": 0.002, "n": 3}
    assert beats_on_final(no_test, VAL) is True  # without a test split, judged on val: 0.062 < 0.070
    assert beats_on_final({"configurations": []}, VAL) is None


def test_a_final_stage_fails_the_command_only_when_every_run_errored(tmp_path):
    """summary.json's final block counts its runs and errored runs; the command exits 1 only when all errored (an old
    summary's block, without the counts, never)."""
    from search.runner.console import summarize
    from search.store.results import ResultsStore
    from search.store.study import StudyStore

    store = StudyStore(tmp_path, "s")
    store.create()
    results = ResultsStore(store, strategy="greedy", family="autoencoder", hp_kinds={})

    def flagged(final):
        return summarize(results, study_dir=str(store.root), preset="smoke", record={"baselines": VAL}, wall=0.0,
                         finished=True, final=final, margin=0.0).every_final_run_errored

    assert flagged({**_final(None, None), "runs": 3, "errored": 3, "first_error": "killed"}) == "killed"
    assert flagged({**_final(0.04, 0.005), "runs": 3, "errored": 2, "first_error": "killed"}) is None
    assert flagged(_final(0.04, 0.005)) is None and flagged(None) is None


def test_the_verdict_line_says_what_lost_and_by_how_much():
    final = {**_final(0.048, 0.005), "beats_baseline": False}
    line = verdict_line(False, final, 0.06, VAL, 0.058)
    assert line.startswith("no configuration beats the mean training map on this data: the recommended one's test L1 "
                           "is 0.0480 and its 95% interval reaches 0.0530, not below the mean training map's 0.0500")
    assert verdict_line(True, {**final, "beats_baseline": True}, 0.06, VAL, 0.058) is None
    line = verdict_line(False, None, 0.068, VAL, 0.058)
    assert "best val L1 0.0680 is not below the all-black map's 0.0700 by more than the noise margin (5.8%)" in line
    assert verdict_line(True, None, 0.06, VAL, 0.058) is None


# A whole (tiny) greedy search on data no model can learn, and on data a model learns in the same
# budget: the loss block only (map_loss, two trials), 30 epochs of width-4 UNets on 32-pixel pairs.
TINY = Preset("tiny", epochs=30, width_divisor=16, samples=2, grace_period=30, reduction_factor=2, n_train=None,
              n_val=None, train_eval_size=16, max_blocks=1, description="the unlearnable-data test's budget")


def learnable_set(root: Path, n: int = 96, size: int = 32, seed: int = 5) -> Path:
    """Blocks of random colour; a block is remembered (red) exactly when its red is above 160."""
    rng = np.random.default_rng(seed)
    for name in ("images", "maps"):
        (root / name).mkdir(parents=True)
    for i in range(n):
        blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        vms = np.zeros_like(blocks)
        vms[..., 0] = np.where(blocks[..., 0] > 160, 255, 0)
        grow = np.ones((size // 8, size // 8, 1), dtype=np.uint8)
        Image.fromarray(np.kron(blocks, grow)).save(root / "images" / f"p{i:03d}.png")
        Image.fromarray(np.kron(vms, grow)).save(root / "maps" / f"p{i:03d}.png")
    return root


def _search(data: Path, runs: Path, study: str) -> tuple[dict, list[str]]:
    """In this process, on the session's Ray: the study's summary.json and the last lines search.run prints."""
    from search.runner.console import format_summary
    from search.runner.driver import run_study

    summary = run_study(SearchOptions(strategy="greedy", model="autoencoder", preset=TINY, data=str(data), size=32,
                                      seed=0, scheduler="none", final_top_k=0, max_concurrent=2, runs_dir=str(runs),
                                      study=study))
    return json.loads((runs / study / "summary.json").read_text()), format_summary(summary).splitlines()


def test_on_data_that_cannot_be_learned_the_search_says_the_all_black_map_wins(tmp_path, ray_local):
    from dashboards.build import build
    from playwright.sync_api import sync_playwright
    from tests.test_dashboard import CHROMIUM_ARGS, chromium_path

    independent = generate(tmp_path / "independent", SyntheticSpec(n_train=80, n_val=24, n_test=0, size=32, seed=4,
                                                                   maps="independent", lit_share=0.2))
    runs = tmp_path / "runs"
    summary, printed = _search(independent, runs, "independent")
    assert summary["beats_baseline"] is False and summary["trials"] == 2
    assert printed[-1].startswith("no configuration beats the all-black map on this data: the best val L1"), printed[-1]
    summary, printed = _search(learnable_set(tmp_path / "learnable"), runs, "learnable")
    assert summary["beats_baseline"] is True, (summary["best_val_l1"], summary["baselines"]["black_l1"])
    assert summary["best_val_l1"] < 0.9 * summary["baselines"]["black_l1"]
    assert not any("beats" in line for line in printed[-3:]), printed[-3:]

    report = build([runs / "independent", runs / "learnable"], tmp_path / "report.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(report.as_uri())
        answer = page.locator("#answer").inner_text()
        browser.close()
    assert "No configuration beats the all-black map on this data in study independent" in answer, answer
    rows = {line.split(" ")[0]: line for line in answer.splitlines() if line.startswith(("independent", "learnable"))}
    assert "no configuration beats the all-black map on this data (the best found:" in rows.get("independent", ""), answer
    assert "beats" not in rows["learnable"] and "map_loss=" in rows["learnable"], rows["learnable"]

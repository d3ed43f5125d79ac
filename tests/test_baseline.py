"""The trivial maps are contenders: what beats them, on val in the search and on test after the final stage."""

from __future__ import annotations

from search.runner.baseline import beats_on_final, beats_on_val, better_baseline, verdict_line

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


def test_the_verdict_line_says_what_lost_and_by_how_much():
    final = {**_final(0.048, 0.005), "beats_baseline": False}
    line = verdict_line(False, final, 0.06, VAL, 0.058)
    assert line.startswith("no configuration beats the mean training map on this data: the recommended one's test L1 "
                           "is 0.0480 and its 95% interval reaches 0.0530, not below the mean training map's 0.0500")
    assert verdict_line(True, {**final, "beats_baseline": True}, 0.06, VAL, 0.058) is None
    line = verdict_line(False, None, 0.068, VAL, 0.058)
    assert "best val L1 0.0680 is not below the all-black map's 0.0700 by more than the noise margin (5.8%)" in line
    assert verdict_line(True, None, 0.06, VAL, 0.058) is None

"""Studies made by earlier code resume under this code, with the same trial keys and study identity.

``tests/fixtures/legacy/`` holds two smoke studies made by the code of commit 0352fba (before the
study store, the strategy objects and the runner existed), each SIGKILLed mid-search at the crash
point ``searcher-complete`` (the searcher had recorded a trial the Parquet files had not):
``legacy-greedy`` (greedy, autoencoder, killed at its 4th trial) and ``legacy-tpe`` (tpe,
autoencoder, 5 samples, killed at its 3rd). Made with::

    MEMSEARCH_CRASH_AT=searcher-complete:4 python -m search.run --strategy greedy --model autoencoder \\
        --preset smoke --seed 0 --max-concurrent 1 --runs-dir FIXTURES --study legacy-greedy
    MEMSEARCH_CRASH_AT=searcher-complete:3 python -m search.run --strategy tpe --model autoencoder \\
        --preset smoke --samples 5 --seed 0 --max-concurrent 1 --runs-dir FIXTURES --study legacy-tpe

Ray's own folder (``ray/``), the ``.lock`` files and the ``previous.pt`` fallbacks were left out to keep
the fixture small; none is read on resume.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest


FIXTURES = Path(__file__).parent / "fixtures" / "legacy"
IDENTITY = ("family", "strategy", "space_fingerprint", "domain", "settings", "data_subset", "data_fingerprint", "format")


@pytest.mark.parametrize("study, options", [
    ("legacy-greedy", {"strategy": "greedy"}),
    ("legacy-tpe", {"strategy": "tpe", "samples": 5, "verbose": True}),
])
def test_a_study_made_by_earlier_code_resumes_with_every_finished_trial(study, options, tmp_path, ray_local, capsys,
                                                                        monkeypatch):
    """In this process, on the session's Ray (the command line's own path is tested in test_search.py). --verbose
    reaches Ray Tune's runs, and only with it."""
    from search.run import build_parser
    from search.runner import tuning
    from search.runner.driver import run_study
    from search.runner.options import SearchOptions

    parsed = vars(build_parser().parse_args(["--strategy", "tpe", "--model", "autoencoder", "--verbose"]))
    assert SearchOptions(**parsed).verbose is True  # the command line's flag, as search.run passes it on
    seen, run_tuner = [], tuning.run_tuner
    monkeypatch.setattr(tuning, "run_tuner", lambda tuner, verbose=False: seen.append(verbose) or run_tuner(tuner, verbose))
    shutil.copytree(FIXTURES / study, tmp_path / study)
    before_record = json.loads((tmp_path / study / "study.json").read_text())
    before = pd.read_parquet(tmp_path / study / "trials.parquet").set_index("trial_id")
    before_epochs = pd.read_parquet(tmp_path / study / "epochs.parquet")
    finished = before[before["status"] != "running"]
    assert len(finished) >= 2  # the fixture is what it says

    summary = run_study(SearchOptions(**options, model="autoencoder", preset="smoke", seed=0, max_concurrent=1,
                                      final_top_k=0, runs_dir=str(tmp_path), study=study, resume=True))
    printed = capsys.readouterr().out
    assert "finished before the driver was killed" in printed, printed  # the searcher's record, reconciled
    assert seen and set(seen) == {options.get("verbose", False)}

    record = json.loads((tmp_path / study / "study.json").read_text())
    assert {k: record.get(k) for k in IDENTITY} == {k: before_record.get(k) for k in IDENTITY}
    after = pd.read_parquet(tmp_path / study / "trials.parquet").set_index("trial_id")
    for trial_id, row in finished.iterrows():  # every finished trial is kept, with its key and its numbers
        assert trial_id in after.index, trial_id
        assert after.loc[trial_id, "status"] == row["status"]
        assert after.loc[trial_id, "best_val_l1"] == row["best_val_l1"]
        assert after.loc[trial_id, "segment"] == row["segment"] == 0  # not trained again
    epochs = pd.read_parquet(tmp_path / study / "epochs.parquet")
    kept = epochs[epochs["trial_id"].isin(finished.index)].set_index(["trial_id", "epoch"])["val_l1"]
    assert kept.equals(before_epochs[before_epochs["trial_id"].isin(finished.index)]
                       .set_index(["trial_id", "epoch"])["val_l1"])
    assert (after["status"] != "running").all()
    assert len(after) > len(finished), "the search went on after the resume"
    assert summary.finished and json.loads((tmp_path / study / "summary.json").read_text())["finished"]

"""Each Optuna-based searcher (search/strategies/): its state lives in the storage, a fresh driver
proposes what the old one would have, a pending trial survives, and a killed driver's search resumes."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest

from ray.tune.search import Searcher

from search.strategies.bohb_sampler import RungTPESampler
from search.strategies.budget import EpochBudget
from search.strategies.optuna_strategy import OptunaStrategy
from search.strategies.optuna_study import open_storage, open_study
from search.study_file import load_space
from search.strategies import STRATEGIES
from tests.conftest import run_cli
from tests.test_search import SMOKE, _crash

OPTUNA_STRATEGIES = [name for name, s in STRATEGIES.items() if isinstance(s, OptunaStrategy)]


def _objective(config: dict, epoch: int) -> float:
    """A smooth made-up val L1 with a learning curve: lower near lr 0.001, width 64, batch 16."""
    lr = config.get("lr", 1.0)
    base = 0.05 + 0.01 * abs(math.log10(lr) + 3) + 0.0001 * abs(config["width"] - 64) + 0.0005 * abs(config["batch_size"] - 16)
    return base * (1 + 1.0 / epoch)


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _open(path: Path, strategy: str):
    space = load_space("autoencoder")
    return space, open_study(open_storage(f"sqlite:///{path}"), "s", space, sampler=_sampler(strategy, space, 12),
                             seed=7, samples=30, key_of=_key)


def _sampler(strategy: str, space, expected: int):
    return STRATEGIES[strategy].sampler(expected, len(space.params))


def _run_trial(searcher, space, trial_id: str, epochs: int) -> dict:
    config = searcher.suggest(trial_id)
    assert config is not None
    canonical = space.canonical(config)
    for epoch in range(1, epochs + 1):
        searcher.on_trial_result(trial_id, {"best_val_l1": _objective(canonical, epoch), "training_iteration": epoch})
    searcher.on_trial_complete(trial_id, {"best_val_l1": _objective(canonical, epochs), "training_iteration": epochs})
    return canonical


@pytest.mark.parametrize("strategy", OPTUNA_STRATEGIES)
def test_a_fresh_searcher_continues_where_the_stored_one_was(strategy, tmp_path):
    db = tmp_path / "optuna.db"
    space, study = _open(db, strategy)
    searcher = study.searcher
    first = _run_trial(searcher, space, "t0", 4)
    assert first == space.defaults(), "every strategy starts from the study's defaults, as greedy does"
    for i in range(1, 10):  # ASHA-like: most trials stop after one or two epochs
        _run_trial(searcher, space, f"t{i}", (1, 2, 4)[i % 3])
    pending = space.canonical(searcher.suggest("pending"))  # proposed, not finished, when the driver dies
    shutil.copy(db, tmp_path / "copy.db")
    expected_next = space.canonical(searcher.suggest("next"))

    space, fresh = _open(tmp_path / "copy.db", strategy)
    assert fresh.done == 10 and fresh.requeued == 1
    assert space.canonical(fresh.searcher.suggest("again")) == pending, "the pending trial is proposed again"
    assert space.canonical(fresh.searcher.suggest("next")) == expected_next


def test_defaults_come_first_on_the_ranges_too(tmp_path):
    space = load_space("gan")
    study = open_study(open_storage(f"sqlite:///{tmp_path / 'o.db'}"), "s", space, sampler=_sampler("tpe", space, 5),
                       seed=0, samples=5, key_of=_key, use_ranges=True)
    config = study.searcher.suggest("a")
    assert space.canonical(config) == space.defaults()
    assert study.searcher.suggest("b")["p_translation"] not in (0.0, 0.9), "then the continuous range, not the grid"


def test_the_multi_fidelity_model_uses_the_highest_epoch_enough_trials_reached(tmp_path):
    space = load_space("autoencoder")
    study = optuna.create_study(direction="minimize", storage=f"sqlite:///{tmp_path / 'o.db'}")
    sampler = RungTPESampler(0, min_points=3)
    for i, epochs in enumerate([1, 1, 2, 2, 4, 4]):  # three trials reached epoch 2, two epoch 4
        trial = study.ask()
        config = space.suggest(trial, use_ranges=False)
        for epoch in range(1, epochs + 1):
            trial.report(_objective(config, epoch) + i * 1e-4, epoch)
        study.tell(trial, _objective(config, epochs))
    running = study.ask()
    space.suggest(running, use_ranges=False)  # a running trial with no results yet: a bad result for the model
    current = study.ask()
    proxy, epoch = sampler.fidelity(study, study._storage.get_trial(current._trial_id))
    assert epoch == 2
    values = sorted(t.value for t in proxy.trials)
    assert len(values) == 5 and values[-1] == values[-2], "4 trials at epoch 2 and the running one at the worst value"
    young = optuna.create_study(direction="minimize")
    assert sampler.fidelity(young, young._storage.get_trial(young.ask()._trial_id)) is None, "too few: random"


@pytest.mark.parametrize("strategy,budget", [("bohb", ["--samples", "4"]), ("gp", ["--budget-epochs", "8"])])
def test_a_killed_driver_resumes_the_search(strategy, budget, tmp_path):
    """Through a real local Ray: SIGKILL after the second finished trial, then the same command finishes the study
    (bounded by trials, or by epochs: the budget counts the epochs trained before the kill)."""
    args = ["search.run", "--runs-dir", str(tmp_path), *SMOKE, "--strategy", strategy, "--model", "autoencoder",
            "--epochs", "2", "--study", "s", *budget]
    _crash(args, "searcher-complete:2")
    result = run_cli(*args, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "continuing study s: 2" in result.stdout
    trials = pd.read_parquet(tmp_path / "s" / "trials.parquet")
    epochs = pd.read_parquet(tmp_path / "s" / "epochs.parquet")
    assert trials["trial_id"].is_unique and (trials["status"] != "running").all()
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    if strategy == "bohb":
        assert len(trials) == 4
    else:  # the budget is a cap: a trial starts only if its 2 epochs fit, so it ends at 7 or 8 epochs, never above
        assert 7 <= len(epochs) <= 8, len(epochs)
        assert "budget: " + str(len(epochs)) + " of 8 epochs spent" in result.stdout
        # The resumed run's estimate plans what the budget left affords: its trial count is what it then started
        # (the trials the kill interrupted run again besides), within one round of trials (2 at a time).
        # Under ASHA it is a range (none stopped early, to every trial stopped at the grace period and two rounds
        # more) around the count at ASHA's usual share of stops, which the search ran within one round of.
        estimate = re.search(r"estimate: (\d+)(?: to (\d+) trials)?(?: \(about (\d+))?", result.stdout)
        assert estimate, result.stdout
        fewest, most = int(estimate.group(1)), int(estimate.group(3) or estimate.group(2) or estimate.group(1))
        interrupted = re.search(r"(\d+) interrupted by a stopped driver", result.stdout)
        rerun = int(interrupted.group(1)) if interrupted else 0
        started = int((trials["segment"] == 1).sum()) - rerun
        assert fewest - 2 <= started <= most + 2, (fewest, most, rerun, result.stdout)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's' / 'optuna.db'}")
    kept = [t for t in study.trials if not t.user_attrs.get("interrupted")]
    assert {t.user_attrs["trial_key"] for t in kept} == set(trials["trial_id"])
    # The study's defaults come first (its trial may have been running at the kill, and run again later).
    first = study.trials[0]
    assert first.user_attrs.get("study_defaults") and first.params in [t.params for t in kept]


class _Counting(Searcher):
    """Proposes {"n": 0}, {"n": 1}, ...; remembers what it was told."""

    def __init__(self) -> None:
        super().__init__(metric="best_val_l1", mode="min")
        self.proposed, self.completed = 0, []

    def suggest(self, trial_id):
        self.proposed += 1
        return {"n": self.proposed - 1}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append(trial_id)


def test_the_epoch_budget_is_a_cap_that_counts_each_epoch_once():
    budget = EpochBudget(_Counting(), budget=7, known=[("old", 1), ("old", 2)], epochs_per_trial=2)
    assert isinstance(budget.suggest("a"), dict) and isinstance(budget.suggest("b"), dict)  # 2 spent + 2 x 2 set aside
    assert budget.suggest("c") is None, "a third would not fit while a and b may still train theirs: wait"
    budget.on_trial_result("a", {"best_val_l1": 0.5, "epoch": 1, "replayed": True})  # trained before, not recorded
    assert budget.spent == 3 and budget.reserved == 3
    budget.on_trial_result("a", {"best_val_l1": 0.5, "epoch": 1, "replayed": True})  # the same epoch twice counts once
    budget.on_trial_result("b", {"best_val_l1": 0.4, "epoch": 1})
    # ASHA stops b at epoch 1 (Tune passes that result to on_trial_complete only): its second epoch is freed.
    budget.on_trial_complete("b", {"best_val_l1": 0.4, "epoch": 1})
    assert budget.spent == 4 and budget.reserved == 1 and isinstance(budget.suggest("c"), dict)  # 4 + 1 + 2 <= 7
    budget.on_trial_complete("a", {"best_val_l1": 0.4, "epoch": 2})
    assert budget.spent == 5 and budget.suggest("d") is None  # 5 + c's 2 set aside: nothing fits while c runs
    budget.on_trial_result("c", {"best_val_l1": 0.4, "epoch": 1})
    budget.on_trial_complete("c", {"best_val_l1": 0.4, "epoch": 2})
    assert budget.spent == 7 and budget.reached and budget.suggest("d") == Searcher.FINISHED
    assert budget.searcher.completed == ["b", "a", "c"], "results still reach the wrapped searcher"


def test_a_trial_a_stopped_driver_left_running_keeps_its_share_of_the_budget():
    budget = EpochBudget(_Counting(), budget=8, known=[("t0", 1), ("t0", 2), ("t1", 1), ("t1", 2), ("left", 1)],
                         epochs_per_trial=2, interrupted=["left"], key_of=lambda config: f"t{config['n'] + 2}"
                         if config["n"] else "left")
    assert budget.spent == 5 and budget.reserved == 1 and not budget.reached  # 5 + 1 + 2 = 8: one more fits
    assert isinstance(budget.suggest("again"), dict), "the interrupted trial resumes first"
    budget.on_trial_result("again", {"best_val_l1": 0.5, "epoch": 1, "replayed": True})
    assert budget.spent == 5 and budget.reserved == 1
    assert isinstance(budget.suggest("new"), dict) and budget.reached
    budget.on_trial_complete("again", {"best_val_l1": 0.4, "epoch": 2})
    budget.on_trial_complete("new", {"best_val_l1": 0.4, "epoch": 1})
    assert budget.spent == 7 and budget.suggest("late") == Searcher.FINISHED


@pytest.mark.parametrize("strategy", OPTUNA_STRATEGIES)
def test_on_the_grid_no_configuration_is_trained_twice(strategy, tmp_path):
    """The autoencoder's grid with everything but the batch size fixed has 3 configurations: the samplers draw
    them again and again; each is proposed once, then the search says it is done."""
    import tomllib

    raw = tomllib.loads((Path(__file__).parent.parent / "studies" / "autoencoder.toml").read_text())
    raw["order"] = ["batch_size"]
    raw["params"] = {"batch_size": raw["params"]["batch_size"]}
    from search.study_file import parse_space

    space = parse_space(raw)
    study = open_study(open_storage(f"sqlite:///{tmp_path / 'o.db'}"), "s", space, sampler=_sampler(strategy, space, 10),
                       seed=1, samples=10, key_of=_key)
    seen = []
    for i in range(4):
        config = study.searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            break
        seen.append(_key(space.canonical(config)))
        study.searcher.on_trial_complete(f"t{i}", {"best_val_l1": 0.1 + i / 100})
    assert len(seen) == 3 and len(set(seen)) == 3, seen
    assert config == Searcher.FINISHED

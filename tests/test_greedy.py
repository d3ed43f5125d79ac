"""The greedy coordinate-descent searcher: exact order, adoption, no repeats, save/restore."""

from __future__ import annotations

import json

import sys

import pytest
from ray import cloudpickle
from ray.tune.search import Searcher

from search.store.study import JsonFile
from search.strategies.greedy_searcher import GreedySearcher, block_line, config_key
import tomllib

from search.study_file import load_space, parse_space, study_path

# Ray workers cannot import test modules: ship this module's functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

COST = {"norm": {"batch": 0.3, "instance": 0.1}, "width": {32: 0.05, 50: 0.2, 64: 0.1, 100: 0.3},
        "optimizer": {"adam": 0.2, "sgd": 0.15, "adadelta": 0.3}, "batch_size": {8: 0.2, 16: 0.1, 32: 0.0}}


def report_space():
    """The autoencoder study with the report's parameters only (COST's terms), starting at norm."""
    raw = tomllib.loads(study_path("autoencoder").read_text())
    for name in ("map_loss", "p_translation", "dropout", "weight_decay"):
        raw["order"].remove(name)
        del raw["params"][name]
    return parse_space(raw, "studies/autoencoder.toml with the report's parameters only")


def objective(config):
    """Cheap and deterministic: a separable cost, with lr and beta1 mattering only when present."""
    value = sum(COST[k][config[k]] for k in COST)
    value += abs(config["lr"] - {"adam": 0.002, "sgd": 0.02, "adadelta": 1.0}[config["optimizer"]])
    value += 0.01 * config.get("beta1", 0.0)
    return round(value, 6)


def drive(searcher, *, stop_after=None):
    """Run the searcher to the end (or for ``stop_after`` trials), completing each block in a batch."""
    proposed, ids = [], 0
    while True:
        batch = []
        while True:
            ids += 1
            config = searcher.suggest(f"t{ids}")
            if config is None or config == Searcher.FINISHED:
                break
            batch.append((f"t{ids}", config))
            proposed.append(config)
            if stop_after and len(proposed) >= stop_after:
                return proposed
        if config == Searcher.FINISHED:
            return proposed
        for trial_id, cfg in batch:
            searcher.on_trial_complete(trial_id, {"best_val_l1": objective(cfg)})


def expected_path(space):
    """Coordinate descent written out independently of the searcher."""
    current, seen, blocks = space.defaults(), {}, []
    for param in space.params:
        if not space.active(param.name, current):
            continue
        configs = [space.with_value(current, param.name, v) for v in space.choice(param.name, current).values]
        for c in configs:
            seen.setdefault(config_key(c), objective(c))
        best = min(configs, key=lambda c: (objective(c), c != current))
        blocks.append((param.name, best[param.name]))
        current = best
    return blocks, current, len(seen)


def test_follows_coordinate_descent_exactly():
    space = report_space()
    searcher = GreedySearcher(space)
    proposed = drive(searcher)
    blocks, final, distinct = expected_path(space)
    assert [(b.param, b.adopted) for b in searcher.state.blocks] == blocks
    assert searcher.state.current == final and searcher.state.finished
    keys = [config_key(c) for c in proposed]
    assert len(keys) == len(set(keys)) == distinct  # nothing evaluated twice
    for block in searcher.state.blocks:
        configs = [json.loads(k) for k in block.keys]
        varied = {k for c in configs for k in set(c) | set(configs[0]) if c.get(k) != configs[0].get(k)}
        assert varied <= {block.param} | space.dependents(block.param)
        assert block.adopted == min(configs, key=objective)[block.param]
    for config in proposed:
        assert ("beta1" in config) == (config["optimizer"] == "adam")


def test_diverged_and_errored_trials_still_resolve_the_block():
    space = report_space()
    searcher = GreedySearcher(space, max_blocks=1)
    a, _ = searcher.suggest("a"), searcher.suggest("b")
    assert searcher.suggest("c") is None  # wait for the block
    searcher.on_trial_complete("a", {"best_val_l1": float("nan")})
    searcher.on_trial_complete("b", None, error=True)
    assert searcher.suggest("d") == Searcher.FINISHED
    assert searcher.state.blocks[0].adopted == a[searcher.state.blocks[0].param]  # tie at the worst value: keep the default


def test_a_gain_inside_the_noise_margin_keeps_the_held_value():
    space = report_space()
    decided = []
    # norm: instance beats the held batch by 0.2 / (0.3 + rest): far outside a 1% margin, adopted.
    # width: held 64 costs 0.1, 32 costs 0.05: about 7% lower L1 in total, inside a 10% margin: kept.
    searcher = GreedySearcher(space, max_blocks=2, margin=0.10, on_block=decided.append)
    drive(searcher)
    norm, width = searcher.state.blocks
    assert (norm.adopted, norm.decision) == ("instance", "adopted") and norm.advantage > 0.10
    assert width.held == 64 and width.adopted == 64 and width.decision.startswith("kept: within the noise margin")
    assert 0 < width.advantage <= 0.10 and width.values["32"] < width.values["64"]
    assert decided == [norm, width]
    assert block_line(width).startswith("block 1 (width): kept: within the noise margin (10.0%), now width=64; "
                                        "the best challenger, 32, had ")
    assert block_line(norm).endswith("now norm=instance, " + f"{norm.advantage:+.1%} lower L1 than the held batch")
    # Without a margin the same evidence is adopted.
    plain = GreedySearcher(space, max_blocks=2)
    drive(plain)
    assert plain.state.blocks[1].adopted == 32


def test_save_restore_gives_the_same_next_suggestion(tmp_path):
    space = report_space()
    searcher = GreedySearcher(space)
    drive(searcher, stop_after=4)  # stops in the middle of the width block
    path = tmp_path / "state.json"
    searcher.save(str(path))
    restored = GreedySearcher(space)
    restored.restore(str(path))
    # Unfinished proposals of the open block are proposed again, then the same sequence goes on.
    original_rest, restored_rest = drive_all_pending(searcher), drive(restored)
    assert restored_rest[: len(original_rest)] == original_rest


def drive_all_pending(searcher):
    """What the original would (re)propose after a crash: its open block's unfinished configs."""
    block = searcher.state.blocks[-1]
    return [json.loads(k) for k in block.keys if k not in searcher.state.evaluated]


def test_max_sweeps_repeats_until_nothing_changes():
    space = report_space()
    searcher = GreedySearcher(space, max_sweeps=3)
    drive(searcher)
    assert 1 <= searcher.state.sweep <= 3
    sweeps = {b.sweep for b in searcher.state.blocks}
    assert max(sweeps) == searcher.state.sweep - 1


def test_through_ray_tune(ray_local, tmp_path):
    from ray import tune

    space = report_space()
    searcher = GreedySearcher(space, state_file=JsonFile(tmp_path / "greedy.json"))

    def trainable(config):
        tune.report({"best_val_l1": objective(config), "epoch": 1})

    tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
        metric="best_val_l1", mode="min", search_alg=searcher, num_samples=-1, max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0))
    results = tuner.fit()
    blocks, final, distinct = expected_path(space)
    assert [(b.param, b.adopted) for b in searcher.state.blocks] == blocks
    assert len(results) == distinct
    saved = json.loads((tmp_path / "greedy.json").read_text())
    assert saved["finished"] and saved["current"] == final and saved["version"] == 1


@pytest.mark.parametrize("mode", ["max"])
def test_greedy_minimises(mode):
    with pytest.raises(ValueError, match="minimises"):
        GreedySearcher(load_space("gan"), mode=mode)

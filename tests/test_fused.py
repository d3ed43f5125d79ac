"""Fused trials (trainables/fused.py): configurations trained as one batched network train as each would alone."""

from __future__ import annotations

import pytest

from trainables.families import find_family
from trainables.fused import fusion_groups, run_fused
from trainables.loop import run_trial

TINY = {"epochs": 3, "width_divisor": 16, "train_eval_size": 16, "batch_size": 8}
# One network shape; what differs is each member's own: learning rate, betas, weight decay, augmentation, seed.
MEMBERS = [{**TINY, "lr": 0.001, "seed": 0},
           {**TINY, "lr": 0.002, "beta1": 0.5, "p_translation": 0.0, "seed": 1},
           {**TINY, "lr": 0.0005, "weight_decay": 0.0001, "seed": 2}]


def test_a_fused_trial_trains_as_it_would_alone(tiny_data, tmp_path):
    family = find_family("autoencoder")
    alone = []
    for config in MEMBERS:
        rows: list[dict] = []
        run_trial(config, tiny_data, family, report=rows.append)
        alone.append(rows)
    fused: list[list[dict]] = [[] for _ in MEMBERS]
    kept = [{**config, "checkpoint_root": str(tmp_path)} for config in MEMBERS]  # each member's folder: its key
    last = run_fused(kept, tiny_data, family, reports=[r.append for r in fused])
    for lone, together in zip(alone, fused):
        assert [r["epoch"] for r in together] == [1, 2, 3]
        # The same curve, to float tolerance: batched kernels add in another order, and training amplifies the
        # rounding epoch by epoch (measured: equal to 6 digits for two epochs, within 0.2% at the third for the
        # member with the largest step). A member trained from another seed or order differs by far more.
        assert together[0]["train_loss"] == pytest.approx(lone[0]["train_loss"], rel=1e-5)
        assert together[0]["val_l1"] == pytest.approx(lone[0]["val_l1"], rel=1e-5)
        for a, b in zip(lone, together):
            assert b["val_l1"] == pytest.approx(a["val_l1"], rel=5e-3)
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=5e-3)
    # The members did learn different things: their curves differ from each other.
    assert len({round(rows[-1]["val_l1"], 6) for rows in fused}) == len(MEMBERS)
    assert [r["status"] for r in last] == ["completed"] * len(MEMBERS)
    # Each member's checkpoint is a lone trial's: run alone from it, it replays its epochs and trains no more.
    replayed: list[dict] = []
    run_trial(kept[1], tiny_data, family, report=replayed.append)
    assert [r["epoch"] for r in replayed] == [1, 2, 3] and all(r.get("replayed") for r in replayed)


def test_a_member_told_to_stop_leaves_the_group(tiny_data):
    family = find_family("autoencoder")
    fused: list[list[dict]] = [[], []]

    def stop_after_first(row: dict) -> bool:  # an early-stopping decision after its first epoch
        fused[0].append(row)
        return True

    run_fused(MEMBERS[:2], tiny_data, family, reports=[stop_after_first, fused[1].append])
    assert [r["epoch"] for r in fused[0]] == [1] and [r["epoch"] for r in fused[1]] == [1, 2, 3]


def test_only_configurations_of_one_shape_are_fused():
    family = find_family("autoencoder")
    configs = [MEMBERS[0], {**TINY, "width": 32}, MEMBERS[1], {**TINY, "map_loss": "l1"}]
    assert fusion_groups(family, configs) == [[0, 2], [1], [3]]
    assert fusion_groups(find_family("gan"), [TINY, TINY]) == [[0], [1]]  # a family without fusion_fields
    with pytest.raises(ValueError, match="cannot train fused"):
        run_fused(configs[:2], None, family)

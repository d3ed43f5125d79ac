"""A family is one registered class: a tiny one, registered inside the test, runs a search through Ray.

What adding a family takes (CONTRIBUTING.md): its module (here, this one), one line in the
registry (here :func:`trainables.families.register`) and one study file (written below).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from trainables.augment import AugmentConfig
from trainables.config import RunSettings
from trainables.family import OneNetworkFamily, step
from trainables.losses import masked_l1

STUDY = """
family = "tiny"
order = ["width", "lr"]

[params.width]
values = [8, 4]
default = 8

[params.lr]
values = [0.01, 0.001]
default = 0.01
"""


@dataclass(frozen=True)
class TinyConfig(AugmentConfig):
    width: int = 8
    lr: float = 0.01
    batch_size: int = 16


class TinyFamily(OneNetworkFamily):
    """Two convolutions: the smallest model that trains through the shared loop."""

    net_key = "net"

    name, aliases, config_cls = "tiny", ("tiny-net",), TinyConfig
    noise = 0.0

    def __init__(self, hp: TinyConfig, settings: RunSettings, device: torch.device) -> None:
        super().__init__(hp, settings, device)
        self.net = nn.Sequential(nn.Conv2d(3, hp.width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hp.width, 3, 3, padding=1)).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=hp.lr)
        self.scaler = self.precision.scaler()

    def train_step(self, image: torch.Tensor, vms: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = masked_l1(self.predict(image), vms, valid)
        step(loss, self.opt, self.scaler)
        return {"train_loss": loss.detach()}

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(image))


def test_a_family_registered_in_the_test_runs_a_search_through_ray(ray_local, tmp_path):
    from search.runner.driver import run_study
    from search.runner.options import SearchOptions
    from trainables.families import FAMILIES, find_family, register, unregister

    study_file = tmp_path / "tiny.toml"
    study_file.write_text(STUDY)
    register(TinyFamily)
    try:
        assert FAMILIES.get("tiny") is TinyFamily and find_family("tiny-net") is TinyFamily
        summary = run_study(SearchOptions(strategy="greedy", model="tiny-net", space_file=str(study_file),
                                          preset="smoke", final_top_k=1, final_seeds=1, runs_dir=str(tmp_path / "runs")))
    finally:
        unregister("tiny")
    assert "tiny" not in FAMILIES
    trials = pd.read_parquet(tmp_path / "runs" / "greedy-tiny" / "trials.parquet")
    assert len(trials) == 3 and (trials["family"] == "tiny").all()  # the defaults, then one new value per block
    assert set(trials["status"]) <= {"completed", "stopped"}, trials[["trial_id", "status"]]
    assert sorted(trials["hp_width"]) == [4, 8, 8] and sorted(trials["hp_lr"]) == [0.001, 0.01, 0.01]
    record = json.loads((tmp_path / "runs" / "greedy-tiny" / "study.json").read_text())
    assert record["family"] == "tiny" and summary.finished
    assert summary.final["configurations"][0]["seeds_done"] == 1

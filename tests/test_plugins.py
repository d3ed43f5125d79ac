"""Plug-ins registered at run time, from this file alone (CONTRIBUTING.md, "Add a plug-in"): a toy strategy with an
option of its own that adds a column to trials.parquet, a toy family with a metric of its own that becomes a
column of epochs.parquet, and a map loss the toy family trains with. They run end to end through the command's own
main(), with a real local Ray, whose workers get what this process registered."""

from __future__ import annotations

import functools
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from search.strategies import STRATEGIES
from search.strategies.base import StrategyOption
from search.strategies.random_sampling import RandomStrategy
from trainables.config import MAP_LOSSES, AugmentConfig, RunSettings
from trainables.families import FamilyCard, register, unregister
from trainables.family import OneNetworkFamily, step
from trainables.losses import masked_l1, masked_map_loss

ROOT = Path(__file__).resolve().parent.parent
STUDY = """
family = "toy"
order = ["width", "map_loss"]
[params.width]
values = [4, 8]
default = 8
[params.map_loss]
values = ["toy-l1"]
default = "toy-l1"
"""


@dataclass(frozen=True)
class ToyConfig(AugmentConfig):
    width: int = 8
    lr: float = 0.01
    batch_size: int = 16
    map_loss: str = "l1"


class ToyFamily(OneNetworkFamily):
    """Two convolutions, and a loss of its own to report."""

    net_key = "net"

    def __init__(self, hp: ToyConfig, settings: RunSettings, device: torch.device) -> None:
        super().__init__(hp, settings, device)
        self.net = nn.Sequential(nn.Conv2d(3, hp.width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hp.width, 3, 3, padding=1)).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=hp.lr)
        self.scaler = self.precision.scaler()

    def train_step(self, image: torch.Tensor, vms: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(image)
        loss = masked_map_loss(self.hp.map_loss, logits, vms, valid)
        step(loss, self.opt, self.scaler)
        return {"train_loss": loss.detach(), "toy_brightness": torch.tanh(logits).detach().mean()}

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(image))


def toy_map_l1(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return masked_l1(torch.tanh(logits), target, valid)


def toy_columns(label: str, ray_trial_id: str) -> dict[str, str]:
    return {"toy_label": label}


class ToyStrategy(RandomStrategy):
    name = "toy"
    summary = "random sampling, each trial labelled"
    options = (StrategyOption("--toy-label", "toy: the label every trial carries", str, "unlabelled"),)
    columns = {"toy_label": "str"}

    def open(self, context):
        search = super().open(context)
        search.columns_of = functools.partial(toy_columns, context.options.toy_label)
        return search


def test_a_strategy_and_a_family_registered_from_one_file_run_end_to_end(ray_local, tmp_path):
    from search.run import main

    study_file = tmp_path / "toy.toml"
    study_file.write_text(STUDY)
    card = register(FamilyCard("toy", ("toy-net",), ToyConfig, ToyFamily, metrics=("train_loss", "toy_brightness")))
    STRATEGIES.add("toy", ToyStrategy())
    MAP_LOSSES.add("toy-l1", toy_map_l1)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        code = main(["--strategy", "toy", "--model", "toy-net", "--space", str(study_file), "--preset", "smoke",
                     "--samples", "2", "--final-top-k", "0", "--runs-dir", str(tmp_path / "runs"), "--toy-label", "hi"])
    finally:
        signal.signal(signal.SIGTERM, handler)
        STRATEGIES.remove("toy")
        MAP_LOSSES.remove("toy-l1")
        unregister(card.name)
    assert code == 0
    trials = pd.read_parquet(tmp_path / "runs" / "toy-toy" / "trials.parquet")
    assert len(trials) == 2 and (trials["toy_label"] == "hi").all(), "the option parsed, the strategy's column filled"
    # Trained in Ray's workers, which get the family with what register() gave it and the loss MAP_LOSSES.add
    # registered here (without either, every trial errored there).
    assert trials["status"].isin(["completed", "stopped"]).all(), trials[["status", "error"]]
    epochs = pd.read_parquet(tmp_path / "runs" / "toy-toy" / "epochs.parquet")
    assert len(epochs) >= 2 and epochs["toy_brightness"].notna().all(), "the family's metric kept"


def test_contributing_counts_the_files_a_plug_in_touches():
    """CONTRIBUTING.md says how many files each kind of plug-in touches; the test above added one of each from one
    file, registering it where CONTRIBUTING says (STRATEGIES.add, register)."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    rows = dict(re.findall(r"^\| (a strategy|a model family|a map loss) \| (\d+) \|", text, re.M))
    assert rows == {"a strategy": "1", "a model family": "2", "a map loss": "1"}, rows
    assert "STRATEGIES.add" in text and "register(" in text and "MAP_LOSSES.add" in text

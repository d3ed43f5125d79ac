"""Every family as a real Ray Tune trainable: metrics, checkpoints, resume, divergence."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from trainables.families import FAMILIES, find_family
from trainables.config import parse_config
from trainables.checkpoints import TrialStore
from trainables.evaluation import DIVERGED_L1
from trainables.loop import run_trial, train

TINY = {"epochs": 2, "width_divisor": 16, "train_eval_size": 16}
FAMILY_EXTRA = {"autoencoder": {}, "gan": {"l1_weight": 100.0},
                "diffusion": {"steps": 50, "sampling_steps": 3, "final_sampling_steps": 4, "prediction": "x0"}}


def _tune(trainable, config, data, storage):
    """Run one trial through a real Tuner; return every result it reported, in order."""
    import pandas as pd
    from ray import tune

    rows = []

    class Collect(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            rows.append(dict(result))

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=data), {"cpu": 1}),
        param_space=config,
        tune_config=tune.TuneConfig(metric="best_val_l1", mode="min", num_samples=1),
        run_config=tune.RunConfig(storage_path=str(storage), verbose=0, callbacks=[Collect()]),
    )
    result = tuner.fit()[0]
    assert result.error is None, result.error
    return pd.DataFrame(rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_trainable_reports_checkpoints_and_resumes(family, tiny_data, ray_local, tmp_path):
    trainable = functools.partial(train, family=find_family(family))
    config = {**TINY, **FAMILY_EXTRA[family], "checkpoint_root": str(tmp_path / "trials")}
    first = _tune(trainable, config, tiny_data, tmp_path / "ray")
    assert list(first["epoch"]) == [1, 2]
    for column in ("train_l1", "val_l1", "best_val_l1", "val_spearman", "wall_seconds", "epoch_seconds"):
        assert column in first and first[column].notna().all(), column
    assert ((first["val_l1"] >= 0) & (first["val_l1"] <= 2)).all()
    assert first["best_val_l1"].iloc[-1] == first["val_l1"].min()
    assert first["status"].iloc[-1] == "completed"
    if family == "gan":
        assert {"g_loss", "d_loss"} <= set(first.columns)
    if family == "diffusion":
        assert "noise_loss" in first and "final_val_l1" in first
    folders = list((tmp_path / "trials").iterdir())
    assert len(folders) == 1
    assert {"latest.pt", "best.pt", "predictions.npz"} <= {p.name for p in folders[0].iterdir()}

    # The same config with a larger budget resumes at epoch 3 (replaying 1-2, not retraining).
    second = _tune(trainable, {**config, "epochs": 3}, tiny_data, tmp_path / "ray2")
    assert list(second["epoch"]) == [1, 2, 3]
    assert list(second["replayed"].fillna(False)) == [True, True, False]
    assert second["val_l1"].iloc[0] == first["val_l1"].iloc[0]
    state = TrialStore(folders[0]).load_latest()
    assert state["epoch"] == 3 and state["config"]["epochs"] == 3


def test_unknown_and_mistyped_keys_are_refused():
    config_cls = find_family("gan").config_cls
    with pytest.raises(ValueError, match="unknown config keys.*g_lrr"):
        parse_config({"g_lrr": 0.1}, config_cls)
    with pytest.raises(TypeError, match="g_width must be int"):
        parse_config({"g_width": "64"}, config_cls)


def test_diverging_trial_ends_as_diverged(tiny_data, ray_local, tmp_path):
    trainable = functools.partial(train, family=find_family("autoencoder"))
    config = {**TINY, "epochs": 3, "optimizer": "sgd", "lr": 1e12, "momentum": 0.9, "norm": "none",
              "checkpoint_root": str(tmp_path / "trials")}
    rows = _tune(trainable, config, tiny_data, tmp_path / "ray")
    last = rows.iloc[-1]
    assert last["status"] == "diverged" and last["best_val_l1"] == DIVERGED_L1
    assert len(rows) < 3 or rows["status"].tolist().count("diverged") == 1
    # Resuming a diverged trial does not train it again.
    family_cls = find_family("autoencoder")
    replayed = []
    run_trial(config, tiny_data, family_cls, report=replayed.append)
    assert replayed[-1]["status"] == "diverged" and all(r.get("replayed") for r in replayed)


def test_same_seed_same_curve(tiny_data):
    family_cls = find_family("autoencoder")
    curves = []
    for _ in range(2):
        rows = []
        run_trial({**TINY, "epochs": 1}, tiny_data, family_cls, report=rows.append)
        curves.append(rows[-1]["val_l1"])
    assert curves[0] == curves[1] and math.isfinite(curves[0])


def test_predictions_regenerate_from_checkpoint(tiny_data, tmp_path):
    from search.predict import predict_from_checkpoint

    family_cls = find_family("gan")

    config = {**TINY, "epochs": 1, "checkpoint_root": str(tmp_path)}
    run_trial(config, tiny_data, family_cls, report=lambda row: None)
    folder = next(tmp_path.iterdir())
    stored = __import__("numpy").load(folder / "predictions.npz")
    again = predict_from_checkpoint(folder / "best.pt", "gan", tiny_data.val_images)
    assert again.shape == stored["predictions"].shape
    assert (abs(again.astype(int) - stored["predictions"].astype(int)) <= 1).all()
    assert torch.is_tensor(torch.from_numpy(again))


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(tiny_data, tmp_path):
    """A cut-off latest.pt: the trial resumes from previous.pt, says so once, and ends where it would have."""

    family_cls = find_family("autoencoder")

    config = {**TINY, "epochs": 3, "checkpoint_root": str(tmp_path / "trials")}
    reference = []
    run_trial({**config, "checkpoint_root": str(tmp_path / "reference")}, tiny_data, family_cls,
              report=reference.append)
    first = []
    run_trial({**config, "epochs": 2}, tiny_data, family_cls, report=first.append)
    folder = next((tmp_path / "trials").iterdir())
    latest = folder / "latest.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # epoch 2 is cut off

    resumed = []
    run_trial(config, tiny_data, family_cls, report=resumed.append)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]  # epoch 1 replayed, 2 and 3 trained again
    assert "latest.pt is unreadable" in resumed[0]["notice"] and "resumed from previous.pt (epoch 1)" in resumed[0]["notice"]
    assert not any("notice" in r for r in resumed[1:])
    assert [r["val_l1"] for r in resumed] == [r["val_l1"] for r in reference]  # bit for bit

    # Both unreadable: start afresh, and say so.
    for name in ("latest.pt", "previous.pt"):
        (folder / name).write_bytes(b"not a checkpoint")
    again = []
    run_trial(config, tiny_data, family_cls, report=again.append)
    assert "restarted from epoch 0" in again[0]["notice"] and [r["epoch"] for r in again] == [1, 2, 3]
    assert [r["val_l1"] for r in again] == [r["val_l1"] for r in reference]


def test_channels_last_on_the_cpu_where_a_family_measured_it():
    """--channels-last auto on the CPU: on for the GAN (benchmarks/levers.py measured it there), off for the others;
    on and off are obeyed."""
    device = torch.device("cpu")
    for name, auto in (("gan", True), ("autoencoder", False), ("diffusion", False)):
        family = find_family(name)
        for switch, expected in (("auto", auto), ("on", True), ("off", False)):
            settings, hp = parse_config({**TINY, **FAMILY_EXTRA[name], "channels_last": switch}, family.config_cls)
            built = family.build(hp, settings, device)
            assert built.fast.channels_last is expected, (name, switch)
            weight = next(p for p in built.modules[next(iter(built.modules))].parameters() if p.dim() == 4)
            assert weight.is_contiguous(memory_format=torch.channels_last) is expected or weight.shape[-1] == 1


def test_auto_precision_is_bf16_only_where_the_gpu_computes_it(monkeypatch):
    """A T4 or V100 (compute capability 7.x) trains in fp16 with loss scaling: torch's is_bf16_supported() says yes
    there too (emulated, without tensor cores). Ampere and later train in bf16; the CPU in fp32."""
    import torch

    from trainables.device import Precision

    cuda = torch.device("cuda")
    for capability, expected in (((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # as torch answers on a T4
        chosen = Precision(cuda, "auto")
        assert chosen.name == expected and chosen.needs_scaling == (expected == "fp16"), capability
    assert Precision(torch.device("cpu"), "auto").name == "fp32"


def test_a_ray_worker_trains_on_cuda_only_where_ray_gave_it_a_gpu(monkeypatch):
    """Ray leaves every GPU visible to a task that asked for none: such a trial (--gpus-per-trial 0, or GPUs Ray
    could not count) trains on the CPU, not on cuda:0 beside the others; outside Ray, CUDA whenever there is one."""
    import ray
    import torch

    import trainables.device as device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for in_worker, given, expected in ((True, [], "cpu"), (True, ["0"], "cuda"), (False, [], "cuda")):
        monkeypatch.setattr(device, "_in_ray_worker", lambda w=in_worker: w)
        monkeypatch.setattr(ray, "get_gpu_ids", lambda g=given: g)
        assert device.trial_device().type == expected, (in_worker, given)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.trial_device().type == "cpu"

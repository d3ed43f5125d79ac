"""Several trials share a GPU through fractional resources (fake GPUs when none exist)."""

from __future__ import annotations

import pandas as pd
import pytest

from search.runner.driver import run_study
from search.runner.options import SearchOptions


def test_fractional_gpus_pack_four_trials_on_one_gpu(tmp_path):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # One GPU as Ray sees it; on a machine without CUDA the trials fall back to the CPU.
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        options = SearchOptions(strategy="random", model="autoencoder", preset="smoke", final_top_k=0, samples=4, epochs=3,
                                gpus_per_trial=0.25, cpus_per_trial=0.5, scheduler="none", runs_dir=str(tmp_path),
                                study="packed")
        summary = run_study(options)
    finally:
        ray.shutdown()
    assert summary.counts["completed"] == 4
    trials = pd.read_parquet(tmp_path / "packed" / "trials.parquet")
    config = pd.read_json(tmp_path / "packed" / "summary.json", typ="series")
    assert config["preset"] == "smoke"
    # All four ran at the same time: each started before any finished.
    assert trials["started_at"].max() < trials["ended_at"].min()


def test_auto_share_fits_memory_and_idle_time():
    from search.runner.packing import choose_share
    from trainables.measure import GpuProbe

    # 80 GB, 6 GB a trial: 11 fit; 25% busy: 4 keep it busy.
    share = choose_share(GpuProbe(total_mb=81_000, footprint_mb=6_000, util=0.25))
    assert (share.per_gpu, share.fraction) == (4, 0.25)
    assert choose_share(GpuProbe(total_mb=81_000, footprint_mb=6_000, util=0.9)).per_gpu == 2
    # Memory binds: 30 GB a trial on an 80 GB GPU leaves room for 2.
    assert choose_share(GpuProbe(total_mb=81_000, footprint_mb=30_000, util=0.1)).per_gpu == 2
    # A trial that keeps the GPU busy gets it alone; one bigger than the GPU too (and may still fail).
    assert choose_share(GpuProbe(total_mb=81_000, footprint_mb=1_000, util=0.97)).fraction == 1.0
    assert choose_share(GpuProbe(total_mb=16_000, footprint_mb=20_000, util=0.1)).fraction == 1.0
    # Never more than 8, and fractions Ray accepts (n x fraction <= 1).
    share = choose_share(GpuProbe(total_mb=81_000, footprint_mb=500, util=0.01))
    assert share.per_gpu == 8 and share.fraction * 8 <= 1.0
    assert choose_share(GpuProbe(total_mb=81_000, footprint_mb=20_000, util=0.3)).fraction == 0.3333


    # NVML could not be read: one trial a GPU, never packed by memory alone (which would fit 8 here).
    blind = choose_share(GpuProbe(total_mb=81_000, footprint_mb=500, util=None, nvml_error="NVMLError_LibraryNotFound"))
    assert (blind.per_gpu, blind.fraction) == (1, 1.0) and "NVMLError_LibraryNotFound" in blind.why


NVML_READ = {"total_mb": 24_000, "footprint_mb": 6_500, "util": 0.2, "epoch_s": [0.5, 0.9]}
NVML_MISSING = {**NVML_READ, "util": None, "nvml_error": "NVMLError_LibraryNotFound: NVML Shared Library Not Found"}


@pytest.mark.parametrize("probe, share, line", [
    (NVML_READ, 0.3333, "--gpus-per-trial auto: 0.3333 (3 trials per GPU"),
    (NVML_MISSING, 1.0, "--gpus-per-trial auto: 1 (1 trial per GPU: its utilisation could not be read through NVML "
                        "(NVMLError_LibraryNotFound"),
], ids=["nvml", "no-nvml"])
def test_gpus_per_trial_auto_packs_trials_by_the_measured_trial(tmp_path, monkeypatch, capsys, probe, share, line):
    import json

    import ray

    if ray.is_initialized():
        ray.shutdown()
    # A fake GPU and a fake measurement (this machine has no CUDA): 3 trials fit by memory and by idle time.
    monkeypatch.setenv("MEMSEARCH_FAKE_GPU_PROBE", json.dumps(probe))
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        options = SearchOptions(strategy="random", model="autoencoder", preset="smoke", final_top_k=0, samples=3, epochs=3,
                                gpus_per_trial="auto", cpus_per_trial=0.5, scheduler="none", runs_dir=str(tmp_path),
                                study="auto")
        summary = run_study(options)
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert line in out and sum(1 for said in out.splitlines() if "NVML" in said) == (probe["util"] is None)
    assert "one epoch of the study default measured alone on a GPU at 0.5 s" in out  # the probe's timing serves the estimate
    assert summary.counts["completed"] == 3
    study = json.loads((tmp_path / "auto" / "study.json").read_text())
    assert study["segments"][-1]["gpus_per_trial"] == share
    trials = pd.read_parquet(tmp_path / "auto" / "trials.parquet")
    at_once = trials["started_at"].max() < trials["ended_at"].min()
    assert at_once == (share < 1)  # all three at once on the one GPU, or one after another


def test_a_trial_out_of_gpu_memory_is_retried_with_a_larger_share(tmp_path, capsys):
    import ray
    import torch
    from ray import tune

    from search.runner.packing import out_of_memory_retry

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False)

    def trainable(config):
        share = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
        if share < 0.5:  # as a real trial would, when its share of the GPU's memory is too small
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        tune.report({"share": share})

    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 0.5, "gpu": 0.125}),
            param_space={"x": tune.grid_search([0, 1])},
            run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=[out_of_memory_retry()], verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=1)))
        results = tuner.fit()
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert not results.errors  # not lost, and three failures did not use up max_failures=1
    assert sorted(r.metrics["share"] for r in results) == [0.5, 0.5]
    assert "ran out of GPU memory with 0.125 of a GPU; running it again from its checkpoint with 0.25" in out
    assert "with 0.25 of a GPU; running it again from its checkpoint with 0.5" in out

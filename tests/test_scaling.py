"""Several trials share a GPU through fractional resources (fake GPUs when none exist)."""

from __future__ import annotations

import pandas as pd

from search.driver import SearchOptions, run_study


def test_fractional_gpus_pack_four_trials_on_one_gpu(tmp_path):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # One GPU as Ray sees it; on a machine without CUDA the trials fall back to the CPU.
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
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

"""Section 1 of the benchmark suite (python -m benchmarks.run --only overhead): the framework's cost.

An epoch inside our trainable under Ray Tune against a bare PyTorch loop for the same model on the same
tensors (written out per family on purpose: it is what a hand-rolled script does), the cost of Ray's own
result files per epoch, and a whole search's wall time against its training time / concurrency.
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
import time
from dataclasses import fields
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.diffusion import DenoiserConfig, NoiseSchedule, build_denoiser, sample
from models.layers import scaled_width
from models.patchgan import PatchGANConfig, build_patchgan
from models.unet import UNetConfig, build_unet

from trainables.augment import diff_augment, hide_invalid
from trainables.config import PLAIN_DENOISE_LOSSES, AugmentConfig
from trainables.data import VMSDataset
from trainables.evaluation import as_float
from trainables.families import FAMILIES, find_family
from trainables.loop import train
from trainables.losses import masked_l1, masked_map_loss, masked_mse

TRAIN_EVAL = 160  # training images on which train L1 is measured each epoch (as the cpu preset)


def study_defaults(family: str) -> dict[str, Any]:
    from search.study_file import load_space

    space = load_space(family)
    return space.default_config()


# A family's bare loop: its model (train/eval mode), one optimisation step on an augmented batch, and its prediction.
Bare = tuple[nn.Module, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None], Callable[[torch.Tensor], torch.Tensor]]


def _bare_gan(hp: dict[str, Any], width_divisor: int) -> Bare:
    """pix2pix by hand: the generator's least-squares and map-loss step, then the discriminator's."""
    gen = build_unet(UNetConfig(width=scaled_width(hp["g_width"], width_divisor), norm=hp["g_norm"]))
    disc = build_patchgan(PatchGANConfig(width=scaled_width(hp["d_width"], width_divisor), norm=hp["d_norm"]))
    g_opt = torch.optim.Adam(gen.parameters(), lr=hp["g_lr"], betas=(hp["g_beta1"], 0.999))
    d_opt = torch.optim.Adam(disc.parameters(), lr=hp["d_lr"], betas=(hp["d_beta1"], 0.999))

    def step(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> None:
        disc.requires_grad_(False)
        logits = gen.logits(x)
        fake = torch.tanh(logits)
        g_loss = (F.mse_loss(disc(hide_invalid(fake, valid), x), torch.ones(len(x), 1, 4, 4))
                  + hp["l1_weight"] * masked_map_loss(hp["map_loss"], logits, y, valid))
        g_opt.zero_grad()
        g_loss.backward()
        g_opt.step()
        disc.requires_grad_(True)
        fake_s, real_s = disc(hide_invalid(fake.detach(), valid), x), disc(hide_invalid(y, valid), x)
        d_loss = 0.5 * (F.mse_loss(fake_s, torch.zeros_like(fake_s)) + F.mse_loss(real_s, torch.ones_like(real_s)))
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()

    return gen, step, gen


def _bare_diffusion(hp: dict[str, Any], width_divisor: int) -> Bare:
    """The denoiser's noise-prediction step; validation samples maps with the few-step sampler."""
    model = build_denoiser(DenoiserConfig(width=scaled_width(hp["width"], width_divisor), norm=hp["norm"]), hp["steps"])
    on_logits = hp["denoise_loss"] not in PLAIN_DENOISE_LOSSES  # a map loss reads the x0 output as the map's logits
    schedule = NoiseSchedule(hp["schedule"], hp["steps"], hp["beta_start"], hp["beta_end"], prediction=hp["prediction"],
                             x0_logits=on_logits)
    loss_fn = (functools.partial(masked_map_loss, hp["denoise_loss"]) if on_logits
               else {"mse": masked_mse, "l1": masked_l1}[hp["denoise_loss"]])
    opt = torch.optim.Adam(model.parameters(), lr=hp["lr"], betas=(hp["beta1"], 0.999))

    def step(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> None:
        y = hide_invalid(y, valid)
        t = torch.randint(0, hp["steps"], (len(x),))
        noise = torch.randn_like(y)
        loss = loss_fn(model(x, schedule.add_noise(y, noise, t), t), schedule.target(y, noise, t), valid)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return model, step, lambda x: sample(model, schedule, x, sampling_steps=hp["sampling_steps"])


def _bare_autoencoder(hp: dict[str, Any], width_divisor: int) -> Bare:
    model = build_unet(UNetConfig(width=scaled_width(hp["width"], width_divisor), norm=hp["norm"]))
    opt = torch.optim.Adam(model.parameters(), lr=hp["lr"], betas=(hp["beta1"], 0.999))

    def step(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> None:
        loss = masked_map_loss(hp["map_loss"], model.logits(x), y, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return model, step, model


# The bare loops are written by hand per family on purpose: they are what our loop's overhead is measured against.
BARE = {"autoencoder": _bare_autoencoder, "gan": _bare_gan, "diffusion": _bare_diffusion}


def _bare_epoch(family: str, hp: dict[str, Any], data: VMSDataset, width_divisor: int) -> Callable[[], tuple[float, float]]:
    """A plain PyTorch loop for the same model on the same tensors, with the same loss and augmentation: train, then
    one pass over val and over the fixed training subset. Each call returns its seconds (training, evaluation)."""
    images, maps = torch.from_numpy(data.train_images), torch.from_numpy(data.train_maps)
    val_images, val_maps = torch.from_numpy(data.val_images), torch.from_numpy(data.val_maps)
    batch = hp["batch_size"]
    train_eval = torch.linspace(0, len(images) - 1, min(TRAIN_EVAL, len(images))).long()
    augment = AugmentConfig(**{f.name: hp[f.name] for f in fields(AugmentConfig) if f.name in hp})
    model, step, predict = BARE[family](hp, width_divisor)

    def epoch() -> tuple[float, float]:
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(images))
        for first in range(0, len(images), batch):
            idx = order[first : first + batch]
            if len(idx) < 2:
                continue
            step(*diff_augment(as_float(images[idx]), as_float(maps[idx]), augment))
        trained = time.perf_counter()
        model.eval()
        with torch.no_grad():  # the same measurements our loop makes: val L1, and train L1 on a fixed subset
            for split_images, split_maps in ((val_images, val_maps), (images[train_eval], maps[train_eval])):
                for first in range(0, len(split_images), 64):
                    x = as_float(split_images[first : first + 64])
                    F.l1_loss(predict(x), as_float(split_maps[first : first + 64]))
        return trained - start, time.perf_counter() - trained

    return epoch


def _timed(cls):
    """A Ray logger callback that adds up the time it spends on each reported result."""

    class Timed(cls):
        spent, calls = 0.0, 0

        def on_trial_result(self, *args, **kwargs):
            start = time.perf_counter()
            super().on_trial_result(*args, **kwargs)
            self.spent += time.perf_counter() - start
            self.calls += 1

    return Timed()


def _ours(family: str, config: dict[str, Any], data: VMSDataset, loggers: list[Any]) -> list[dict[str, Any]]:
    """One trial of ``config`` under Ray Tune with Ray's result files written; its reported rows."""
    from ray import tune

    rows: list[dict] = []

    class Collect(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            rows.append(dict(result))

    with tempfile.TemporaryDirectory() as tmp:
        trainable = functools.partial(train, family=find_family(family))
        tune.Tuner(tune.with_resources(tune.with_parameters(trainable, data=data), {"cpu": 1}),
                   param_space={**config, "checkpoint_root": tmp},
                   run_config=tune.RunConfig(storage_path=tmp, verbose=0, callbacks=[Collect(), *loggers])).fit()
    return rows


def _paired(family: str, data: VMSDataset, repeat: int, epochs: int, divisor: int, threads: int) -> dict[str, float]:
    """One repeat of one family: a trial under Ray Tune, then the bare loop; seconds per epoch, medians."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    hp = study_defaults(family)
    if family == "diffusion":
        hp.update(prediction="x0", steps=500)
    loggers = [_timed(cls) for cls in (JsonLoggerCallback, CSVLoggerCallback, TBXLoggerCallback)]
    # The bare loop keeps PyTorch's default memory format, so ours does too: what differs is the framework.
    config = {**hp, "epochs": epochs, "width_divisor": divisor, "threads": threads,
              "train_eval_size": TRAIN_EVAL, "channels_last": "off", "seed": repeat}
    rows = _ours(family, config, data, loggers)
    walls = [r["wall_seconds"] for r in rows]
    steady = rows[1:]  # the first epoch warms up
    row = {"ours_s": statistics.median(b - a for a, b in zip(walls, walls[1:])),
           "ours_train_s": statistics.median(r["train_seconds"] for r in steady),
           "ours_eval_s": statistics.median(r["eval_seconds"] for r in steady),
           "ray_logs_s": sum(cb.spent for cb in loggers) / max(1, min(cb.calls for cb in loggers))}
    torch.set_num_threads(threads)
    torch.manual_seed(repeat)
    epoch = _bare_epoch(family, hp, data, divisor)
    epoch()  # warm-up
    bare = [epoch() for _ in range(epochs - 1)]
    row.update(bare_s=statistics.median(t + e for t, e in bare), bare_train_s=statistics.median(t for t, _ in bare),
               bare_eval_s=statistics.median(e for _, e in bare))
    row["ratio"] = row["ours_s"] / row["bare_s"]
    return row


def bench_overhead(data: VMSDataset, quick: bool) -> dict[str, Any]:
    """Epoch time inside our trainable under Ray Tune against a bare loop, same model, loss and tensors, paired
    over repeats: each repeat runs one trial under Ray Tune, then the bare loop, for every family in turn.

    Ours is the time between two reported epochs as the trial sees it (``wall_seconds``: training, evaluation, the
    checkpoint and the report); the bare loop's is its training plus its evaluation. The first epoch of each warms
    up and is left out; each repeat's ratio is of the medians over its other epochs."""
    import ray

    from benchmarks.search import interval

    # Repeats: enough for the ratio's interval to resolve the 5% target (at 5, each family's spanned it).
    epochs, repeats = (4, 20) if quick else (6, 20)
    divisor = 8
    threads = 1
    out: dict[str, Any] = {"epochs": epochs, "repeats": repeats, "width_divisor": divisor, "threads": threads,
                           "families": {}}
    measured: dict[str, list[dict[str, float]]] = {family: [] for family in FAMILIES}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for repeat in range(repeats):
            for family in FAMILIES:
                row = _paired(family, data, repeat, epochs, divisor, threads)
                measured[family].append(row)
                print(f"  overhead {family} repeat {repeat + 1}/{repeats}: ours {row['ours_s']:.2f} s/epoch "
                      f"(training {row['ours_train_s']:.2f}, evaluation {row['ours_eval_s']:.2f}), bare "
                      f"{row['bare_s']:.2f} (training {row['bare_train_s']:.2f}, evaluation {row['bare_eval_s']:.2f}), "
                      f"ratio {row['ratio']:.3f}", flush=True)
    finally:
        ray.shutdown()
    torch.set_num_threads(os.cpu_count() or 1)
    for family, rows in measured.items():
        summary = {key: statistics.median(r[key] for r in rows) for key in rows[0] if key != "ratio"}
        ratio, half = interval([r["ratio"] for r in rows])
        out["families"][family] = {**summary, "ratio": ratio, "ratio_low": ratio - half, "ratio_high": ratio + half,
                                   "ratios": [r["ratio"] for r in rows],
                                   "ray_logs_ms": summary["ray_logs_s"] * 1000,
                                   "ray_logs_fraction": summary["ray_logs_s"] / summary["ours_s"]}
    out["search"] = _search_overhead()
    return out


def _search_overhead() -> dict[str, Any]:
    """Scheduling overhead of a whole search: wall time against training time / concurrency."""
    from benchmarks.search import run_search

    summary, trials = run_search("random", "autoencoder", seed=0, samples=8, scheduler="none", preset="bench-small")
    train_sum = float(trials["wall_seconds"].sum())
    span = (trials["ended_at"].max() - trials["started_at"].min()).total_seconds()
    out = {"trials": len(trials), "wall_s": summary.wall_seconds, "trials_span_s": span,
           "train_s_sum": train_sum, "concurrency": 2, "ratio": summary.wall_seconds / (train_sum / 2),
           "ratio_span": span / (train_sum / 2)}
    print(f"  whole search: wall {summary.wall_seconds:.1f} s (first start to last end {span:.1f} s) vs training "
          f"{train_sum:.1f} s / 2 -> {out['ratio']:.2f} ({out['ratio_span']:.2f})", flush=True)
    return out

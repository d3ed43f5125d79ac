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
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.diffusion import DenoiserConfig, NoiseSchedule, build_denoiser, sample
from models.layers import scaled_width
from models.patchgan import PatchGANConfig, build_patchgan
from models.unet import UNetConfig, build_unet

from trainables.augment import diff_augment, hide_invalid
from trainables.data import VMSDataset
from trainables.evaluation import as_float
from trainables.families import FAMILIES, find_family
from trainables.loop import train
from trainables.losses import masked_l1, masked_mse

TRAIN_EVAL = 160  # training images on which train L1 is measured each epoch (as the cpu preset)


def study_defaults(family: str) -> dict[str, Any]:
    from search.study_file import load_space

    space = load_space(family)
    return space.default_config()


# A family's bare loop: its model (train/eval mode), one optimisation step on an augmented batch, and its prediction.
Bare = tuple[nn.Module, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None], Callable[[torch.Tensor], torch.Tensor]]


def _bare_gan(hp: dict[str, Any], width_divisor: int) -> Bare:
    """pix2pix by hand: the generator's least-squares and L1 step, then the discriminator's."""
    gen = build_unet(UNetConfig(width=scaled_width(hp["g_width"], width_divisor), norm=hp["g_norm"]))
    disc = build_patchgan(PatchGANConfig(width=scaled_width(hp["d_width"], width_divisor), norm=hp["d_norm"]))
    g_opt = torch.optim.Adam(gen.parameters(), lr=hp["g_lr"], betas=(hp["g_beta1"], 0.999))
    d_opt = torch.optim.Adam(disc.parameters(), lr=hp["d_lr"], betas=(hp["d_beta1"], 0.999))

    def step(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> None:
        disc.requires_grad_(False)
        fake = gen(x)
        g_loss = (F.mse_loss(disc(hide_invalid(fake, valid), x), torch.ones(len(x), 1, 4, 4))
                  + hp["l1_weight"] * masked_l1(fake, y, valid))
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
    schedule = NoiseSchedule(hp["schedule"], hp["steps"], hp["beta_start"], hp["beta_end"], prediction=hp["prediction"])
    opt = torch.optim.Adam(model.parameters(), lr=hp["lr"], betas=(hp["beta1"], 0.999))

    def step(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> None:
        y = hide_invalid(y, valid)
        t = torch.randint(0, hp["steps"], (len(x),))
        noise = torch.randn_like(y)
        loss = masked_mse(model(x, schedule.add_noise(y, noise, t), t), schedule.target(y, noise, t), valid)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return model, step, lambda x: sample(model, schedule, x, sampling_steps=hp["sampling_steps"])


def _bare_autoencoder(hp: dict[str, Any], width_divisor: int) -> Bare:
    model = build_unet(UNetConfig(width=scaled_width(hp["width"], width_divisor), norm=hp["norm"]))
    opt = torch.optim.Adam(model.parameters(), lr=hp["lr"], betas=(hp["beta1"], 0.999))

    def step(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> None:
        loss = masked_l1(model(x), y, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return model, step, model


# The bare loops are written by hand per family on purpose: they are what our loop's overhead is measured against.
BARE = {"autoencoder": _bare_autoencoder, "gan": _bare_gan, "diffusion": _bare_diffusion}


def _bare_epoch(family: str, hp: dict[str, Any], data: VMSDataset, width_divisor: int) -> Callable[[], None]:
    """A plain PyTorch loop for the same model on the same tensors: train, then one val pass."""
    images, maps = torch.from_numpy(data.train_images), torch.from_numpy(data.train_maps)
    val_images, val_maps = torch.from_numpy(data.val_images), torch.from_numpy(data.val_maps)
    batch = hp["batch_size"]
    train_eval = torch.linspace(0, len(images) - 1, min(TRAIN_EVAL, len(images))).long()
    model, step, predict = BARE[family](hp, width_divisor)

    def epoch() -> None:
        model.train()
        order = torch.randperm(len(images))
        for first in range(0, len(images), batch):
            idx = order[first : first + batch]
            if len(idx) < 2:
                continue
            step(*diff_augment(as_float(images[idx]), as_float(maps[idx])))
        model.eval()
        with torch.no_grad():  # the same measurements our loop makes: val L1, and train L1 on a fixed subset
            for split_images, split_maps in ((val_images, val_maps), (images[train_eval], maps[train_eval])):
                for first in range(0, len(split_images), 64):
                    x = as_float(split_images[first : first + 64])
                    F.l1_loss(predict(x), as_float(split_maps[first : first + 64]))

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


def bench_overhead(data: VMSDataset, quick: bool) -> dict[str, Any]:
    """Epoch time inside our trainable under Ray Tune against a bare loop, same model, same tensors."""
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    epochs = 4 if quick else 8
    divisor = 8
    threads = 1
    out: dict[str, Any] = {"epochs": epochs, "width_divisor": divisor, "threads": threads, "families": {}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for family in FAMILIES:
            hp = study_defaults(family)
            if family == "diffusion":
                hp.update(prediction="x0", steps=500)
            trainable = functools.partial(train, family=find_family(family))
            rows: list[dict] = []

            class Collect(tune.Callback):
                def on_trial_result(self, iteration, trials, trial, result, **info):
                    rows.append(dict(result))

            loggers = [_timed(cls) for cls in (JsonLoggerCallback, CSVLoggerCallback, TBXLoggerCallback)]

            # The bare loop keeps PyTorch's default memory format, so ours does too: what differs is the framework.
            config = {**hp, "epochs": epochs, "width_divisor": divisor, "threads": threads, "train_eval_size": TRAIN_EVAL,
                      "channels_last": "off"}
            with tempfile.TemporaryDirectory() as tmp:
                config["checkpoint_root"] = tmp
                tune.Tuner(tune.with_resources(tune.with_parameters(trainable, data=data), {"cpu": 1}),
                           param_space=config,
                           run_config=tune.RunConfig(storage_path=tmp, verbose=0, callbacks=[Collect(), *loggers])).fit()
            ours = statistics.median([r["epoch_seconds"] for r in rows[1:]])  # the first epoch warms up
            # Ray's own result files (result.json, progress.csv, TensorBoard events), which the search
            # writes for ExperimentAnalysis and TensorBoard: their cost per reported epoch.
            logs_s = sum(cb.spent for cb in loggers) / max(1, min(cb.calls for cb in loggers))
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            epoch = _bare_epoch(family, hp, data, divisor)
            epoch()  # warm-up
            bare_times = []
            for _ in range(epochs - 1):
                start = time.perf_counter()
                epoch()
                bare_times.append(time.perf_counter() - start)
            bare = statistics.median(bare_times)
            out["families"][family] = {"ours_s": ours, "bare_s": bare, "ratio": ours / bare,
                                       "ray_logs_ms": logs_s * 1000, "ray_logs_fraction": logs_s / ours}
            print(f"  overhead {family}: ours {ours:.2f} s/epoch, bare {bare:.2f} s/epoch, ratio {ours / bare:.3f}; "
                  f"Ray's result files {logs_s * 1000:.2f} ms per epoch ({logs_s / ours:.3%} of an epoch)", flush=True)
    finally:
        ray.shutdown()
    torch.set_num_threads(os.cpu_count() or 1)
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

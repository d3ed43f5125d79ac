"""Shapes, norms and the diffusion schedule/samplers, for every family at 64x64."""

from __future__ import annotations

import pytest
import torch

import itertools

from models.diffusion import (MAX_TERMINAL_SIGNAL, DDIMSampler, DenoiserConfig, NoiseSchedule, beta_schedule,
                              build_denoiser, sample)
from models.layers import scaled_width
from models.registry import GAN_LOSSES, NORMS
from models.patchgan import PatchGANConfig, build_patchgan, gan_loss
from models.unet import UNetConfig, build_unet


@pytest.mark.parametrize("width", [32, 50])
@pytest.mark.parametrize("norm", NORMS)
def test_unet_and_patchgan_shapes(width, norm):
    image = torch.randn(2, 3, 64, 64)
    unet = build_unet(UNetConfig(width=width, norm=norm))
    out = unet(image)
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1
    assert unet.down[-1][0].out_channels == 16 * width  # encoder (3, c, 2c, 4c, 8c, 16c)
    disc = build_patchgan(PatchGANConfig(width=width, norm=norm))
    assert disc(out, image).shape == (2, 1, 4, 4)


@pytest.mark.parametrize("width", [32, 50])
def test_denoiser_shape(width):
    net = build_denoiser(DenoiserConfig(width=width, norm="instance"), steps=100)
    out = net(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64), torch.tensor([0, 99]))
    assert out.shape == (2, 3, 64, 64)


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="norm"):
        UNetConfig(norm="layer")


def test_scaled_width():
    assert scaled_width(64, 8) == 8 and scaled_width(100, 1) == 100 and scaled_width(32, 16) == 4


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_schedules_are_valid(name):
    betas = beta_schedule(name, 1000, 1e-4, 0.02)
    assert betas.shape == (1000,) and (betas > 0).all() and (betas < 1).all()
    abar = torch.cumprod(1 - betas, 0)
    assert (abar[1:] <= abar[:-1]).all() and abar[-1] < 0.5


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_targets_invert_exactly(prediction):
    schedule = NoiseSchedule("linear", 200, 1e-4, 0.02, prediction=prediction)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 50, 120, 199])
    x_t = schedule.add_noise(x0, noise, t)
    rec_x0, rec_eps = schedule.split(schedule.target(x0, noise, t), x_t, t)
    assert torch.allclose(rec_x0, x0, atol=1e-4)
    assert torch.allclose(rec_eps[1:], noise[1:], atol=1e-3)


@pytest.mark.parametrize("sampler, k", [("ddim", 5), ("ddim", 1), ("ancestral", 0)])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_samplers_give_maps_in_range(sampler, k, prediction):
    torch.manual_seed(0)
    net = build_denoiser(DenoiserConfig(width=4, norm="batch"), steps=30).eval()
    schedule = NoiseSchedule("cosine", 30, prediction=prediction)
    visited = []
    net.register_forward_hook(lambda module, args, out: visited.append(int(args[2][0])))
    out = sample(net, schedule, torch.randn(2, 3, 64, 64), sampler=sampler, sampling_steps=k)
    assert out.shape == (2, 3, 64, 64) and out.min() >= -1 and out.max() <= 1 and torch.isfinite(out).all()
    assert len(visited) == (30 if sampler == "ancestral" else k)
    assert visited[0] == 29  # every sampler starts at the last trained step, where training reached pure noise


@pytest.mark.parametrize("steps, k, expected", [
    (1000, 10, [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
    (1000, 1, [999]),
    (500, 4, [499, 374, 249, 124]),
    (30, 50, list(range(29, -1, -1))),  # more steps than trained: every step once
])
def test_ddim_visits_trailing_timesteps(steps, k, expected):
    sampler = DDIMSampler(NoiseSchedule("linear", steps, 1e-4, 0.02, prediction="x0"))
    sampler.set_timesteps(k)
    assert sampler.timesteps == expected


def _study_values(space, name):
    """Every value a study file lets a parameter take: its candidates and its range's ends."""
    found = set()
    for choice in space.by_name[name].choices.values():
        found.update(choice.values)
        if choice.has_range:
            found.update((choice.low, choice.high))
    return sorted(found, key=str)


def test_terminal_signal_is_pure_noise_for_every_study_configuration():
    """Sampling starts from pure noise, so training must reach it: below 1% of the map at the last step."""
    from search.study_file import load_space

    space = load_space("diffusion")
    fixed_ztsnr = space.fixed.get("zero_terminal_snr", True)
    combos = list(itertools.product(*(_study_values(space, n) for n in ("schedule", "beta_start", "beta_end",
                                                                          "steps", "prediction"))))
    assert len(combos) > 100
    for schedule, beta_start, beta_end, steps, prediction in combos:
        ns = NoiseSchedule(schedule, int(steps), beta_start, beta_end, prediction=prediction,
                           zero_terminal_snr=fixed_ztsnr)
        assert ns.terminal_signal < MAX_TERMINAL_SIGNAL, (schedule, beta_start, beta_end, steps, prediction)
        assert (ns.alphas_cumprod[1:] <= ns.alphas_cumprod[:-1]).all()
        assert abs(float(ns.alphas_cumprod[0]) - float(torch.cumprod(1 - beta_schedule(schedule, int(steps), beta_start, beta_end), 0)[0])) < 1e-6


def test_schedule_without_rescaling_refuses_a_terminal_signal_above_one_percent():
    # The report's Palette default (linear 1e-6 .. 0.01) over 500 steps keeps 28% of the map.
    with pytest.raises(ValueError, match="28.*% of the map"):
        NoiseSchedule("linear", 500, 1e-6, 0.01, prediction="x0", zero_terminal_snr=False)
    rescaled = NoiseSchedule("linear", 500, 1e-6, 0.01, prediction="x0")
    assert rescaled.terminal_signal == 0.0


@pytest.mark.parametrize("kind", GAN_LOSSES)
def test_gan_losses_are_finite_and_differentiable(kind):
    disc = build_patchgan(PatchGANConfig(width=4, norm="instance"))
    image, real = torch.randn(2, 3, 64, 64), torch.rand(2, 3, 64, 64) * 2 - 1
    fake = torch.tanh(torch.randn(2, 3, 64, 64, requires_grad=True))
    loss = gan_loss(kind)
    g = loss.generator(disc(fake, image))
    d = loss.discriminator(disc, real, fake.detach(), image)
    assert torch.isfinite(g) and torch.isfinite(d)
    g.backward()


class _ScoreByInput(torch.nn.Module):
    """A critic whose score says which map it was shown: +1 for the real one, -1 for the fake."""

    def __init__(self, real):
        super().__init__()
        self.real = real

    def forward(self, vms, image):
        same = (vms - self.real).abs().flatten(1).amax(dim=1) < 1e-6
        return torch.where(same, 1.0, -1.0).view(-1, 1, 1, 1).expand(-1, 1, 4, 4) + 0 * vms.mean()


@pytest.mark.parametrize("kind", GAN_LOSSES)
def test_gan_losses_reward_the_right_side(kind):
    """A critic that tells real from fake must get a lower loss than one that has them swapped, and a
    generator the critic takes for real a lower loss than one it sees through; fails if targets are swapped."""
    image = torch.randn(2, 3, 64, 64)
    real, fake = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    loss = gan_loss(kind, gp_weight=0.0)
    right, swapped = _ScoreByInput(real), _ScoreByInput(fake)
    assert loss.discriminator(right, real, fake, image) < loss.discriminator(swapped, real, fake, image)
    fooled, seen_through = torch.ones(2, 1, 4, 4), -torch.ones(2, 1, 4, 4)
    assert loss.generator(fooled) < loss.generator(seen_through)
    if kind == "lsgan":  # the report's least-squares targets exactly: real 1, fake 0
        perfect = lambda vms, img: torch.where((vms - real).abs().flatten(1).amax(1) < 1e-6, 1.0, 0.0).view(-1, 1, 1, 1)
        assert float(loss.discriminator(perfect, real, fake, image)) == 0.0
        assert float(loss.generator(torch.ones(2, 1, 4, 4))) == 0.0

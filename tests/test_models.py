"""Shapes, norms and the diffusion schedule/samplers, for every family at 64x64."""

from __future__ import annotations

import pytest
import torch

from models.diffusion import DenoiserConfig, NoiseSchedule, beta_schedule, build_denoiser, sample
from models.layers import NORMS, scaled_width
from models.patchgan import GAN_LOSSES, GANLoss, PatchGANConfig, build_patchgan
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
def test_samplers_give_maps_in_range(sampler, k):
    torch.manual_seed(0)
    net = build_denoiser(DenoiserConfig(width=4, norm="batch"), steps=30).eval()
    schedule = NoiseSchedule("cosine", 30, prediction="x0")
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    out = sample(net, schedule, torch.randn(2, 3, 64, 64), sampler=sampler, sampling_steps=k)
    assert out.shape == (2, 3, 64, 64) and out.min() >= -1 and out.max() <= 1
    assert len(calls) == (30 if sampler == "ancestral" else k)


@pytest.mark.parametrize("kind", GAN_LOSSES)
def test_gan_losses_are_finite_and_differentiable(kind):
    disc = build_patchgan(PatchGANConfig(width=4, norm="instance"))
    image, real = torch.randn(2, 3, 64, 64), torch.rand(2, 3, 64, 64) * 2 - 1
    fake = torch.tanh(torch.randn(2, 3, 64, 64, requires_grad=True))
    loss = GANLoss(kind)
    g = loss.generator(disc(fake, image))
    d = loss.discriminator(disc, real, fake.detach(), image)
    assert torch.isfinite(g) and torch.isfinite(d)
    g.backward()

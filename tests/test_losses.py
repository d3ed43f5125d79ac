"""The map losses: why ``l1+ce`` is the default, and that each one is what it says."""

from __future__ import annotations

import pytest
import torch

from models.unet import UNetConfig, build_unet
from trainables.families import find_family
from trainables.config import RunSettings
from trainables.config import MAP_LOSSES
from trainables.losses import masked_map_loss


def test_unet_output_is_the_tanh_of_its_logits():
    torch.manual_seed(0)
    unet = build_unet(UNetConfig(width=4)).eval()
    image = torch.randn(2, 3, 64, 64)
    assert torch.allclose(unet(image), torch.tanh(unet.logits(image)))


def _gradient(name: str, logit: float, target: float) -> float:
    z = torch.full((1, 1, 1, 1), logit, requires_grad=True)
    masked_map_loss(name, z, torch.full((1, 1, 1, 1), target), torch.ones(1, 1, 1, 1)).backward()
    return float(z.grad)


def test_a_lit_pixel_predicted_black_still_pulls_under_ce_but_not_under_l1():
    """The dead-channel mechanism: at a saturated black output L1's gradient vanishes with tanh'."""
    assert abs(_gradient("l1", -8.0, 0.6)) < 1e-5  # tanh'(-8) ~ 5e-7
    for name in ("ce", "l1+ce"):
        # d CE / d z = 2 (sigmoid(2z) - p) = map - truth: about -1.6 here, whatever the saturation.
        assert _gradient(name, -8.0, 0.6) == pytest.approx(-1.6, abs=1e-3)


def test_each_loss_is_minimal_at_the_truth_and_ignores_hidden_pixels():
    truth = torch.tensor([-1.0, -0.2, 0.6]).view(1, 3, 1, 1).expand(2, 3, 4, 4).clone()
    valid = torch.ones(2, 1, 4, 4)
    valid[:, :, :2] = 0
    perfect = torch.atanh(truth.clamp(-0.999, 0.999))
    for name in MAP_LOSSES:
        at_truth = masked_map_loss(name, perfect, truth, valid)
        assert masked_map_loss(name, perfect + 0.3, truth, valid) > at_truth
        changed = truth.clone()
        changed[:, :, :2] = 1.0  # hidden pixels: whatever the map holds there changes nothing
        assert masked_map_loss(name, perfect, changed, valid) == at_truth


def test_sparse_channel_is_learned_with_ce_and_stays_black_with_l1():
    """A one-layer model whose output starts saturated at black, as a dead green channel does.

    The target is lit (0.6) on 3% of the pixels, where the input's first feature is high.
    Under L1 the saturated tanh passes no gradient, so nothing is learned; ``l1+ce`` learns
    to light exactly those pixels.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 2, generator=generator)
    lit = x[:, 0] > 1.88  # about 3% of the pixels
    target = torch.where(lit, 0.6, -1.0).view(-1, 1, 1, 1)
    valid = torch.ones_like(target)
    results = {}
    for name in ("l1", "l1+ce"):
        layer = torch.nn.Linear(2, 1)
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.fill_(-6.0)  # black, saturated
        opt = torch.optim.Adam(layer.parameters(), lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            masked_map_loss(name, layer(x).view(-1, 1, 1, 1), target, valid).backward()
            opt.step()
        with torch.no_grad():
            pred = torch.tanh(layer(x)).view(-1)
        results[name] = (pred[lit].mean().item(), (pred - target.view(-1)).abs().mean().item())
    black_l1 = (-1.0 - target).abs().mean().item()
    assert results["l1"][0] < -0.99  # still black where lit
    assert results["l1"][1] == pytest.approx(black_l1, rel=0.01)
    assert results["l1+ce"][0] > 0.0  # lit where lit
    assert results["l1+ce"][1] < 0.5 * black_l1


@pytest.mark.parametrize("family", ["autoencoder", "gan"])
def test_unknown_map_loss_is_refused(family):
    family_cls = find_family(family)
    config_cls = family_cls.config_cls
    with pytest.raises(ValueError, match="map_loss"):
        family_cls(config_cls(map_loss="l2"), RunSettings(epochs=1, width_divisor=16), torch.device("cpu"))


def test_diffusion_map_losses_read_the_output_as_x0_logits():
    from models.diffusion import NoiseSchedule
    from trainables.config import DiffusionConfig
    from trainables.diffusion import DiffusionFamily

    with pytest.raises(ValueError, match="needs prediction = 'x0'"):
        DiffusionConfig(prediction="eps", denoise_loss="l1+ce")
    schedule = NoiseSchedule("linear", 100, 1e-4, 0.02, prediction="x0", x0_logits=True)
    output, x_t, t = torch.randn(2, 3, 8, 8) * 3, torch.randn(2, 3, 8, 8), torch.tensor([10, 90])
    x0, _ = schedule.split(output, x_t, t)
    assert torch.allclose(x0, torch.tanh(output))  # not clipped: squashed, as the UNet's head
    # One training step with l1+ce: the loss is the map loss of the output's tanh against the map.
    family = DiffusionFamily(DiffusionConfig(denoise_loss="l1+ce", augment=False), RunSettings(epochs=1, width_divisor=16),
                             torch.device("cpu"))
    image, vms = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32).round() * 2 - 1
    losses = family.train_step(image, vms, torch.ones(2, 1, 32, 32))
    assert torch.isfinite(losses["train_loss"]) and losses["train_loss"] > 0
    family.train(False)
    with torch.no_grad():
        maps = family.predict(image)
    assert maps.shape == vms.shape and maps.abs().max() <= 1


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_a_photos_diffusion_map_is_the_one_it_gets_alone_in_any_batch(sampler):
    """predict's maps: a photo's sampling noise comes from its own seeded generator, so its map depends neither on
    the other photos of its batch nor on its place there (the search's evaluation keeps one generator a batch)."""
    from trainables.config import DiffusionConfig
    from trainables.diffusion import DiffusionFamily

    hp = DiffusionConfig(steps=20, final_sampler=sampler, final_sampling_steps=3, augment=False)
    family = DiffusionFamily(hp, RunSettings(epochs=1, width_divisor=16), torch.device("cpu"))
    family.train(False)
    photos = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        batch = family.map_photos(photos)
        alone = [family.map_photos(photos[i : i + 1]) for i in range(3)]
        reordered = family.map_photos(photos.flip(0))
        shared = family.final_predict(photos)  # one generator for the batch: the second photo's noise is not its own
    for i in range(3):
        assert torch.allclose(batch[i : i + 1], alone[i], atol=1e-6) and torch.allclose(reordered[2 - i], batch[i], atol=1e-6)
    assert torch.allclose(alone[0], family.final_predict(photos[:1]), atol=1e-6)
    assert not torch.allclose(shared[1], batch[1], atol=1e-4)

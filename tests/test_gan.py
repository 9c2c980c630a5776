"""Adversarial losses (LARP.md C.2, C.3, C.5): values by hand, noisy targets, LeCam, gradients, cadence."""

from __future__ import annotations

import math

import pytest
import torch

from larp.losses.gan import (
    FAKE_TARGET_MAX,
    REAL_TARGET_MIN,
    GANLossConfig,
    LeCam,
    discriminator_loss,
    discriminator_objective,
    discriminator_step_due,
    generator_loss,
    noisy_targets,
)


def _bce(x: float, y: float) -> float:
    """Binary cross-entropy of logit x against target y, by hand."""
    s = 1.0 / (1.0 + math.exp(-x))
    return -(y * math.log(s) + (1.0 - y) * math.log(1.0 - s))


# ---------------------------------------------------------------- generator loss


def test_generator_loss_by_hand():
    logits = torch.tensor([0.0, 2.0, -1.0])
    expected = -sum(math.log(1.0 / (1.0 + math.exp(-x))) for x in (0.0, 2.0, -1.0)) / 3
    assert generator_loss(logits).item() == pytest.approx(expected, rel=1e-6)
    assert generator_loss(torch.zeros(4)).item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_generator_loss_is_stable_and_fp32():
    loss = generator_loss(torch.tensor([-200.0, 200.0], dtype=torch.float16))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(100.0, rel=1e-4)


# ---------------------------------------------------------------- discriminator loss


def test_discriminator_loss_plain_targets_by_hand():
    real, fake = torch.tensor([1.0, -0.5]), torch.tensor([0.3, -2.0])
    expected = (_bce(1.0, 1) + _bce(-0.5, 1)) / 2 + (_bce(0.3, 0) + _bce(-2.0, 0)) / 2
    assert discriminator_loss(real, fake, smooth=False).item() == pytest.approx(expected, rel=1e-6)


def test_discriminator_loss_noisy_targets_by_hand():
    real, fake = torch.tensor([1.0, -0.5, 3.0]), torch.tensor([0.3, -2.0, 0.0])
    g = torch.Generator().manual_seed(7)
    loss = discriminator_loss(real, fake, generator=g).item()
    # Same draws, in the documented order: real targets first, then fake.
    g = torch.Generator().manual_seed(7)
    n_real = torch.randn(3, generator=g).abs() * 0.15
    n_fake = torch.randn(3, generator=g).abs() * 0.15
    t_real = [max(1.0 - v, 0.7) for v in n_real.tolist()]
    t_fake = [min(v, 0.3) for v in n_fake.tolist()]
    expected = sum(_bce(x, y) for x, y in zip(real.tolist(), t_real)) / 3
    expected += sum(_bce(x, y) for x, y in zip(fake.tolist(), t_fake)) / 3
    assert loss == pytest.approx(expected, rel=1e-5)


def test_noisy_targets_ranges_and_reproducibility():
    g = torch.Generator().manual_seed(0)
    t_real = noisy_targets((20000,), real=True, generator=g)
    t_fake = noisy_targets((20000,), real=False, generator=g)
    assert t_real.dtype == t_fake.dtype == torch.float32
    assert t_real.min() >= REAL_TARGET_MIN and t_real.max() <= 1.0
    assert t_fake.min() >= 0.0 and t_fake.max() <= FAKE_TARGET_MAX
    # The clamps are active (|N| > 2 happens ~4.6% of the time) and the noise is one-sided.
    assert (t_real == REAL_TARGET_MIN).any() and (t_fake == FAKE_TARGET_MAX).any()
    assert t_real.mean() == pytest.approx(1 - 0.15 * math.sqrt(2 / math.pi), abs=5e-3)
    logits = torch.randn(5), torch.randn(5)
    a = discriminator_loss(*logits, generator=torch.Generator().manual_seed(4))
    b = discriminator_loss(*logits, generator=torch.Generator().manual_seed(4))
    c = discriminator_loss(*logits, generator=torch.Generator().manual_seed(5))
    assert a.item() == b.item() != c.item()


def test_discriminator_loss_gradients_stop_at_detached_fake():
    disc = torch.nn.Linear(4, 1)
    real = torch.randn(3, 4)
    fake = torch.randn(3, 4, requires_grad=True)  # stands for the tokenizer's reconstruction
    loss = discriminator_loss(disc(real)[:, 0], disc(fake.detach())[:, 0], generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert disc.weight.grad is not None and disc.weight.grad.abs().sum() > 0
    assert fake.grad is None


def test_generator_loss_gradients_reach_fake():
    disc = torch.nn.Linear(4, 1)
    fake = torch.randn(3, 4, requires_grad=True)
    disc.requires_grad_(False)  # D frozen for the G step (LARP.md C.5)
    generator_loss(disc(fake)[:, 0]).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert disc.weight.grad is None


# ---------------------------------------------------------------- LeCam


def test_lecam_penalty_and_update_by_hand():
    lecam = LeCam(decay=0.9)
    assert lecam.lecam_ema_real.item() == lecam.lecam_ema_fake.item() == 0.0
    assert set(lecam.state_dict()) == {"lecam_ema_real", "lecam_ema_fake"}
    real, fake = torch.tensor([1.0, 2.0]), torch.tensor([-1.0, -3.0])  # means 1.5, -2
    # EMAs are 0: relu(1.5 - 0)^2 + relu(0 - (-2))^2 = 2.25 + 4.
    assert lecam.penalty(real, fake).item() == pytest.approx(6.25)
    assert lecam.lecam_ema_real.item() == lecam.lecam_ema_fake.item() == 0.0  # penalty does not update
    lecam.update(real, fake)
    assert lecam.lecam_ema_real.item() == pytest.approx(0.15)
    assert lecam.lecam_ema_fake.item() == pytest.approx(-0.2)
    lecam.update(real, fake)
    assert lecam.lecam_ema_real.item() == pytest.approx(0.9 * 0.15 + 0.1 * 1.5)  # 0.285
    assert lecam.lecam_ema_fake.item() == pytest.approx(0.9 * -0.2 + 0.1 * -2.0)  # -0.38
    # relu(1.5 + 0.38)^2 + relu(0.285 + 2)^2
    assert lecam.penalty(real, fake).item() == pytest.approx(1.88**2 + 2.285**2, rel=1e-5)
    # The relus switch off when D no longer separates beyond the EMAs.
    assert lecam.penalty(torch.tensor([-5.0]), torch.tensor([5.0])).item() == 0.0


def test_lecam_update_is_fp32_and_gradient_free():
    lecam = LeCam()
    real = torch.tensor([1.0, 3.0], dtype=torch.float16, requires_grad=True)
    fake = torch.tensor([0.5], dtype=torch.float16, requires_grad=True)
    penalty = lecam.penalty(real, fake)
    assert penalty.dtype == torch.float32
    penalty.backward()
    assert real.grad is not None
    lecam.update(real, fake)
    assert lecam.lecam_ema_real.dtype == torch.float32 and not lecam.lecam_ema_real.requires_grad
    assert lecam.lecam_ema_real.item() == pytest.approx(0.001 * 2.0)
    assert lecam.lecam_ema_fake.item() == pytest.approx(0.001 * 0.5)
    with pytest.raises(ValueError):
        LeCam(decay=1.0)


def test_lecam_weight_once_or_twice():
    assert GANLossConfig().effective_lecam_weight == pytest.approx(1e-3)
    assert GANLossConfig(official_double_weight=True).effective_lecam_weight == pytest.approx(1e-6)
    real, fake = torch.tensor([1.0, 2.0]), torch.tensor([-1.0, -3.0])  # penalty 6.25 with zero EMAs
    base = discriminator_loss(real, fake, smooth=False).item()
    for double, weight in ((False, 1e-3), (True, 1e-6)):
        cfg = GANLossConfig(smooth=False, official_double_weight=double)
        lecam = LeCam(cfg.lecam_decay)
        total = discriminator_objective(real, fake, lecam, cfg).item()
        assert total == pytest.approx(base + weight * 6.25, rel=1e-6, abs=1e-9)
        assert lecam.lecam_ema_real.item() == 0.0  # the objective leaves updating to the caller


def test_gan_config_defaults_and_validation():
    cfg = GANLossConfig()
    assert (cfg.disc_weight, cfg.lecam_weight, cfg.lecam_decay) == (0.3, 0.001, 0.999)
    assert cfg.smooth and not cfg.official_double_weight and cfg.disc_update_every == 5
    with pytest.raises(ValueError):
        GANLossConfig(disc_update_every=0)
    with pytest.raises(ValueError):
        GANLossConfig(lecam_decay=1.5)


# ---------------------------------------------------------------- cadence


def test_discriminator_step_due():
    assert [s for s in range(1, 11) if discriminator_step_due(s, 5)] == [5, 10]
    assert all(discriminator_step_due(s, 1) for s in range(1, 5))
    with pytest.raises(ValueError):
        discriminator_step_due(0, 5)
    with pytest.raises(ValueError):
        discriminator_step_due(1, 0)

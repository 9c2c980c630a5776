"""Adversarial losses for tokenizer training: non-saturating G loss, ``ns_smooth`` D loss, LeCam, cadence.

Reference: LARP.md C.2 (generator side), C.3 (discriminator loss and LeCam) and C.5 (step order).
Logits are the (b,) outputs of ``TransformerDiscriminator``. All losses are computed in float32, so they
are safe under fp16 autocast (the official run used fp16 AMP, LARP.md C.4).

One discriminator iteration, as the official trainer does it (LARP.md C.5)::

    if discriminator_step_due(step, config.disc_update_every):
        real, fake = disc(video), disc(recon.detach())
        loss = discriminator_loss(real, fake, smooth=config.smooth)
        loss = loss + config.effective_lecam_weight * lecam.penalty(real, fake)
        lecam.update(real, fake)  # after the penalty: it uses the EMAs from before this step
        loss.backward(); d_optimizer.step()
    g_loss = config.disc_weight * generator_loss(disc(recon))  # with D frozen

``discriminator_objective`` bundles the first three lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# ns_smooth constants (LARP.md C.3): targets are 1 - NOISE*|N(0,1)| (floored at REAL_TARGET_MIN) for real
# clips and NOISE*|N(0,1)| (capped at FAKE_TARGET_MAX) for fakes.
TARGET_NOISE = 0.15
REAL_TARGET_MIN = 0.7
FAKE_TARGET_MAX = 0.3


@dataclass(frozen=True)
class GANLossConfig:
    """Weights and schedule of the adversarial part of tokenizer training (LARP.md C.2, C.3, C.5).

    Attributes:
        disc_weight: weight of the generator's adversarial loss in the total G loss (constant, no
            adaptive VQGAN weight).
        lecam_weight: the LeCam coefficient ``w``.
        lecam_decay: decay of the LeCam EMAs of the mean real/fake logits.
        smooth: use the one-sided noisy targets of ``ns_smooth``; False gives plain 1/0 targets.
        official_double_weight: the official code computes ``lecam = w * penalty`` and then adds
            ``w * lecam`` to the D loss, i.e. applies ``w`` twice (effective 1e-6 for w = 1e-3, LARP.md G.2).
            True reproduces that; the default applies ``w`` once, the intended coefficient.
        disc_update_every: D is updated on global steps that are multiples of this (official 5).
    """

    disc_weight: float = 0.3
    lecam_weight: float = 0.001
    lecam_decay: float = 0.999
    smooth: bool = True
    official_double_weight: bool = False
    disc_update_every: int = 5

    def __post_init__(self):
        problems = []
        if self.disc_weight < 0 or self.lecam_weight < 0:
            problems.append("disc_weight and lecam_weight must be non-negative")
        if not 0.0 <= self.lecam_decay < 1.0:
            problems.append(f"lecam_decay must be in [0, 1), got {self.lecam_decay}")
        if self.disc_update_every < 1:
            problems.append(f"disc_update_every must be at least 1, got {self.disc_update_every}")
        if problems:
            raise ValueError("invalid GANLossConfig: " + "; ".join(problems))

    @property
    def effective_lecam_weight(self) -> float:
        """The factor that multiplies ``LeCam.penalty`` in the D loss: ``w``, or ``w**2`` when official."""
        return self.lecam_weight**2 if self.official_double_weight else self.lecam_weight


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``-mean(log sigmoid(D(x_hat)))`` (LARP.md C.2).

    Args:
        logits_fake: (b,) discriminator logits of the reconstructions (not detached: the gradient must
            reach the generator).

    Returns:
        () float32 loss, unweighted (multiply by ``GANLossConfig.disc_weight``).
    """
    # -log sigmoid(x) = softplus(-x), the numerically stable form.
    return F.softplus(-logits_fake.float()).mean()


def noisy_targets(
    shape: torch.Size | tuple[int, ...],
    *,
    real: bool,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One-sided noisy BCE targets of ``ns_smooth`` (LARP.md C.3).

    Args:
        shape: target shape, that of the logits.
        real: real targets ``max(1 - 0.15|n|, 0.7)`` in [0.7, 1]; otherwise fake targets
            ``min(0.15|n|, 0.3)`` in [0, 0.3]; ``n ~ N(0, 1)`` per element.
        device: where to draw the noise (must match ``generator``'s device when one is given).
        generator: RNG for reproducible targets.

    Returns:
        float32 tensor of ``shape``.
    """
    noise = TARGET_NOISE * torch.randn(shape, generator=generator, device=device, dtype=torch.float32).abs()
    return (1.0 - noise).clamp_min(REAL_TARGET_MIN) if real else noise.clamp_max(FAKE_TARGET_MAX)


def discriminator_loss(
    logits_real: torch.Tensor,
    logits_fake: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    smooth: bool = True,
) -> torch.Tensor:
    """Discriminator loss ``BCE(D(x), t_real) + BCE(D(sg x_hat), t_fake)``, the official ``ns_smooth``.

    The caller computes ``logits_fake`` on detached reconstructions (``disc(recon.detach())``) so that the
    D step sends no gradient into the tokenizer (LARP.md C.5); this function does not detach.

    Args:
        logits_real: (b,) logits of real clips.
        logits_fake: (b,) logits of reconstructions.
        generator: RNG for the noisy targets; the real targets are drawn first, then the fake ones.
        smooth: noisy one-sided targets (official); False uses exact 1 / 0 targets.

    Returns:
        () float32 loss: the sum of the two per-element-mean BCEs, without LeCam.
    """
    logits_real, logits_fake = logits_real.float(), logits_fake.float()
    if smooth:
        device = logits_real.device
        target_real = noisy_targets(logits_real.shape, real=True, device=device, generator=generator)
        target_fake = noisy_targets(logits_fake.shape, real=False, device=device, generator=generator)
    else:
        target_real, target_fake = torch.ones_like(logits_real), torch.zeros_like(logits_fake)
    return F.binary_cross_entropy_with_logits(logits_real, target_real) + F.binary_cross_entropy_with_logits(
        logits_fake, target_fake
    )


class LeCam(nn.Module):
    """LeCam regulariser state: EMAs of the mean real and fake logits (LARP.md C.3).

    Buffers ``lecam_ema_real`` / ``lecam_ema_fake`` are () float32 scalars starting at 0, named as in the
    official loss module's state dict. ``penalty`` reads them; only ``update`` changes them, and the caller
    decides when (the official code also updates during validation steps; we update on D steps only).
    """

    def __init__(self, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"LeCam decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("lecam_ema_real", torch.zeros((), dtype=torch.float32))
        self.register_buffer("lecam_ema_fake", torch.zeros((), dtype=torch.float32))

    def penalty(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        """``relu(mean D(x) - ema_fake)^2 + relu(ema_real - mean D(x_hat))^2``, unweighted.

        Uses the EMAs as they are (before this step's ``update``), as the official code does.

        Args:
            logits_real: (b,) logits of real clips.
            logits_fake: (b,) logits of (detached) reconstructions.

        Returns:
            () float32 penalty; differentiable w.r.t. the logits, constant in the EMAs.
        """
        ema_real = self.lecam_ema_real.float()
        ema_fake = self.lecam_ema_fake.float()
        return (
            F.relu(logits_real.float().mean() - ema_fake).pow(2)
            + F.relu(ema_real - logits_fake.float().mean()).pow(2)
        )

    @torch.no_grad()
    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        """EMA step ``ema <- decay * ema + (1 - decay) * mean(logits)`` for both buffers, in fp32, no grad.

        Args:
            logits_real: (b,) logits of real clips.
            logits_fake: (b,) logits of reconstructions.
        """
        for ema, logits in ((self.lecam_ema_real, logits_real), (self.lecam_ema_fake, logits_fake)):
            mean = logits.detach().float().mean()
            ema.copy_(self.decay * ema.float() + (1.0 - self.decay) * mean)

    def extra_repr(self) -> str:
        return f"decay={self.decay}"


def discriminator_objective(
    logits_real: torch.Tensor,
    logits_fake: torch.Tensor,
    lecam: LeCam,
    config: GANLossConfig,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Full D loss ``discriminator_loss + effective_lecam_weight * lecam.penalty`` (LARP.md C.3).

    Does not update the LeCam EMAs: call ``lecam.update(logits_real, logits_fake)`` afterwards.

    Args:
        logits_real: (b,) logits of real clips.
        logits_fake: (b,) logits of detached reconstructions.
        lecam: the LeCam state.
        config: weights and the target smoothing switch.
        generator: RNG for the noisy targets.

    Returns:
        () float32 loss.
    """
    loss = discriminator_loss(logits_real, logits_fake, generator=generator, smooth=config.smooth)
    return loss + config.effective_lecam_weight * lecam.penalty(logits_real, logits_fake)


def discriminator_step_due(step: int, every: int) -> bool:
    """Whether global step ``step`` includes a discriminator update (LARP.md C.5).

    Steps count from 1 (the counter is incremented before the step's work), and D is updated when
    ``step % every == 0``: with ``every = 5`` the first update is at step 5, then 10, 15, ...

    Args:
        step: the global step, starting at 1.
        every: ``GANLossConfig.disc_update_every``, at least 1.
    """
    if step < 1:
        raise ValueError(f"global steps count from 1, got {step}")
    if every < 1:
        raise ValueError(f"the discriminator update period must be at least 1, got {every}")
    return step % every == 0

"""Reconstruction metrics for videos in [0, 1]: PSNR, SSIM, and codebook usage (LARP.md E.2).

Videos are (b, c, t, h, w) tensors with values in [0, 1] (data range 1).

* :func:`psnr` is per clip: ``−10·log10(MSE)`` with the MSE over (c, t, h, w). :func:`mean_psnr` is the mean
  over clips, the paper's protocol (E.2). **Identical clips:** the MSE is clamped at ``1e-10``, so a perfect
  reconstruction scores exactly 100 dB instead of ``inf`` (keeps means finite).
* :func:`ssim` is the standard SSIM (Wang et al. 2004): 11×11 Gaussian window with σ = 1.5, K1 = 0.01,
  K2 = 0.03, data range 1, "valid" convolution (no padding), computed for every frame and channel separately
  and averaged over channels and frames. This deliberately does **not** reproduce the official training
  metric, which folds frames into channels (LARP.md G.2.9); frames must be at least 11×11 pixels.
* :func:`codebook_usage` gives the fraction of codes used and the perplexity of the code histogram;
  :func:`code_statistics` is the same from a histogram of counts, as tensors (no host sync: trainers call it
  every step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["psnr", "mean_psnr", "ssim", "codebook_usage", "code_statistics", "gaussian_window", "MSE_FLOOR"]

MSE_FLOOR = 1e-10  # PSNR of identical clips = -10·log10(1e-10) = 100 dB


def _check_pair(reference: torch.Tensor, estimate: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(reference, torch.Tensor) or not isinstance(estimate, torch.Tensor):
        raise TypeError(f"{name} expects torch tensors")
    if reference.shape != estimate.shape:
        raise ValueError(f"{name}: shapes differ, {tuple(reference.shape)} vs {tuple(estimate.shape)}")
    if reference.ndim != 5:
        raise ValueError(f"{name} expects videos (b, c, t, h, w), got shape {tuple(reference.shape)}")
    dtype = torch.float64 if torch.float64 in (reference.dtype, estimate.dtype) else torch.float32
    return reference.to(dtype), estimate.to(dtype)


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Per-clip PSNR (b,) in dB for videos (b, c, t, h, w) in [0, 1]; MSE clamped at 1e-10 (identical → 100 dB)."""
    ref, est = _check_pair(reference, estimate, "psnr")
    mse = (ref - est).pow(2).flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse.clamp_min(MSE_FLOOR))


def mean_psnr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """Mean over clips of the per-clip PSNR (the paper's protocol, LARP.md E.2)."""
    return float(psnr(reference, estimate).mean())


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 2-D Gaussian window (size, size)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).to(dtype)


def ssim(
    reference: torch.Tensor,
    estimate: torch.Tensor,
    *,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Per-clip SSIM (b,) for videos (b, c, t, h, w): per frame and channel, averaged over channels and frames."""
    ref, est = _check_pair(reference, estimate, "ssim")
    b, c, t, h, w = ref.shape
    if h < window_size or w < window_size:
        raise ValueError(f"ssim needs frames of at least {window_size}x{window_size}, got {h}x{w}")
    # Every (clip, channel, frame) becomes one single-channel image.
    x = ref.reshape(b * c * t, 1, h, w)
    y = est.reshape(b * c * t, 1, h, w)
    window = gaussian_window(window_size, sigma, x.dtype).to(x.device)[None, None]
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1).reshape(-1, 1, h, w)
    filtered = F.conv2d(stacked, window).reshape(b * c * t, 5, h - window_size + 1, w - window_size + 1)
    mu_x, mu_y, e_xx, e_yy, e_xy = filtered.unbind(dim=1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(b, c * t, -1).mean(dim=(1, 2))


def codebook_usage(ids: torch.Tensor, codebook_size: int) -> tuple[float, float]:
    """(fraction of the codebook used, perplexity = exp(entropy of the code histogram)) over all ids."""
    if codebook_size < 1:
        raise ValueError(f"codebook_size must be positive, got {codebook_size}")
    flat = torch.as_tensor(ids).reshape(-1)
    if flat.is_floating_point() or flat.is_complex():
        raise ValueError(f"ids must be integers, got dtype {flat.dtype}")
    if flat.numel() == 0:
        raise ValueError("codebook_usage needs at least one id")
    flat = flat.long().cpu()
    if int(flat.min()) < 0 or int(flat.max()) >= codebook_size:
        raise ValueError(f"ids must lie in [0, {codebook_size}), got range [{int(flat.min())}, {int(flat.max())}]")
    counts = torch.bincount(flat, minlength=codebook_size).to(torch.float64)
    usage, perplexity = code_statistics(counts)
    return float(usage), float(perplexity)


def code_statistics(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fraction of codes with a non-zero count, perplexity = exp(entropy of the normalised counts)) of a
    histogram ``counts`` (codebook_size,), as 0-d tensors on the histogram's device; an empty histogram
    gives usage 0 and perplexity 1."""
    counts = counts.to(torch.float64 if counts.dtype == torch.float64 else torch.float32)
    usage = (counts > 0).to(counts.dtype).mean()
    probs = counts / counts.sum().clamp_min(1)
    entropy = -torch.special.xlogy(probs, probs).sum()  # 0 log 0 = 0
    return usage, entropy.exp()

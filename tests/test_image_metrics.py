"""PSNR / SSIM / codebook usage on videos (b, c, t, h, w) in [0, 1]."""

from __future__ import annotations

import math

import pytest
import torch

from larp.evaluation.image_metrics import codebook_usage, gaussian_window, mean_psnr, psnr, ssim


def _video(b=2, c=3, t=2, h=16, w=16, seed=0, dtype=torch.float32):
    return torch.rand(b, c, t, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_psnr_identical_is_clamped_to_100_db():
    x = _video()
    out = psnr(x, x)
    assert out.shape == (2,)
    assert torch.all(out == 100.0)
    assert mean_psnr(x, x) == 100.0


def test_psnr_known_value_and_per_clip_mean():
    x = _video(dtype=torch.float64) * 0.8
    assert torch.allclose(psnr(x, x + 0.1), torch.full((2,), 20.0, dtype=torch.float64), atol=1e-9)
    y = x.clone()
    y[0] += 0.1  # 20 dB
    y[1] += 0.01  # 40 dB
    assert torch.allclose(psnr(x, y), torch.tensor([20.0, 40.0], dtype=torch.float64), atol=1e-9)
    assert mean_psnr(x, y) == pytest.approx(30.0, abs=1e-9)  # mean of per-clip PSNR, not PSNR of mean MSE


def _ssim_reference(x: torch.Tensor, y: torch.Tensor) -> float:
    """Direct float64 SSIM with explicit loops over one (h, w) image, valid window positions."""
    win = gaussian_window(11, 1.5, torch.float64)
    c1, c2 = 0.01**2, 0.03**2
    h, w = x.shape
    vals = []
    for i in range(h - 10):
        for j in range(w - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (win * px).sum(), (win * py).sum()
            vx = (win * (px - mx) ** 2).sum()
            vy = (win * (py - my) ** 2).sum()
            cxy = (win * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(torch.stack(vals).mean())


def test_ssim_matches_loop_reference():
    x = _video(b=1, c=2, t=2, h=13, w=14, seed=1, dtype=torch.float64)
    y = (x + 0.1 * _video(b=1, c=2, t=2, h=13, w=14, seed=2, dtype=torch.float64)).clamp(0, 1)
    expected = sum(_ssim_reference(x[0, c, t], y[0, c, t]) for c in range(2) for t in range(2)) / 4
    assert ssim(x, y).item() == pytest.approx(expected, abs=1e-12)
    # float32 path agrees closely too
    assert ssim(x.float(), y.float()).item() == pytest.approx(expected, abs=1e-5)


def test_ssim_identity_symmetry_and_noise():
    x = _video(h=24, w=24)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x.shape, generator=g)
    y = (x + 0.05 * noise).clamp(0, 1)
    z = (x + 0.2 * noise).clamp(0, 1)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-6)
    s_small, s_big = ssim(x, y), ssim(x, z)
    assert torch.all(s_small < 1.0) and torch.all(s_big < s_small)


def test_metric_errors():
    x = _video()
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(x, x[:1])
    with pytest.raises(ValueError, match="videos"):
        ssim(x[0], x[0])
    with pytest.raises(ValueError, match="at least 11"):
        ssim(x[..., :8, :8], x[..., :8, :8])


def test_codebook_usage():
    usage, perplexity = codebook_usage(torch.tensor([[0, 1], [2, 3]]), 8)
    assert usage == 0.5 and perplexity == pytest.approx(4.0)
    usage, perplexity = codebook_usage(torch.zeros(10, dtype=torch.long), 4)
    assert usage == 0.25 and perplexity == pytest.approx(1.0)
    usage, perplexity = codebook_usage(torch.tensor([0, 0, 0, 1]), 2)
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    assert usage == 1.0 and perplexity == pytest.approx(math.exp(float(-(p * p.log()).sum())))
    with pytest.raises(ValueError):
        codebook_usage(torch.tensor([0, 5]), 4)
    with pytest.raises(ValueError):
        codebook_usage(torch.tensor([0.5]), 4)

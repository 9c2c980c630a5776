"""Fréchet distance (LARP.md E.1): official parity, exact merging, save/load, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import larp.metrics
from larp.evaluation.fvd import (
    FeatureStats,
    all_reduce,
    frechet_distance,
    frechet_distance_from_stats,
    sqrtm_svd,
)
from tests.conftest import official_fixture


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + shift


def test_official_fvd_math_parity():
    from safetensors.torch import load_file

    data = load_file(str(official_fixture("fvd-math") / "io.safetensors"))
    expected = float(data["fvd"].reshape(-1)[0])
    value = frechet_distance(data["real_features"], data["fake_features"])
    assert abs(value - expected) <= 1e-6 * abs(expected)
    # Also through the public API and with numpy input.
    value_np = larp.metrics.frechet_distance(data["real_features"].numpy(), data["fake_features"].numpy())
    assert abs(value_np - expected) <= 1e-6 * abs(expected)


def test_self_distance_is_zero_and_order_invariant():
    x = _features(200, 32, seed=0)
    y = _features(150, 32, seed=1, shift=0.3)
    trace = float(FeatureStats.from_features(x).covariance().trace())
    assert abs(frechet_distance(x, x)) < 1e-6 * trace
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(3))
    base = frechet_distance(x, y)
    assert base > 0
    assert frechet_distance(x[perm], y) == pytest.approx(base, rel=1e-10)


def test_matches_closed_form_for_diagonal_gaussians():
    # For commuting covariances: ||mu diff||^2 + sum (sqrt(a) - sqrt(b))^2.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4000, 8, generator=g, dtype=torch.float64)
    y = torch.randn(3000, 8, generator=g, dtype=torch.float64) * 2.0 + 1.0
    sx, sy = FeatureStats.from_features(x), FeatureStats.from_features(y)
    value = frechet_distance_from_stats(sx, sy)
    # Check the identity with the exact empirical moments (not the population ones).
    from larp.evaluation.fvd import trace_sqrt_product

    mu_x, cov_x = sx.mean_cov()
    mu_y, cov_y = sy.mean_cov()
    direct = float(((mu_x - mu_y) ** 2).sum() + cov_x.trace() + cov_y.trace() - 2 * trace_sqrt_product(cov_y, cov_x))
    assert value == pytest.approx(direct, rel=1e-10)
    assert value == pytest.approx(8 * (1.0 + 1.0), rel=0.1)  # 8*1 (means) + 8*(2-1)^2


def test_sqrtm_svd_squares_back_and_keeps_tiny_singular_values():
    a = _features(50, 10, seed=2)
    cov = FeatureStats.from_features(a).covariance()
    root = sqrtm_svd(cov)
    assert torch.allclose(root @ root, cov, atol=1e-10)
    tiny = torch.diag(torch.tensor([4.0, 1e-12], dtype=torch.float64))
    assert torch.allclose(sqrtm_svd(tiny), torch.diag(torch.tensor([2.0, 1e-12], dtype=torch.float64)), atol=0, rtol=1e-12)


def test_merged_stats_equal_one_shot():
    x = _features(257, 16, seed=4)
    one = FeatureStats.from_features(x)
    parts = [FeatureStats.from_features(x[:100]), FeatureStats.from_features(x[100:101]), FeatureStats.from_features(x[101:])]
    merged = parts[0] + parts[1] + parts[2]
    streamed = FeatureStats()
    for chunk in x.split(37):
        streamed.update(chunk)
    for stats in (merged, streamed):
        assert stats.count == one.count
        assert torch.allclose(stats.mean(), one.mean(), rtol=0, atol=1e-12)
        assert torch.allclose(stats.covariance(), one.covariance(), rtol=0, atol=1e-12)
    assert torch.allclose(one.covariance(), torch.cov(x.T, correction=0), atol=1e-12)


def test_all_reduce_with_injected_sum():
    x = _features(60, 6, seed=6)
    ranks = [FeatureStats.from_features(x[:25]), FeatureStats.from_features(x[25:])]
    packed = []

    def capture(t):  # collect what each "rank" sends ...
        packed.append(t.clone())
        return None

    for s in ranks:
        all_reduce(s, capture)
    total = packed[0] + packed[1]

    def in_place_sum(t):  # ... then simulate torch.distributed.all_reduce (in place, returns None)
        t.copy_(total)

    reduced = all_reduce(ranks[0], in_place_sum)
    reduced_ret = all_reduce(ranks[1], lambda t: total.clone())
    one = FeatureStats.from_features(x)
    for r in (reduced, reduced_ret):
        assert r.count == 60
        assert torch.allclose(r.covariance(), one.covariance(), rtol=0, atol=1e-12)
    assert ranks[0].count == 25  # input untouched


def test_save_load_round_trip(tmp_path):
    x = _features(40, 12, seed=7)
    stats = FeatureStats.from_features(x, metadata={"detector": "i3d-torchscript", "protocol": "rfvd-ucf101"})
    path = tmp_path / "sub" / "stats.safetensors"
    stats.save(path)
    loaded = FeatureStats.load(path)
    assert loaded.metadata == {"detector": "i3d-torchscript", "protocol": "rfvd-ucf101"}
    assert loaded.count == 40 and loaded.dim == 12
    assert torch.equal(loaded.sum, stats.sum) and torch.equal(loaded.outer_sum, stats.outer_sum)
    state_copy = FeatureStats.from_state_dict(stats.state_dict())
    assert torch.equal(state_copy.covariance(), stats.covariance())
    y = _features(30, 12, seed=8)
    assert frechet_distance_from_stats(loaded, FeatureStats.from_features(y)) == frechet_distance(x, y)


def test_errors():
    x = _features(10, 4, seed=9)
    with pytest.raises(ValueError, match="widths differ"):
        frechet_distance(x, _features(10, 5, seed=9))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(x, x[:1])
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(x.reshape(-1), x)
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(x[None], x)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(bad, x)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(x, np.asarray(bad))
    stats = FeatureStats.from_features(x)
    with pytest.raises(ValueError, match="width"):
        stats.update(_features(3, 5, seed=1))
    with pytest.raises(ValueError, match="cannot merge"):
        stats + FeatureStats.from_features(_features(3, 5, seed=1))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats().mean()
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance_from_stats(stats, FeatureStats.from_features(x[:1]))
    with pytest.raises(ValueError, match="square"):
        sqrtm_svd(torch.zeros(2, 3))


def test_save_is_atomic(tmp_path, monkeypatch):
    """A write cut short (a kill, a full disk) leaves the previous statistics, not a torn file."""
    import safetensors.torch

    path = tmp_path / "stats.safetensors"
    old = FeatureStats.from_features(_features(20, 4, seed=10))
    old.save(path)

    def torn(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 10)
        raise OSError("killed mid-write")

    monkeypatch.setattr(safetensors.torch, "save_file", torn)
    with pytest.raises(OSError, match="killed mid-write"):
        FeatureStats.from_features(_features(30, 4, seed=11)).save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["stats.safetensors"]
    assert torch.equal(FeatureStats.load(path).outer_sum, old.outer_sum)

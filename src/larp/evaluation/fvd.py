"""Fréchet distance (FVD / FID math) exactly as the official LARP code computes it (LARP.md E.1).

* Statistics are raw moments accumulated in float64: the count N, ``Σx`` and ``Σxxᵀ``.
  ``μ = Σx / N`` and ``Σ = Σxxᵀ / N − μμᵀ`` (the *biased* covariance, divided by N).
* Merging statistics (several batches, several processes) sums the raw moments, which is exact.
* ``FVD = ‖μ_g − μ_r‖² + tr(Σ_g + Σ_r) − 2·tr(sqrt(sqrt(Σ_g) Σ_r sqrt(Σ_g)))``, with the matrix square
  roots computed by the TF-GAN SVD routine (:func:`sqrtm_svd`), whose quirk leaves singular values below
  1e-10 un-square-rooted. This is not ``scipy.linalg.sqrtm``; expect small differences from StyleGAN-V.

The feature extractor (I3D) is not part of this module; it only does the statistics and the distance.
``torch.distributed`` is not imported here: :func:`all_reduce` takes the summing function as an argument.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from larp.files import write_atomic

__all__ = [
    "FeatureStats",
    "all_reduce",
    "sqrtm_svd",
    "trace_sqrt_product",
    "frechet_distance_from_stats",
    "frechet_distance",
]

SQRT_EPS = 1e-10  # TF-GAN: singular values below this are left as they are (not square-rooted)


def _as_features(features, name: str = "features") -> torch.Tensor:
    """Validate and convert an (n, d) array/tensor of features to a float64 CPU tensor."""
    if isinstance(features, np.ndarray):
        tensor = torch.from_numpy(np.asarray(features))
    elif isinstance(features, torch.Tensor):
        tensor = features.detach()
    else:
        tensor = torch.as_tensor(np.asarray(features))
    if tensor.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {tuple(tensor.shape)}")
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must be real-valued, got dtype {tensor.dtype}")
    tensor = tensor.to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return tensor


class FeatureStats:
    """Running float64 moments of a feature set: count, ``Σx`` (d,) and ``Σxxᵀ`` (d, d).

    ``metadata`` is a free ``dict[str, str]`` (for example detector and protocol names) that travels with
    the statistics through :meth:`save` / :meth:`load` and :meth:`merge`.
    """

    def __init__(self, dim: int | None = None, metadata: Mapping[str, str] | None = None):
        self.count = 0
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.dim: int | None = None
        self.sum: torch.Tensor | None = None
        self.outer_sum: torch.Tensor | None = None
        if dim is not None:
            self._init(int(dim))

    def _init(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"feature width must be positive, got {dim}")
        self.dim = dim
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer_sum = torch.zeros(dim, dim, dtype=torch.float64)

    # ------------------------------------------------------------------ accumulation
    def update(self, features) -> "FeatureStats":
        """Add a batch of features (n, d). Returns self."""
        x = _as_features(features)
        if self.dim is None:
            self._init(x.shape[1])
        elif x.shape[1] != self.dim:
            raise ValueError(f"feature width {x.shape[1]} does not match the statistics' width {self.dim}")
        if x.shape[0] == 0:
            return self
        self.count += int(x.shape[0])
        self.sum += x.sum(dim=0)
        self.outer_sum += x.T @ x
        return self

    @classmethod
    def from_features(cls, features, metadata: Mapping[str, str] | None = None) -> "FeatureStats":
        return cls(metadata=metadata).update(features)

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """New statistics holding both sets (sums of the raw moments: exact). Metadata: self's, updated by other's."""
        if not isinstance(other, FeatureStats):
            raise TypeError(f"can only merge FeatureStats, got {type(other).__name__}")
        metadata = {**self.metadata, **other.metadata}
        if self.dim is None:
            out = other.copy()
            out.metadata = metadata
            return out
        if other.dim is None:
            out = self.copy()
            out.metadata = metadata
            return out
        if self.dim != other.dim:
            raise ValueError(f"cannot merge statistics of width {self.dim} and {other.dim}")
        out = FeatureStats(self.dim, metadata=metadata)
        out.count = self.count + other.count
        out.sum = self.sum + other.sum
        out.outer_sum = self.outer_sum + other.outer_sum
        return out

    __add__ = merge

    def copy(self) -> "FeatureStats":
        out = FeatureStats(metadata=self.metadata)
        out.count = self.count
        out.dim = self.dim
        out.sum = None if self.sum is None else self.sum.clone()
        out.outer_sum = None if self.outer_sum is None else self.outer_sum.clone()
        return out

    # ------------------------------------------------------------------ moments
    def _check_usable(self) -> None:
        if self.dim is None or self.count < 2:
            raise ValueError(f"need at least 2 samples for mean/covariance statistics, have {self.count}")

    def mean(self) -> torch.Tensor:
        self._check_usable()
        return self.sum / self.count

    def covariance(self) -> torch.Tensor:
        """Biased covariance ``Σxxᵀ/N − μμᵀ`` (divided by N, as the official code)."""
        mu = self.mean()
        return self.outer_sum / self.count - torch.outer(mu, mu)

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(), self.covariance()

    # ------------------------------------------------------------------ (de)serialisation
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.dim is None:
            raise ValueError("empty FeatureStats (no features yet) has no state")
        return {
            "count": torch.tensor([self.count], dtype=torch.int64),
            "sum": self.sum.clone(),
            "outer_sum": self.outer_sum.clone(),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> "FeatureStats":
        missing = {"count", "sum", "outer_sum"} - set(state)
        if missing:
            raise ValueError(f"FeatureStats state is missing {sorted(missing)}")
        total = state["sum"].to(torch.float64).reshape(-1)
        outer = state["outer_sum"].to(torch.float64)
        if outer.shape != (total.numel(), total.numel()):
            raise ValueError(f"outer_sum shape {tuple(outer.shape)} does not match sum width {total.numel()}")
        out = cls(total.numel(), metadata=metadata)
        out.count = int(torch.as_tensor(state["count"]).reshape(-1)[0].item())
        out.sum = total.clone()
        out.outer_sum = outer.clone()
        return out

    def save(self, path: str | Path) -> None:
        """Write as safetensors, atomically (a kill mid-write leaves the previous file, never a torn one);
        metadata (strings) goes into the safetensors header."""
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        metadata = dict(self.metadata)
        metadata["larp.feature_stats"] = "1"
        write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata.pop("larp.feature_stats", None)
        return cls.from_state_dict(state, metadata=metadata)

    def __repr__(self) -> str:
        return f"FeatureStats(count={self.count}, dim={self.dim}, metadata={json.dumps(self.metadata)})"


def all_reduce(stats: FeatureStats, reduce_fn: Callable[[torch.Tensor], torch.Tensor | None]) -> FeatureStats:
    """Sum statistics over processes with an injected sum.

    ``reduce_fn(tensor)`` must sum ``tensor`` over all processes, either in place (returning None, like
    ``torch.distributed.all_reduce``) or by returning the summed tensor. Every process must already have
    the same width. The moments are packed in one float64 tensor ``[count, Σx, Σxxᵀ]``, so one call suffices.
    Returns new statistics; ``stats`` is unchanged.
    """
    if stats.dim is None:
        raise ValueError("all_reduce needs statistics with a known width (call update first)")
    packed = torch.cat([
        torch.tensor([float(stats.count)], dtype=torch.float64),
        stats.sum.reshape(-1),
        stats.outer_sum.reshape(-1),
    ])
    result = reduce_fn(packed)
    if result is not None:
        packed = torch.as_tensor(result).to(torch.float64)
    packed = packed.cpu()
    d = stats.dim
    out = FeatureStats(d, metadata=stats.metadata)
    out.count = int(round(packed[0].item()))
    out.sum = packed[1 : 1 + d].clone()
    out.outer_sum = packed[1 + d :].reshape(d, d).clone()
    return out


def sqrtm_svd(matrix: torch.Tensor, eps: float = SQRT_EPS) -> torch.Tensor:
    """TF-GAN ``symmetric_matrix_square_root`` in float64: ``U·diag(s̃)·Vᵀ`` with ``s̃ = s if s < eps else √s``."""
    mat = torch.as_tensor(matrix).to(torch.float64)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"sqrtm_svd needs a square matrix, got shape {tuple(mat.shape)}")
    u, s, vh = torch.linalg.svd(mat)
    s_tilde = torch.where(s < eps, s, torch.sqrt(s))
    return (u * s_tilde) @ vh


def trace_sqrt_product(sigma: torch.Tensor, sigma_v: torch.Tensor) -> torch.Tensor:
    """TF-GAN ``trace_sqrt_product``: ``tr(sqrt(sqrt(σ) σ_v sqrt(σ)))``."""
    sqrt_sigma = sqrtm_svd(sigma)
    return torch.trace(sqrtm_svd(sqrt_sigma @ sigma_v @ sqrt_sigma))


def frechet_distance_from_stats(real: FeatureStats, fake: FeatureStats) -> float:
    """Fréchet distance between two :class:`FeatureStats` (real/reference first, generated second)."""
    if real.dim is not None and fake.dim is not None and real.dim != fake.dim:
        raise ValueError(f"feature widths differ: real {real.dim}, fake {fake.dim}")
    mu_r, sigma_r = real.mean_cov()
    mu_g, sigma_g = fake.mean_cov()
    mean_term = torch.sum((mu_g - mu_r) ** 2)
    trace_term = torch.trace(sigma_g) + torch.trace(sigma_r)
    # Official order (LARP.md E.1): sqrt(Σ_g) Σ_r sqrt(Σ_g); checked against the fvd-math fixture.
    cross = trace_sqrt_product(sigma_g, sigma_r)
    value = float(mean_term + trace_term - 2.0 * cross)
    if not math.isfinite(value):
        raise ValueError("Fréchet distance is not finite")
    return value


def frechet_distance(real_features, fake_features) -> float:
    """Fréchet distance between two feature sets (n_r, d) and (n_g, d), float64 math (LARP.md E.1)."""
    real = _as_features(real_features, "real_features")
    fake = _as_features(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature widths differ: real {real.shape[1]}, fake {fake.shape[1]}")
    for name, x in (("real_features", real), ("fake_features", fake)):
        if x.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 samples, got {x.shape[0]}")
    return frechet_distance_from_stats(FeatureStats.from_features(real), FeatureStats.from_features(fake))

"""Public metric entry points (DESIGN.md): ``larp.metrics.frechet_distance(real_features, fake_features) -> float``."""

from larp.evaluation.fvd import FeatureStats, frechet_distance, frechet_distance_from_stats, sqrtm_svd
from larp.evaluation.image_metrics import codebook_usage, mean_psnr, psnr, ssim

__all__ = [
    "FeatureStats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "sqrtm_svd",
    "psnr",
    "mean_psnr",
    "ssim",
    "codebook_usage",
]

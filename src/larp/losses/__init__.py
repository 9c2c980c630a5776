"""Training losses: ``gan`` (adversarial losses, LeCam) and ``perceptual`` (LPIPS-VGG16 with its weight lookup)."""

from larp.losses.perceptual import LPIPS, convert_lpips_weights, load_lpips, resolve_lpips_weights

__all__ = ["LPIPS", "convert_lpips_weights", "load_lpips", "resolve_lpips_weights"]

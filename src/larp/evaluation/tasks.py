"""One batch of each evaluation task: run the models on real clips and add the numbers to an accumulator.

* reconstruction: encode (argmax or sampled VQ) and decode the clips; MSE, PSNR, SSIM, LPIPS, code histogram.
* generation: sample class-conditional token sequences (with CFG), decode them; the teacher-forced NLL of
  the samples and of the real clips' tokens.
* prediction: encode the first ``condition_frames`` frames, sample the rest, decode all frames; PSNR of the
  predicted frames and the samples' NLL.

Every task then adds detector features of the generated clips (and of the real ones when their statistics
are not cached) and, where the labels are the detector's classes, whether the detector recognises the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from larp.data.video_io import condition_clip
from larp.evaluation.accumulate import Accumulator
from larp.evaluation.detectors import ClassifierDetector, FeatureDetector
from larp.evaluation.image_metrics import psnr, ssim
from larp.evaluation.protocols import EvalProtocol
from larp.precision import autocast

__all__ = ["Models", "Precisions", "TASKS", "score_batch"]

TASKS = ("reconstruction", "generation", "prediction")


@dataclass
class Models:
    """What an evaluation runs: the tokenizer, the generator (generation, prediction), the FVD detector
    (None: no FVD) and LPIPS (None: no LPIPS)."""

    tokenizer: Any
    generator: Any = None
    detector: FeatureDetector | None = None
    lpips: Any = None


@dataclass(frozen=True)
class Precisions:
    """The resolved autocast precisions (``larp.precision.resolve_precision``) of the two models; the
    generator's is None for reconstruction, which runs none."""

    tokenizer: str
    generator: str | None


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean cross-entropy (b,) of ``ids`` (b, n) under ``logits`` (b, n, vocab)."""
    return F.cross_entropy(logits.float().transpose(1, 2), ids, reduction="none").mean(1)


def _reconstruct(p: EvalProtocol, models: Models, real: torch.Tensor, rng: torch.Generator, acc: Accumulator,
                 precision: Precisions) -> torch.Tensor:
    tokenizer, device = models.tokenizer, real.device
    with autocast(precision.tokenizer, device):
        ids = tokenizer.encode(real, stochastic=not p.deterministic_tokens, generator=rng)
        fake = tokenizer.decode(ids, num_frames=real.shape[2], clamp=True).float()
    acc.codes += torch.bincount(ids.flatten().cpu(), minlength=acc.codes.numel())
    acc.add("mse", (fake - real).pow(2).flatten(1).mean(1))
    acc.add("psnr", psnr(real, fake))
    if min(real.shape[-2:]) >= 11:  # SSIM's 11x11 window
        acc.add("ssim", ssim(real, fake))
    if models.lpips is not None:
        acc.add("lpips", models.lpips.forward_video(fake, real, reduction="none").mean(1))
    return fake


def _sample(p: EvalProtocol, models: Models, cond: torch.Tensor, cfg_scale: float, rng: torch.Generator,
            acc: Accumulator, precision: Precisions) -> torch.Tensor:
    """Sample token ids (b, n) conditioned on ``cond`` and add their teacher-forced NLL (the official
    report's NLL_sampled)."""
    generator = models.generator
    with autocast(precision.generator, cond.device):
        ids = generator.generate(cond, cfg_scale=cfg_scale, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                                 generator=rng)
        logits = generator(ids, cond)
    acc.add("nll_sampled", _nll(logits, ids))
    return ids


def _generate(p: EvalProtocol, models: Models, real: torch.Tensor, labels: torch.Tensor, rng: torch.Generator,
              acc: Accumulator, precision: Precisions) -> torch.Tensor:
    tokenizer, device = models.tokenizer, real.device
    cond = labels.to(device)
    ids = _sample(p, models, cond, p.cfg_scale, rng, acc, precision)
    # the teacher-forced NLL of the real clips' tokens (held-out data: held-out NLL)
    with autocast(precision.tokenizer, device):
        real_ids = tokenizer.encode(real, stochastic=False)
    with autocast(precision.generator, device):
        real_logits = models.generator(real_ids, cond)
    acc.add("nll_real", _nll(real_logits, real_ids))
    with autocast(precision.tokenizer, device):
        return tokenizer.decode(ids, num_frames=p.frames, clamp=True).float()


def _predict(p: EvalProtocol, models: Models, real: torch.Tensor, rng: torch.Generator, acc: Accumulator,
             precision: Precisions) -> torch.Tensor:
    tokenizer, device, k = models.tokenizer, real.device, p.condition_frames
    with autocast(precision.tokenizer, device):
        cond = tokenizer.encode(condition_clip(real, k), stochastic=p.condition_tokens_stochastic, generator=rng)
    ids = _sample(p, models, cond, 1.0, rng, acc, precision)  # no CFG for frame prediction
    with autocast(precision.tokenizer, device):
        fake = tokenizer.decode(ids, num_frames=p.frames, clamp=True).float()
    if p.paste_condition_frames:
        fake[:, :, :k] = real[:, :, :k]
    acc.add("psnr", psnr(real[:, :, k:], fake[:, :, k:]))  # of the predicted frames only
    return fake


def _resize(video: torch.Tensor, size: int | None) -> torch.Tensor:
    """(b, 3, t, h, w) -> frames resized to size x size (bilinear, antialias; the official FP protocol)."""
    if size is None or video.shape[-1] == size and video.shape[-2] == size:
        return video
    b, c, t, h, w = video.shape
    frames = video.transpose(1, 2).reshape(b * t, c, h, w)
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return frames.reshape(b, t, c, size, size).transpose(1, 2).clamp(0, 1)


def _score_features(p: EvalProtocol, detector: FeatureDetector, real: torch.Tensor, fake: torch.Tensor,
                    labels: torch.Tensor, acc: Accumulator, *, need_real_features: bool, score_classes: bool) -> None:
    fake_scored = _resize(fake, p.fvd_size)
    acc.fake.update(detector.features(fake_scored))
    if need_real_features:
        acc.real.update(detector.features(_resize(real, p.fvd_size)))
    if score_classes and isinstance(detector, ClassifierDetector) and labels.ge(0).all():
        acc.add("class_correct", (detector.predict(fake_scored) == labels.cpu()).float())


@torch.no_grad()
def score_batch(task: str, p: EvalProtocol, models: Models, real: torch.Tensor, labels: torch.Tensor,
                rng: torch.Generator, acc: Accumulator, precision: Precisions, *, need_real_features: bool,
                score_classes: bool) -> None:
    """Run one batch of ``task`` and add its numbers to ``acc``.

    Args:
        real: (b, 3, t, h, w) real clips in [0, 1] (any device; moved to the tokenizer's).
        labels: (b,) int64 class labels of the clips.
        rng: the batch's random generator (on the tokenizer's device).
        need_real_features: add the real clips' detector features (their statistics are not cached).
        score_classes: add the detector's class accuracy (the labels are its classes).
    """
    real = real.to(models.tokenizer.device)
    if task == "reconstruction":
        fake = _reconstruct(p, models, real, rng, acc, precision)
    elif task == "generation":
        fake = _generate(p, models, real, labels, rng, acc, precision)
    elif task == "prediction":
        fake = _predict(p, models, real, rng, acc, precision)
    else:
        raise ValueError(f"unknown evaluation task {task!r}: expected one of {list(TASKS)}")
    acc.add("clips", float(fake.shape[0]))
    if models.detector is not None:
        _score_features(p, models.detector, real, fake, labels, acc, need_real_features=need_real_features,
                        score_classes=score_classes)

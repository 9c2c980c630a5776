"""The rate-quality evidence for adaptive token budgets: fixed vs adaptive lengths at equal mean tokens.

For one nested-dropout tokenizer and a set of clips (windows):

* :func:`score_lengths` decodes every window from its own prefix length and scores the reconstructions:
  mean tokens, PSNR, SSIM, LPIPS (when an LPIPS network is given), the Fréchet distance of a detector's
  features to the real clips' and the detector's class accuracy (when labels are the detector's classes).
* :func:`rate_quality` draws the curves: for each budget K, every window at K tokens (*fixed*) against the
  allocation of K tokens per window on average chosen from the measured rate-quality curves
  (:func:`larp.budget.allocate_mean_tokens`, *adaptive*), and, with a learned predictor, the allocation chosen
  from its predicted curves (*predicted*, no decoding); with ``min_fraction``, the same allocation with a floor
  (*floored*: every window at least the largest candidate <= ``min_fraction x K``,
  :func:`larp.budget.floor_length`); with other feature networks, the allocation that maximises PSNR plus
  their feature distance in dB (*perceptual*, :func:`larp.budget.perceptual_quality`); and for PSNR
  targets, the mean tokens a per-window target needs against the smallest fixed length whose mean PSNR reaches it.
* :func:`predictor_quality` compares predicted curves with measured ones: the mean absolute error and the
  quality lost against the exact search (targets met, mean tokens, and mean quality of the allocation),
  always scored on the *measured* curves.

The length choice itself (candidates, the measurement, the search and the allocation) is :mod:`larp.budget`'s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from larp.budget import (
    DEFAULT_FEATURE_WEIGHT,
    allocate_mean_tokens,
    candidate_lengths,
    decode_prefixes,
    floor_length,
    lengths_for_target,
    measure_quality,
    perceptual_quality,
    require_nested_dropout,
)
from larp.evaluation.detectors import ClassifierDetector
from larp.evaluation.fvd import FeatureStats, frechet_distance_from_stats
from larp.evaluation.image_metrics import psnr, ssim
from larp.precision import autocast

__all__ = ["encode_ids", "score_lengths", "rate_quality", "predictor_quality", "plot_rate_quality"]

logger = logging.getLogger(__name__)


def encode_ids(tokenizer, videos: torch.Tensor, batch_size: int = 64, precision: str = "auto") -> torch.Tensor:
    """(n, N) ids of every clip (nearest codes), in batches, on the CPU."""
    parts = []
    for start in range(0, len(videos), batch_size):
        with autocast(precision, tokenizer.device):
            parts.append(tokenizer.encode(videos[start : start + batch_size]).cpu())
    return torch.cat(parts)


@torch.no_grad()
def score_lengths(tokenizer, videos: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor, *,
                  labels: torch.Tensor | None = None, detector=None, real_stats: FeatureStats | None = None,
                  lpips=None, batch_size: int = 64, precision: str = "auto", score_ssim: bool = True) -> dict[str, float]:
    """Scores of the reconstructions of ``videos`` decoded from per-window prefix lengths.

    Args:
        videos: (n, 3, t, h, w) real clips in [0, 1]; ids: their (n, N) ids; lengths: (n,) prefix lengths.
        labels: (n,) classes of the detector (class accuracy); None: not scored.
        detector: a FeatureDetector (Fréchet distance against ``real_stats``; class accuracy needs ``predict``).
        lpips: an LPIPS network (per-frame LPIPS, mean over clips); None: not scored.
        score_ssim: score SSIM (the slowest of these on a CPU).

    Returns:
        {"mean_tokens", "psnr", "ssim"[, "lpips"][, "fvd"][, "class_accuracy"]}, means over clips.
    """
    n = len(videos)
    if ids.shape[0] != n or lengths.shape != (n,):
        raise ValueError(f"expected ids ({n}, N) and lengths ({n},), got {tuple(ids.shape)} and {tuple(lengths.shape)}")
    sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0, "correct": 0.0}
    fake_stats = FeatureStats() if detector is not None and real_stats is not None else None
    classify = _classifier_of(detector) if labels is not None else None
    for start in range(0, n, batch_size):
        part = slice(start, start + batch_size)
        real = videos[part].to(tokenizer.device)
        fake = decode_prefixes(tokenizer, ids[part], lengths[part], real.shape[2], precision)
        sums["psnr"] += psnr(real, fake).sum().item()
        if score_ssim:
            sums["ssim"] += ssim(real, fake).sum().item()
        if lpips is not None:
            sums["lpips"] += lpips.forward_video(real, fake, reduction="none").mean(dim=1).sum().item()
        if detector is not None:
            features = detector.features(fake) if fake_stats is not None or classify is not None else None
            if fake_stats is not None:
                fake_stats.update(features)
            if labels is not None:
                predicted = classify(features) if classify is not None else detector.predict(fake)
                sums["correct"] += (predicted == labels[part].cpu()).sum().item()
    out = {"mean_tokens": lengths.float().mean().item(), "psnr": sums["psnr"] / n}
    if score_ssim:
        out["ssim"] = sums["ssim"] / n
    if lpips is not None:
        out["lpips"] = sums["lpips"] / n
    if fake_stats is not None:
        out["fvd"] = frechet_distance_from_stats(real_stats, fake_stats)
    if detector is not None and labels is not None:
        out["class_accuracy"] = sums["correct"] / n
    return out


def _classifier_of(detector):
    """For a classifier detector, its class from its features (the classifier's own head: one pass gives both the
    Fréchet features and the class); None for any other detector."""
    if not isinstance(detector, ClassifierDetector):
        return None
    head = detector.classifier.head

    def classify(features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return head(torch.relu(features.to(device=head.weight.device, dtype=head.weight.dtype))).argmax(dim=1).cpu()

    return classify


def _at(curves: torch.Tensor, candidates: Sequence[int], lengths: torch.Tensor) -> torch.Tensor:
    """(W,) values of the curves (W, C) at each window's length (a candidate)."""
    index = {k: j for j, k in enumerate(candidates)}
    columns = torch.tensor([index[int(k)] for k in lengths])
    return curves[torch.arange(len(lengths)), columns]


def predictor_quality(measured: torch.Tensor, predicted: torch.Tensor, candidates: Sequence[int], *,
                      metric: str = "psnr", targets: Sequence[float] = (), means: Sequence[int] = ()) -> dict[str, Any]:
    """How well predicted curves stand in for measured ones, scored on the measured curves.

    Args:
        measured, predicted: (W, C) quality of each window at each candidate (the metric's units).
        targets: quality targets (dB for PSNR): the smallest candidate meeting each, chosen from the exact
            (measured) and from the predicted curves.
        means: mean token budgets: the allocation chosen from each (PSNR only: the allocation maximises summed
            quality).

    Returns:
        ``mae`` (overall) and ``mae_per_candidate``; ``targets`` rows (share of windows meeting the target
        and mean tokens, exact vs predicted); ``means`` rows (mean quality of the allocation, exact vs
        predicted, and the loss).
    """
    measured, predicted = measured.double(), predicted.double()
    error = (predicted - measured).abs()
    out: dict[str, Any] = {"metric": metric, "windows": int(measured.shape[0]), "candidates": list(candidates),
                           "mae": error.mean().item(), "mae_per_candidate": error.mean(dim=0).tolist()}
    higher = metric == "psnr"
    rows = []
    for target in targets:
        row: dict[str, Any] = {"target": float(target)}
        for name, curves in (("exact", measured), ("predicted", predicted)):
            lengths = lengths_for_target(curves, candidates, float(target), metric=metric)
            quality = _at(measured, candidates, lengths)
            met = quality >= target if higher else quality <= target
            row[f"{name}_mean_tokens"] = lengths.double().mean().item()
            row[f"{name}_share_meeting"] = met.double().mean().item()
            row[f"{name}_mean_quality"] = quality.mean().item()
        rows.append(row)
    out["targets"] = rows
    rows = []
    if metric == "psnr":
        for mean in means:
            row = {"mean_tokens": float(mean)}
            for name, curves in (("exact", measured), ("predicted", predicted)):
                lengths = allocate_mean_tokens(curves, candidates, mean)
                row[f"{name}_used_tokens"] = lengths.double().mean().item()
                row[f"{name}_mean_quality"] = _at(measured, candidates, lengths).mean().item()
            row["loss"] = row["exact_mean_quality"] - row["predicted_mean_quality"]
            rows.append(row)
    out["means"] = rows
    return out


def rate_quality(tokenizer, videos: torch.Tensor, *, budgets: Sequence[int], labels: torch.Tensor | None = None,
                 candidates: Sequence[int] | None = None, targets: Sequence[float] = (),
                 targets_at: Sequence[int] = (), detector=None, lpips=None,
                 predictor=None, batch_size: int = 64, precision: str = "auto", score_ssim: bool = True,
                 min_fraction: float | None = None, feature_network=None,
                 feature_weight: float = DEFAULT_FEATURE_WEIGHT) -> dict[str, Any]:
    """Fixed vs adaptive token budgets on ``videos``: the rate-quality curves and the target comparison.

    Args:
        videos: (n, 3, t, h, w) clips in [0, 1] (the windows); labels: (n,) detector classes or None.
        budgets: mean tokens per window K; each is scored fixed (every window K tokens) and adaptive (the
            PSNR-optimal allocation of n*K tokens over the measured curves, never more).
        candidates: the lengths an adaptive window may take (default :func:`larp.budget.candidate_lengths`).
        targets: PSNR targets (dB): per-window smallest length meeting it (the maximum where none does), vs the
            smallest fixed length whose mean PSNR reaches it, and the smallest of ``budgets`` whose adaptive
            allocation's mean PSNR reaches it (a target on the mean rather than on every window).
        targets_at: candidate lengths k whose fixed mean PSNR becomes a target too (so the fixed length
            reaching it is at most k: the comparison is "every window at k" against "each window as few tokens as
            it needs to reach that PSNR").
        detector: a FeatureDetector (Fréchet distance; class accuracy with ``labels``); lpips: an LPIPS network;
            score_ssim: score SSIM too.
        predictor: a length predictor (``candidates``, ``metric`` "psnr", ``predict``): adds the *predicted*
            policy and ``predictor`` (its error and loss against the exact search).
        min_fraction: adds the *floored* policy: the PSNR-optimal allocation of K tokens per window on average
            in which every window keeps at least ``floor_length(K, candidates, min_fraction)`` tokens (its row
            has ``min_tokens``). None: not scored.
        feature_network: adds the *perceptual* policy: the allocation of K tokens per window on average that
            maximises :func:`larp.budget.perceptual_quality` (PSNR plus ``feature_weight`` x the feature distance
            in dB, averaged over the networks). An object with ``features`` ((n, 3, t, h, w) in [0, 1] ->
            (n, D)), or a sequence of them (several independently trained networks: better than one); best
            other networks than ``detector`` (second detectors, LPIPS-like), so that the Fréchet distance is not
            measured with the features the allocation optimised. None: not scored.

    Returns:
        {"candidates", "clips", "curves": [{"policy", "budget", "mean_tokens", "psnr", ...}], "targets": [...],
        "fixed_psnr_at_candidates", ["predictor"]}.
    """
    require_nested_dropout(tokenizer)
    n_tokens = tokenizer.config.num_tokens
    candidates = list(candidates) if candidates is not None else candidate_lengths(n_tokens)
    bad = [k for k in budgets if not 1 <= int(k) <= n_tokens] + [k for k in targets_at if k not in candidates]
    if bad:
        raise ValueError(f"budgets {bad} are outside [1, {n_tokens}] tokens per window, or targets_at lengths that "
                         f"are not candidates {candidates}")
    if min_fraction is not None:
        floor_length(n_tokens, candidates, min_fraction)  # checks the fraction before anything is decoded
    n = len(videos)
    ids = encode_ids(tokenizer, videos, batch_size, precision)
    curves = measure_quality(tokenizer, videos, candidates, metric="psnr", ids=ids, batch_size=batch_size,
                             precision=precision)
    real_stats = None
    if detector is not None:
        real_stats = FeatureStats()
        for start in range(0, n, batch_size):
            real_stats.update(detector.features(videos[start : start + batch_size]))
    common = dict(labels=labels, detector=detector, real_stats=real_stats, lpips=lpips, batch_size=batch_size,
                  precision=precision, score_ssim=score_ssim)
    perceptual = None
    if feature_network is not None:
        networks = feature_network if isinstance(feature_network, (list, tuple)) else [feature_network]
        distances = [measure_quality(tokenizer, videos, candidates, metric="features", ids=ids,
                                     batch_size=batch_size, precision=precision, features=network.features)
                     for network in networks]
        perceptual = perceptual_quality(curves, distances, feature_weight)
    predicted = None
    if predictor is not None:
        if list(predictor.candidates) != candidates or predictor.metric != "psnr":
            raise ValueError(f"the predictor predicts {predictor.metric} at {list(predictor.candidates)}; this "
                             f"evaluation needs psnr at {candidates}")
        predicted = predictor.predict(tokenizer, videos).double()
    rows = []
    for budget in budgets:
        policies = {"fixed": torch.full((n,), int(budget)),
                    "adaptive": allocate_mean_tokens(curves, candidates, int(budget))}
        if predicted is not None:
            policies["predicted"] = allocate_mean_tokens(predicted, candidates, int(budget))
        if perceptual is not None:
            policies["perceptual"] = allocate_mean_tokens(perceptual, candidates, int(budget))
        floor = None
        if min_fraction is not None:
            floor = floor_length(int(budget), candidates, min_fraction)
            policies["floored"] = allocate_mean_tokens(curves, candidates, int(budget), min_tokens=floor)
        for policy, lengths in policies.items():
            extra = {"min_tokens": floor} if policy == "floored" else {}
            rows.append({"policy": policy, "budget": int(budget), **extra,
                         **score_lengths(tokenizer, videos, ids, lengths.long(), **common)})
    fixed_means = curves.mean(dim=0)
    targets = [float(t) for t in targets] + [fixed_means[candidates.index(k)].item() for k in targets_at]
    target_rows = []
    for target in targets:
        lengths = lengths_for_target(curves, candidates, float(target), metric="psnr")
        quality = _at(curves, candidates, lengths)
        reaching = [k for k, m in zip(candidates, fixed_means.tolist()) if m >= target]
        by_mean = [r for r in rows if r["policy"] == "adaptive" and r["psnr"] >= target]
        target_rows.append({"target_psnr": float(target), "adaptive_mean_tokens": lengths.double().mean().item(),
                            "adaptive_share_meeting": (quality >= target).double().mean().item(),
                            "adaptive_mean_psnr": quality.mean().item(),
                            "smallest_fixed_reaching": reaching[0] if reaching else None,
                            "fixed_mean_psnr": fixed_means[candidates.index(reaching[0])].item() if reaching else None,
                            "smallest_adaptive_budget_reaching": min((r["budget"] for r in by_mean), default=None)})
    result: dict[str, Any] = {"candidates": candidates, "clips": n, "curves": rows, "targets": target_rows,
                              "fixed_psnr_at_candidates": fixed_means.tolist()}
    if min_fraction is not None:
        result["min_fraction"] = float(min_fraction)
    if perceptual is not None:
        result["feature_weight"] = float(feature_weight)
    if predicted is not None:
        result["predictor"] = predictor_quality(curves, predicted, candidates, targets=targets, means=budgets)
    return result


def plot_rate_quality(folder: str | os.PathLike, result: dict[str, Any], *, prefix: str = "budget") -> dict[str, str]:
    """Draw the rate-quality curves (one PNG per metric present) in ``folder``: {metric: path}.

    Raises ImportError (naming the install command) without matplotlib.
    """
    from larp.demo.plot import Series, line_plot  # at call time: the demo package imports this module

    folder = Path(folder)
    labels = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "fvd": "Fréchet distance (detector features)",
              "class_accuracy": "class accuracy"}
    colors = {"fixed": "#1f77b4", "adaptive": "#d62728", "predicted": "#2ca02c", "floored": "#9467bd",
              "perceptual": "#ff7f0e"}
    rows = result["curves"]
    paths = {}
    for metric, label in labels.items():
        if not any(metric in row for row in rows):
            continue
        series = []
        for policy in colors:
            picked = [row for row in rows if row["policy"] == policy and metric in row]
            if picked:
                series.append(Series(policy, [r["mean_tokens"] for r in picked], [r[metric] for r in picked],
                                     marker=True, color=colors[policy]))
        path = line_plot(folder / f"{prefix}_{metric}.png", series, title=f"{label} vs mean tokens per window",
                         xlabel="mean tokens per window", ylabel=label)
        paths[metric] = str(path)
    return paths

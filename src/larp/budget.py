"""Adaptive token budgets: how many of its ``N`` tokens each window keeps (the one owner of length choice).

A tokenizer trained with nested dropout (``config.nested_dropout``) decodes any prefix of its tokens, so a
window may keep only its first ``k`` ids (its *length*). A static window needs few tokens, a busy one many.
This module chooses ``k`` per window from a set of *candidate* lengths (:func:`candidate_lengths`: every
``N/16`` by default, always ``N``), under one of four policies:

* a quality target, ``target_psnr`` (dB, higher is better), ``target_mse`` or ``target_lpips`` (lower is
  better): each window gets the smallest candidate whose decoded prefix meets the target, or ``N`` when none
  does. Found by a batched bisection over the sorted candidates (:func:`search_lengths`: about
  ``log2(C + 1)`` decodes per window instead of ``C``);
* ``target_mean_psnr``: the *mean* PSNR over the windows meets the target with few tokens in total
  (:func:`lengths_for_mean_target`: easy windows may exceed it, hard ones stay below);
* ``mean_tokens``: a total of ``windows x mean_tokens`` tokens (never more) shared among the windows so that
  the summed quality is the largest (:func:`allocate_mean_tokens` on the measured curves, every candidate
  decoded once per window: :func:`measure_quality`).

A pixel metric is not what a viewer (or a feature-based Fréchet distance) sees: the PSNR-optimal allocation
may leave a window with a prefix so short that its motion is lost while the summed PSNR is best.
:func:`perceptual_quality` adds a feature term to the PSNR curves (``metric="features"``: the squared distance
between a feature network's embeddings of the decoded prefix and of the window, in dB, averaged over one or
several networks), and
:func:`allocate_mean_tokens` shares a budget over that combined curve like over any other.

With a ``predictor`` (an object with ``candidates``, ``metric`` and ``predict(tokenizer, windows) -> (b, C)``,
e.g. :class:`larp.models.length_predictor.LengthPredictor`) the curves are predicted and nothing is decoded.

>>> ids, lengths = adaptive_encode(tokenizer, windows, target_psnr=30.0)   # ids (b, N), -1 past each length
>>> video = decode_prefixes(tokenizer, ids, lengths)                        # each window from its own prefix

Token ids past a window's length are ``-1`` (:data:`PAD_ID`) wherever ids of shape ``(windows, N)`` are kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from larp.evaluation.image_metrics import MSE_FLOOR, psnr
from larp.models.tokenizer import LARPTokenizer
from larp.precision import autocast

__all__ = [
    "HIGHER_IS_BETTER",
    "METRICS",
    "PAD_ID",
    "LengthChoice",
    "LengthPredictorLike",
    "adaptive_encode",
    "POLICIES",
    "POOLED",
    "allocate_mean_tokens",
    "allocate_pooled",
    "floor_length",
    "budget_option",
    "candidate_lengths",
    "choose_lengths",
    "decode_prefixes",
    "encode_with_curves",
    "lengths_for_mean_target",
    "lengths_for_target",
    "measure_quality",
    "pad_past_lengths",
    "perceptual_quality",
    "require_nested_dropout",
    "resolve_policy",
    "search_lengths",
    "window_lengths_of",
]

PAD_ID = -1
#: Quality metrics of a decoded prefix against its window: name -> whether higher is better. ``features``: the
#: squared L2 distance between a feature network's embeddings of the decoded prefix and of the window.
HIGHER_IS_BETTER = {"psnr": True, "mse": False, "lpips": False, "features": False}
METRICS = tuple(HIGHER_IS_BETTER)
#: Default weight of the feature term of :func:`perceptual_quality` (dB of feature distance per dB of PSNR),
#: chosen on held-out clips other than the ones reported (``benchmarks/bench_perceptual_allocation.py``; README,
#: "Adaptive token budgets"): with four feature networks, 0.5 won at the most budgets on the demo's tokenizer
#: and tied with 0.25, 1 and 2 on its earlier one (0.25 had won with one network there).
DEFAULT_FEATURE_WEIGHT = 0.5
#: Feature distances below this count as this (a prefix whose features equal the window's is not infinitely good).
FEATURE_DISTANCE_FLOOR = 1e-12
#: Exact allocation (dynamic programming) when windows x budget units x candidates is at most this.
DP_MAX_CELLS = 30_000_000


class LengthPredictorLike(Protocol):
    """What ``predictor=`` takes: predicted quality (in ``metric``'s units) for each of ``candidates``."""

    candidates: list[int]
    metric: str

    def predict(self, tokenizer: LARPTokenizer, windows: torch.Tensor) -> torch.Tensor: ...


# ------------------------------------------------------------------------------------------ lengths
def candidate_lengths(num_tokens: int, step: int | None = None) -> list[int]:
    """The candidate prefix lengths ``step, 2*step, ..., N`` (always ending with ``N``).

    ``step`` defaults to ``N // 16`` (at least 1): 16 candidates for N a multiple of 16.
    """
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens must be an integer >= 1, got {num_tokens!r}")
    if step is None:
        step = max(1, num_tokens // 16)
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= num_tokens:
        raise ValueError(f"the candidate step must be an integer in [1, {num_tokens}], got {step!r}")
    return list(range(step, num_tokens, step)) + [num_tokens]


def _check_candidates(candidates: Sequence[int], num_tokens: int) -> list[int]:
    values = [int(c) for c in candidates]
    if not values or any(c != v for c, v in zip(candidates, values)):
        raise ValueError(f"candidate lengths must be a non-empty list of integers, got {list(candidates)!r}")
    if values != sorted(set(values)) or values[0] < 1 or values[-1] > num_tokens:
        raise ValueError(f"candidate lengths must increase strictly within [1, {num_tokens}], got {values}")
    return values


def require_nested_dropout(tokenizer: LARPTokenizer) -> None:
    """Refuse a tokenizer that cannot decode prefixes (built without ``nested_dropout``)."""
    if not getattr(tokenizer.config, "nested_dropout", False):
        raise ValueError("this tokenizer was not trained with nested dropout (config.nested_dropout is false): "
                         "adaptive lengths need a model that decodes prefixes of its tokens")


def pad_past_lengths(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A copy of ``ids`` (b, N) with :data:`PAD_ID` at every position >= the window's length."""
    position = torch.arange(ids.shape[1], device=ids.device)
    return torch.where(position[None] < lengths.to(ids.device)[:, None], ids, torch.full_like(ids, PAD_ID))


def window_lengths_of(ids: np.ndarray | torch.Tensor) -> np.ndarray:
    """(windows,) lengths of ids (windows, N) padded with -1: the valid ids must be a prefix of each row."""
    array = np.asarray(ids)
    if array.ndim != 2:
        raise ValueError(f"token ids must have shape (windows, tokens), got {array.shape}")
    valid = array >= 0
    lengths = valid.sum(axis=1)
    prefix = np.arange(array.shape[1])[None] < lengths[:, None]
    if not np.array_equal(valid, prefix):
        bad = int(np.flatnonzero((valid != prefix).any(axis=1))[0])
        raise ValueError(f"window {bad}: a -1 (no token) before a valid id; only the tail of a window may be -1")
    return lengths.astype(np.int64)


# ------------------------------------------------------------------------------------------ decoding
@torch.no_grad()
def decode_prefixes(tokenizer: LARPTokenizer, ids: torch.Tensor, lengths: torch.Tensor | None = None,
                    frames: int | None = None, precision: str = "auto", *, clamp: bool = True) -> torch.Tensor:
    """Decode each window of ``ids`` (b, N) from its first ``lengths[i]`` ids -> (b, 3, frames, S, S) float32
    on the tokenizer's device. Ids past a length are ignored (they may be -1); ``lengths`` defaults to the
    count of ids >= 0. All windows at full length decode exactly as ``tokenizer.decode``."""
    n = tokenizer.config.num_tokens
    if ids.ndim != 2 or ids.shape[1] != n:
        raise ValueError(f"expected token ids of shape (windows, {n}), got {tuple(ids.shape)}")
    ids = ids.to(tokenizer.device, torch.long)
    if lengths is None:
        lengths = (ids >= 0).sum(dim=1)
    lengths = lengths.to(tokenizer.device, torch.long)
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > n):
        raise ValueError(f"window lengths must be in [1, {n}], got {int(lengths.min())}..{int(lengths.max())}")
    full = bool((lengths == n).all())
    if not full:
        require_nested_dropout(tokenizer)
    position = torch.arange(n, device=ids.device)
    valid = position[None] < lengths[:, None]
    codes = torch.where(valid, ids, torch.zeros_like(ids))
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= tokenizer.config.quantizer.codebook_size):
        raise ValueError(f"token ids must be in [0, {tokenizer.config.quantizer.codebook_size}) within each "
                         f"window's length, got {int(codes.min())}..{int(codes.max())}")
    frames = tokenizer.check_num_frames(tokenizer.config.frame_num if frames is None else frames)
    with autocast(precision, tokenizer.device):
        video = tokenizer.decode_latents(tokenizer.ids_to_latents(codes), frames, keep=None if full else lengths)
    video = video.float()
    return video.clamp(0, 1) if clamp else video


class _Scorer:
    """Quality (n,) float64 of decoded clips against their references, in a metric's units."""

    def __init__(self, metric: str, device: torch.device, lpips: Any = None,
                 features: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if metric not in HIGHER_IS_BETTER:
            raise ValueError(f"unknown quality metric {metric!r}; expected one of {', '.join(METRICS)}")
        if metric == "features" and features is None:
            raise ValueError("the features metric needs a feature network: features=callable((n, 3, T, S, S) in "
                             "[0, 1]) -> (n, D), e.g. a detector's .features")
        self.metric = metric
        self.lpips = None
        self.features = features
        if metric == "lpips":
            if lpips is None:
                from larp.losses.perceptual import load_lpips

                try:
                    lpips = load_lpips(device=device)
                except (FileNotFoundError, ValueError) as error:
                    raise ValueError(f"an LPIPS target needs the LPIPS weights: {error}") from None
            self.lpips = lpips.to(device).eval()

    def reference(self, windows: torch.Tensor, batch_size: int) -> torch.Tensor:
        """What decoded clips are compared with, computed once per window: the windows themselves (pixel metrics,
        LPIPS), or their (n, D) features (``features``)."""
        if self.metric != "features":
            return windows.float()
        return torch.cat([self.features(windows[i : i + batch_size].float())
                          for i in range(0, len(windows), batch_size)])

    def __call__(self, reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        """Quality of ``estimate`` (n, 3, T, S, S) against ``reference`` (rows of :meth:`reference`)."""
        if self.metric == "psnr":
            return psnr(reference, estimate).double()
        if self.metric == "mse":
            return (reference.double() - estimate.double()).pow(2).flatten(1).mean(dim=1).clamp_min(MSE_FLOOR)
        if self.metric == "features":
            fake = self.features(estimate.float())
            return (fake.double() - reference.double()).pow(2).flatten(1).sum(dim=1)
        return self.lpips.forward_video(estimate.float(), reference.float(), reduction="none").double().mean(dim=1)


class _PrefixMeasurer:
    """Encodes a batch of windows once; measures the quality of any (window, prefix length) pairs in batches."""

    def __init__(self, tokenizer: LARPTokenizer, windows: torch.Tensor, *, metric: str, ids: torch.Tensor | None,
                 batch_size: int, precision: str, lpips: Any = None,
                 features: Callable[[torch.Tensor], torch.Tensor] | None = None):
        require_nested_dropout(tokenizer)
        self.tokenizer, self.precision, self.batch_size = tokenizer, precision, batch_size
        self.windows = windows.to(tokenizer.device)
        if ids is None:
            with autocast(precision, tokenizer.device):
                ids = tokenizer.encode(self.windows)
        self.ids = ids.to(tokenizer.device, torch.long)
        self.frames = int(windows.shape[2])
        self.score = _Scorer(metric, tokenizer.device, lpips, features)
        with torch.no_grad():
            self.references = self.score.reference(self.windows, batch_size)
        self.decodes = 0  # prefixes decoded so far (for tests and reports)

    @torch.no_grad()
    def __call__(self, window: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """(n,) quality of decoding window[i] from its first length[i] ids, on the CPU (float64)."""
        out = []
        for first in range(0, len(window), self.batch_size):
            w = window[first : first + self.batch_size].to(self.ids.device)
            k = length[first : first + self.batch_size].to(self.ids.device)
            video = decode_prefixes(self.tokenizer, self.ids[w], k, self.frames, self.precision)
            out.append(self.score(self.references[w], video).cpu())
            self.decodes += len(w)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _check_batch(windows: torch.Tensor, batch_size: int) -> None:
    if not isinstance(windows, torch.Tensor) or windows.ndim != 5:
        shape = tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__
        raise ValueError(f"expected windows (b, 3, T, S, S), got {shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def measure_quality(tokenizer: LARPTokenizer, windows: torch.Tensor, candidates: Sequence[int] | None = None, *,
                    metric: str = "psnr", ids: torch.Tensor | None = None, batch_size: int = 16,
                    precision: str = "auto", lpips: Any = None,
                    features: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The rate-quality curve of every window: (b, C) float64, the quality of decoding each candidate prefix.

    ``windows`` (b, 3, T, S, S) in [0, 1] are encoded once (or ``ids`` (b, N) given); the ``b x C`` prefixes
    are decoded ``batch_size`` at a time. ``metric``: ``psnr`` (dB), ``mse``, ``lpips`` (needs the LPIPS
    weights, found by :func:`larp.losses.perceptual.resolve_lpips_weights`, or an ``lpips`` module) or
    ``features`` (the squared distance of ``features(prefix)`` from ``features(window)``: ``features`` maps
    (n, 3, T, S, S) clips in [0, 1] to (n, D) embeddings, e.g. a detector's ``features`` method).
    """
    _check_batch(windows, batch_size)
    candidates = _check_candidates(candidates or candidate_lengths(tokenizer.config.num_tokens),
                                   tokenizer.config.num_tokens)
    measure = _PrefixMeasurer(tokenizer, windows, metric=metric, ids=ids, batch_size=batch_size,
                              precision=precision, lpips=lpips, features=features)
    b, c = windows.shape[0], len(candidates)
    window = torch.arange(b).repeat_interleave(c)
    length = torch.tensor(candidates).repeat(b)
    return measure(window, length).view(b, c)


# ------------------------------------------------------------------------------------------ quality targets
def _meets(quality: torch.Tensor, target: float, metric: str) -> torch.Tensor:
    return quality >= target if HIGHER_IS_BETTER[metric] else quality <= target


def lengths_for_target(curves: torch.Tensor, candidates: Sequence[int], target: float, *,
                       metric: str = "psnr") -> torch.Tensor:
    """(W,) the smallest candidate whose quality in ``curves`` (W, C) meets ``target``; the largest candidate
    when none does. Exact for any curve, monotone or not (every candidate's quality is known)."""
    curves = torch.as_tensor(curves, dtype=torch.float64)
    if curves.ndim != 2 or curves.shape[1] != len(candidates):
        raise ValueError(f"curves must be (windows, {len(candidates)} candidates), got {tuple(curves.shape)}")
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown quality metric {metric!r}; expected one of {', '.join(METRICS)}")
    ok = _meets(curves, target, metric)
    first = torch.where(ok.any(dim=1), ok.to(torch.int8).argmax(dim=1), torch.full_like(ok[:, 0], len(candidates) - 1,
                                                                                      dtype=torch.long))
    return torch.tensor(list(candidates), dtype=torch.long)[first]


def bisect_lengths(measure: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], num_windows: int,
                   candidates: Sequence[int], target: float, *, metric: str = "psnr"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched bisection over the sorted candidates: ``measure(window_index, length) -> quality`` is called
    with every still-searching window once per round (``ceil(log2(C + 1))`` rounds).

    Returns (lengths (W,), quality (W,) measured at those lengths).

    On a monotone curve this is the smallest candidate meeting the target (the largest when none does).
    **Non-monotone curves** (a longer prefix that decodes worse, which nested dropout does not rule out): the
    result is the smallest *decoded* candidate that met the target, so its measured quality always meets the
    target (the chosen length is never worse than asked); a smaller candidate that was not decoded might
    have met it too. When no decoded candidate meets the target the result is the largest candidate (the
    search then decoded it: the last probe of a window that never meets is always the last candidate).
    """
    c = len(candidates)
    lengths_table = torch.tensor(list(candidates), dtype=torch.long)
    lo = torch.zeros(num_windows, dtype=torch.long)
    hi = torch.full((num_windows,), c, dtype=torch.long)
    quality = torch.full((num_windows,), math.nan, dtype=torch.float64)
    while bool((active := lo < hi).any()):
        index = active.nonzero().squeeze(1)
        mid = (lo[index] + hi[index]) // 2
        measured = torch.as_tensor(measure(index, lengths_table[mid]), dtype=torch.float64).cpu()
        ok = _meets(measured, target, metric)
        hi[index[ok]] = mid[ok]
        lo[index[~ok]] = mid[~ok] + 1
        # remember the quality at the current answer: a success, or the last candidate failing
        keep = ok | (mid == c - 1)
        quality[index[keep]] = measured[keep]
    return lengths_table[lo.clamp(max=c - 1)], quality


def search_lengths(tokenizer: LARPTokenizer, windows: torch.Tensor, target: float, *, metric: str = "psnr",
                   candidates: Sequence[int] | None = None, ids: torch.Tensor | None = None, batch_size: int = 16,
                   precision: str = "auto", lpips: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per window, the smallest candidate prefix meeting ``target`` by decoding (:func:`bisect_lengths`).

    Returns (ids (b, N) full, lengths (b,), quality (b,) measured at the chosen lengths), on the CPU.
    """
    _check_batch(windows, batch_size)
    candidates = _check_candidates(candidates or candidate_lengths(tokenizer.config.num_tokens),
                                   tokenizer.config.num_tokens)
    measure = _PrefixMeasurer(tokenizer, windows, metric=metric, ids=ids, batch_size=batch_size,
                              precision=precision, lpips=lpips)
    lengths, quality = bisect_lengths(measure, windows.shape[0], candidates, target, metric=metric)
    return measure.ids.cpu(), lengths, quality


# ------------------------------------------------------------------------------------------ a mean budget
def _check_curves(curves: torch.Tensor | np.ndarray, candidates: Sequence[int],
                  metric: str) -> tuple[torch.Tensor, list[int]]:
    """Rate-quality curves (W, C) as float64 and the candidate lengths as ints, or a clear error."""
    curves = torch.as_tensor(curves, dtype=torch.float64)
    candidates = [int(c) for c in candidates]
    if curves.ndim != 2 or curves.shape[1] != len(candidates) or curves.shape[0] == 0:
        raise ValueError(f"curves must be (windows >= 1, {len(candidates)} candidates), got {tuple(curves.shape)}")
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown quality metric {metric!r}; expected one of {', '.join(METRICS)}")
    return curves, candidates


def floor_length(mean_tokens: float, candidates: Sequence[int], fraction: float) -> int:
    """The per-window floor of a mean budget: the largest candidate <= ``fraction x mean_tokens``, or the
    smallest candidate when none is (so ``fraction`` 0.5 of K = 8 is 4 tokens; of K = 2 with candidates
    2, 4, ... it is 2, every window at K). For :func:`allocate_mean_tokens`'s ``min_tokens``."""
    fraction = float(fraction)
    if not math.isfinite(fraction) or not 0 < fraction <= 1:
        raise ValueError(f"the floor fraction must be in (0, 1], got {fraction:g}")
    candidates = sorted(int(c) for c in candidates)
    if not candidates:
        raise ValueError("candidate lengths must be a non-empty list of integers")
    below = [c for c in candidates if c <= fraction * float(mean_tokens) + 1e-9]
    return below[-1] if below else candidates[0]


def perceptual_quality(psnr_curves: torch.Tensor | np.ndarray,
                       feature_curves: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
                       weight: float = DEFAULT_FEATURE_WEIGHT) -> torch.Tensor:
    """PSNR plus a feature term in dB, per window and candidate: what a perceptual allocation maximises.

    ``psnr_curves`` is (W, C) from :func:`measure_quality` with ``metric="psnr"``; ``feature_curves`` is one
    (W, C) curve from ``metric="features"`` or a sequence of them, one per feature network. The result is
    ``psnr - weight x mean over the networks of 10 log10(feature distance)`` (W, C), higher is better: give it
    to :func:`allocate_mean_tokens` (``metric="psnr"``). Like PSNR, each feature term is a log of an error, so a
    gain means the same at every quality level, and the scale of a network's features does not matter (it
    shifts each window's curve by a constant, which moves no allocation); only ``weight`` does.

    With feature networks other than the one a Fréchet distance is measured with (second detectors, LPIPS),
    this spends the tokens where the content is *seen* to change, not only where pixels do. Several
    independently trained networks are better than one (measured in ``benchmarks/bench_perceptual_allocation.py``):
    each weighs some directions of its feature space by the accident of its initialisation, and the mean keeps
    what they share, the content.
    """
    psnr_curves = torch.as_tensor(psnr_curves, dtype=torch.float64)
    if isinstance(feature_curves, (torch.Tensor, np.ndarray)):
        feature_curves = [feature_curves]
    feature_curves = [torch.as_tensor(c, dtype=torch.float64) for c in feature_curves]
    if not feature_curves:
        raise ValueError("expected the feature curves of at least one network")
    if psnr_curves.ndim != 2 or any(c.shape != psnr_curves.shape for c in feature_curves):
        raise ValueError(f"expected PSNR and feature curves of one (W, C) shape, got {tuple(psnr_curves.shape)} "
                         f"and {[tuple(c.shape) for c in feature_curves]}")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"the feature weight must be a finite number >= 0, got {weight}")
    if any(bool((c < 0).any()) or not bool(torch.isfinite(c).all()) for c in feature_curves):
        raise ValueError("feature distances must be finite and >= 0")
    decibels = torch.stack([10 * torch.log10(c.clamp_min(FEATURE_DISTANCE_FLOOR)) for c in feature_curves])
    return psnr_curves - weight * decibels.mean(dim=0)


def allocate_mean_tokens(curves: torch.Tensor | np.ndarray, candidates: Sequence[int], mean_tokens: float, *,
                         metric: str = "psnr", method: str = "auto", min_tokens: int | None = None) -> torch.Tensor:
    """Share ``floor(W x mean_tokens)`` tokens among W windows (never more) to maximise the summed quality.

    Args:
        curves: (W, C) quality of each window at each candidate length (measured or predicted); for ``mse``
            and ``lpips`` (lower is better) the summed quality is minimised.
        candidates: the C lengths, increasing.
        mean_tokens: the mean budget per window, at least the smallest candidate (at least the floor's
            candidate with ``min_tokens``).
        method: ``dp``, ``greedy`` or ``auto``.
        min_tokens: a floor: every window gets at least this many tokens (the smallest candidate >=
            ``min_tokens``), and the rest of the budget is shared optimally above it (the same solvers on the
            candidates at or above the floor). None (default): no floor beyond the smallest candidate. The
            PSNR-optimal allocation without a floor may give a window its first candidate only, and a prefix
            that short loses the motion of a clip (the detector's Fréchet distance rises while the summed PSNR
            is best); :func:`floor_length` turns a fraction of the mean into a floor.

    Returns:
        (W,) int64 lengths, each a candidate (>= ``min_tokens``), summing to at most ``floor(W x mean_tokens)``.

    Two solvers of this multiple-choice knapsack:

    * ``dp``: exact dynamic programming over the budget, in units of the gcd of the candidates (2 tokens for
      the default candidates of N = 32): O(W x units x C) time, W x units choices kept. Every curve shape,
      non-monotone and non-concave ones included, gets the true optimum; ties go to fewer tokens.
    * ``greedy``: each window starts at the smallest candidate; the segments of every window's upper convex
      hull (its rate-quality curve with the dips and non-concave points removed) are taken in order of
      decreasing quality per token while they fit (the Lagrangian solution: optimal at every budget that a
      set of whole hull segments reaches), then the leftover is spent on the best single upgrades that fit.
      O(W C log(W C)): for shards of many thousands of windows.

    ``auto`` (default) is ``dp`` when W x units x C <= :data:`DP_MAX_CELLS` (a few hundred windows at the
    default candidates of any N, a 16-frame call of a whole video, a shard of short clips) and ``greedy`` beyond,
    where the DP's time and memory grow with W^2 and the hull's gap (at most one segment) is small per window.
    """
    curves, candidates = _check_curves(curves, candidates, metric)
    if candidates != sorted(set(candidates)) or candidates[0] < 1:
        raise ValueError(f"candidate lengths must increase strictly from >= 1, got {candidates}")
    if not math.isfinite(float(mean_tokens)) or float(mean_tokens) < candidates[0]:
        raise ValueError(f"mean_tokens {mean_tokens} is below the smallest candidate length {candidates[0]}")
    if method not in ("auto", "dp", "greedy"):
        raise ValueError(f"method must be auto, dp or greedy, got {method!r}")
    if not bool(torch.isfinite(curves).all()):
        raise ValueError("the quality curves hold NaN or infinite values")
    if min_tokens is not None:
        if isinstance(min_tokens, bool) or int(min_tokens) != min_tokens or not 1 <= min_tokens <= candidates[-1]:
            raise ValueError(f"min_tokens must be an integer in [1, {candidates[-1]}] (the largest candidate), "
                             f"got {min_tokens!r}")
        allowed = [j for j, c in enumerate(candidates) if c >= min_tokens]
        if float(mean_tokens) < candidates[allowed[0]]:
            raise ValueError(f"mean_tokens {mean_tokens} is below the floor's candidate length "
                             f"{candidates[allowed[0]]} (min_tokens {min_tokens})")
        curves, candidates = curves[:, allowed], [candidates[j] for j in allowed]
    values = (curves if HIGHER_IS_BETTER[metric] else -curves).numpy()
    w = values.shape[0]
    unit = math.gcd(*candidates)
    costs = np.array(candidates, dtype=np.int64) // unit
    budget = min(int(math.floor(w * float(mean_tokens) / unit + 1e-9)), w * int(costs[-1]))
    if method == "auto":
        method = "dp" if w * (budget + 1) * len(candidates) <= DP_MAX_CELLS else "greedy"
    choice = _allocate_dp(values, costs, budget) if method == "dp" else _allocate_greedy(values, costs, budget)
    return torch.tensor(candidates, dtype=torch.long)[torch.from_numpy(choice)]


def _allocate_dp(values: np.ndarray, costs: np.ndarray, budget: int) -> np.ndarray:
    """Exact: best[u] = the best summed value of the windows so far using exactly u units."""
    w, c = values.shape
    best = np.full(budget + 1, -np.inf)
    best[0] = 0.0
    choice = np.zeros((w, budget + 1), dtype=np.int16 if c < 2**15 else np.int32)
    for window in range(w):
        new = np.full(budget + 1, -np.inf)
        arg = choice[window]
        for option in range(c):
            k = int(costs[option])
            if k > budget:
                break
            candidate = np.full(budget + 1, -np.inf)
            candidate[k:] = best[: budget + 1 - k] + values[window, option]
            better = candidate > new  # strict: ties keep the shorter option
            new[better] = candidate[better]
            arg[better] = option
        best = new
    used = int(np.argmax(best))  # first maximum: the fewest units among equal totals
    out = np.zeros(w, dtype=np.int64)
    for window in range(w - 1, -1, -1):
        out[window] = choice[window, used]
        used -= int(costs[out[window]])
    return out


def _hull_segments(values: np.ndarray, costs: np.ndarray) -> list[tuple[float, int, int, int, int]]:
    """The rising segments of every window's upper convex hull from its first candidate, as
    (-gain per unit, window, order, from, to), sorted best first (a window's own segments stay in order)."""
    w, c = values.shape
    segments = []
    for window in range(w):
        v = values[window]
        hull = [0]
        for option in range(1, c):
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                if (v[b] - v[a]) * (costs[option] - costs[b]) <= (v[option] - v[b]) * (costs[b] - costs[a]):
                    hull.pop()
                else:
                    break
            hull.append(option)
        for order, (a, b) in enumerate(zip(hull, hull[1:])):
            gain = (v[b] - v[a]) / (costs[b] - costs[a])
            if gain > 0:
                segments.append((-gain, window, order, a, b))
    segments.sort()
    return segments


def _allocate_greedy(values: np.ndarray, costs: np.ndarray, budget: int) -> np.ndarray:
    """Greedy on the marginal gains along each window's upper convex hull, then single upgrades."""
    w = values.shape[0]
    choice = np.zeros(w, dtype=np.int64)
    spent = int(w * costs[0])
    for _, window, _, a, b in _hull_segments(values, costs):
        extra = int(costs[b] - costs[a])
        if choice[window] == a and spent + extra <= budget:
            choice[window] = b
            spent += extra
    while True:  # the leftover: the best single upgrade per unit that still fits
        current = values[np.arange(w), choice]
        extra = costs[None, :] - costs[choice][:, None]
        gain = values - current[:, None]
        feasible = (extra > 0) & (spent + extra <= budget) & (gain > 0)
        if not feasible.any():
            return choice
        rate = np.where(feasible, gain / np.maximum(extra, 1), -np.inf)
        window, option = np.unravel_index(int(np.argmax(rate)), rate.shape)
        spent += int(extra[window, option])
        choice[window] = option


def lengths_for_mean_target(curves: torch.Tensor | np.ndarray, candidates: Sequence[int], target: float, *,
                            metric: str = "psnr") -> torch.Tensor:
    """(W,) lengths whose *mean* quality over the W windows meets ``target`` with few tokens in total.

    The dual of :func:`allocate_mean_tokens`: the windows start at the smallest candidate and the segments of
    their upper convex hulls are taken in order of decreasing quality per token until the mean quality meets
    the target (the Lagrangian path: no allocation on it spends fewer tokens for a higher mean, and the last
    segment may overshoot the target by one step). When even every window at its best cannot reach the target,
    that best is returned. Unlike :func:`lengths_for_target` (each window meets the target on its own, ``N``
    where none does), easy windows may exceed the target and hard ones stay below it.
    """
    curves, candidates = _check_curves(curves, candidates, metric)
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    values = (sign * curves).numpy()
    costs = np.array(candidates, dtype=np.int64)
    w = values.shape[0]
    choice = np.zeros(w, dtype=np.int64)
    total, needed = float(values[:, 0].sum()), sign * float(target) * w
    for _, window, _, a, b in _hull_segments(values, costs):
        if total >= needed - 1e-9:
            break
        choice[window] = b
        total += float(values[window, b] - values[window, a])
    return torch.tensor(candidates, dtype=torch.long)[torch.from_numpy(choice)]


# ------------------------------------------------------------------------------------------ one entry point
#: The policies: the kind :func:`budget_option` returns -> the keyword argument that asks for it.
POLICIES = {"psnr": "target_psnr", "mse": "target_mse", "lpips": "target_lpips", "mean_psnr": "target_mean_psnr",
            "mean_tokens": "mean_tokens"}
#: Policies decided over all the windows together (their curves kept until the allocation), not per window.
POOLED = ("mean_psnr", "mean_tokens")


def budget_option(*, target_psnr: float | None = None, target_mse: float | None = None,
                  target_lpips: float | None = None, mean_tokens: float | None = None,
                  target_mean_psnr: float | None = None) -> tuple[str, float] | None:
    """The one policy given, as (a kind of :data:`POLICIES`, value); None when none is.

    Raises:
        ValueError: more than one given, or a value out of range.
    """
    values = {"psnr": target_psnr, "mse": target_mse, "lpips": target_lpips, "mean_psnr": target_mean_psnr,
              "mean_tokens": mean_tokens}
    given = {kind: value for kind, value in values.items() if value is not None}
    if len(given) > 1:
        raise ValueError(f"give one of {', '.join(POLICIES.values())}, not several "
                         f"({', '.join(POLICIES[kind] for kind in given)})")
    if not given:
        return None
    (kind, value), = given.items()
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{POLICIES[kind]}: expected a finite number, got {value}")
    if kind in ("mse", "lpips", "mean_tokens") and value <= 0:
        raise ValueError(f"{POLICIES[kind]} must be > 0, got {value:g}")
    return kind, value


def allocate_pooled(option: tuple[str, float], curves: torch.Tensor, candidates: Sequence[int],
                    metric: str) -> torch.Tensor:
    """(W,) lengths of a :data:`POOLED` policy from the curves (W, C) of all its windows."""
    kind, value = option
    if kind == "mean_tokens":
        return allocate_mean_tokens(curves, candidates, value, metric=metric)
    return lengths_for_mean_target(curves, candidates, value, metric=metric)


def resolve_policy(tokenizer: LARPTokenizer, option: tuple[str, float], candidates: Sequence[int] | None = None,
                   predictor: LengthPredictorLike | None = None) -> tuple[list[int], str]:
    """(candidates, metric) of a policy (:func:`budget_option`), checked before anything is encoded: the
    tokenizer decodes prefixes, the predictor's candidates and metric fit, a mean is at least the smallest
    candidate."""
    require_nested_dropout(tokenizer)
    kind, value = option
    n = tokenizer.config.num_tokens
    if predictor is not None:
        predicted = _check_candidates(list(predictor.candidates), n)
        if candidates is not None and list(candidates) != predicted:
            raise ValueError(f"the predictor scores the candidate lengths {predicted}, not {list(candidates)}")
        candidates, metric = predicted, str(predictor.metric)
        asked = "psnr" if kind == "mean_psnr" else kind
        if kind != "mean_tokens" and asked != metric:
            raise ValueError(f"the length predictor predicts {metric}, not {asked}: give a target_{metric} or "
                             f"mean_tokens")
    else:
        candidates = _check_candidates(candidates or candidate_lengths(n), n)
        metric = "psnr" if kind in POOLED else kind
    if kind == "mean_tokens" and value < candidates[0]:
        raise ValueError(f"mean_tokens {value:g} is below the smallest candidate length {candidates[0]}")
    return candidates, metric


@dataclass
class LengthChoice:
    """What :func:`choose_lengths` decided: ``ids`` (b, N) with -1 past each length, ``lengths`` (b,),
    ``quality`` (b,) at those lengths (measured, or predicted with a predictor), the ``metric`` of ``quality``,
    and ``decodes`` (prefixes decoded)."""

    ids: torch.Tensor
    lengths: torch.Tensor
    quality: torch.Tensor
    metric: str
    decodes: int = 0
    candidates: list[int] = field(default_factory=list)


def choose_lengths(tokenizer: LARPTokenizer, windows: torch.Tensor, *, target_psnr: float | None = None,
                   target_mse: float | None = None, target_lpips: float | None = None,
                   mean_tokens: float | None = None, target_mean_psnr: float | None = None, candidates: Sequence[int] | None = None,
                   predictor: LengthPredictorLike | None = None, batch_size: int = 16, precision: str = "auto",
                   lpips: Any = None, ids: torch.Tensor | None = None) -> LengthChoice:
    """:func:`adaptive_encode` with the quality at the chosen lengths (a :class:`LengthChoice`)."""
    require_nested_dropout(tokenizer)
    _check_batch(windows, batch_size)
    option = budget_option(target_psnr=target_psnr, target_mse=target_mse, target_lpips=target_lpips,
                           mean_tokens=mean_tokens, target_mean_psnr=target_mean_psnr)
    if option is None:
        raise ValueError(f"give one of {', '.join(POLICIES.values())}")
    kind, value = option
    candidates, metric = resolve_policy(tokenizer, option, candidates, predictor)
    table = torch.tensor(candidates, dtype=torch.long)
    decodes = 0
    if predictor is not None:
        with torch.no_grad():
            curves = torch.as_tensor(predictor.predict(tokenizer, windows), dtype=torch.float64).cpu()
        if curves.shape != (windows.shape[0], len(candidates)):
            raise ValueError(f"the predictor returned {tuple(curves.shape)}, expected ({windows.shape[0]}, "
                             f"{len(candidates)})")
        if ids is None:
            with autocast(precision, tokenizer.device):
                ids = tokenizer.encode(windows.to(tokenizer.device))
        ids = ids.cpu()
        lengths = (allocate_pooled(option, curves, candidates, metric) if kind in POOLED
                   else lengths_for_target(curves, candidates, value, metric=metric))
        quality = curves[torch.arange(len(lengths)), torch.searchsorted(table, lengths)]
    elif kind in POOLED:
        measure = _PrefixMeasurer(tokenizer, windows, metric=metric, ids=ids, batch_size=batch_size,
                                  precision=precision, lpips=lpips)
        b, c = windows.shape[0], len(candidates)
        curves = measure(torch.arange(b).repeat_interleave(c), table.repeat(b)).view(b, c)
        lengths = allocate_pooled(option, curves, candidates, metric)
        quality = curves[torch.arange(b), torch.searchsorted(table, lengths)]
        ids, decodes = measure.ids.cpu(), measure.decodes
    else:
        measure = _PrefixMeasurer(tokenizer, windows, metric=metric, ids=ids, batch_size=batch_size,
                                  precision=precision, lpips=lpips)
        lengths, quality = bisect_lengths(measure, windows.shape[0], candidates, value, metric=metric)
        ids, decodes = measure.ids.cpu(), measure.decodes
    return LengthChoice(pad_past_lengths(ids, lengths), lengths, quality, metric, decodes, list(candidates))


def encode_with_curves(tokenizer: LARPTokenizer, windows: torch.Tensor, candidates: Sequence[int] | None = None, *,
                       predictor: LengthPredictorLike | None = None, metric: str = "psnr", batch_size: int = 16,
                       precision: str = "auto", lpips: Any = None) -> tuple[torch.Tensor, torch.Tensor, list[int], str]:
    """One batch's share of a mean budget spread over many batches (a whole video, a dataset shard).

    Returns (ids (b, N) full, on the CPU; curves (b, C) measured by decoding every candidate, or predicted by
    ``predictor``; the candidates; the curves' metric). Concatenate the curves of every batch and give them to
    :func:`allocate_mean_tokens`, then :func:`pad_past_lengths`.
    """
    require_nested_dropout(tokenizer)
    _check_batch(windows, batch_size)
    n = tokenizer.config.num_tokens
    if predictor is not None:
        predicted = _check_candidates(list(predictor.candidates), n)
        if candidates is not None and list(candidates) != predicted:
            raise ValueError(f"the predictor scores the candidate lengths {predicted}, not {list(candidates)}")
        with torch.no_grad():
            curves = torch.as_tensor(predictor.predict(tokenizer, windows), dtype=torch.float64).cpu()
        if curves.shape != (windows.shape[0], len(predicted)):
            raise ValueError(f"the predictor returned {tuple(curves.shape)}, expected ({windows.shape[0]}, "
                             f"{len(predicted)})")
        with torch.no_grad(), autocast(precision, tokenizer.device):
            ids = tokenizer.encode(windows.to(tokenizer.device))
        return ids.cpu(), curves, predicted, str(predictor.metric)
    candidates = _check_candidates(candidates or candidate_lengths(n), n)
    with torch.no_grad(), autocast(precision, tokenizer.device):
        ids = tokenizer.encode(windows.to(tokenizer.device))
    curves = measure_quality(tokenizer, windows, candidates, metric=metric, ids=ids, batch_size=batch_size,
                             precision=precision, lpips=lpips)
    return ids.cpu(), curves, candidates, metric


def adaptive_encode(tokenizer: LARPTokenizer, windows: torch.Tensor, *, target_psnr: float | None = None,
                    target_mse: float | None = None, target_lpips: float | None = None,
                    mean_tokens: float | None = None, target_mean_psnr: float | None = None, candidates: Sequence[int] | None = None,
                    predictor: LengthPredictorLike | None = None, batch_size: int = 16,
                    precision: str = "auto", lpips: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize ``windows`` (b, 3, T, S, S) in [0, 1] with a length per window.

    Exactly one policy: ``target_psnr`` (dB) / ``target_mse`` / ``target_lpips`` (each window's smallest
    candidate meeting it, found by a batched bisection, :func:`bisect_lengths`; ``N`` when none does),
    ``target_mean_psnr`` (the mean PSNR of the b windows meets it, with few tokens in total:
    :func:`lengths_for_mean_target`) or ``mean_tokens`` (``b x mean_tokens`` tokens in total, shared to maximise the summed PSNR, or the
    predictor's metric: :func:`allocate_mean_tokens`). ``candidates``: the lengths to choose from (default
    :func:`candidate_lengths`). ``predictor``: predicted curves instead of decoding. ``lpips``: an LPIPS module
    (default: the pretrained weights, an error naming how to get them when absent).

    Returns:
        ids (b, N) int64 on the CPU with -1 past each window's length, and lengths (b,) int64.

    Raises:
        ValueError: the tokenizer was not trained with nested dropout, no or several policies, bad values.
    """
    choice = choose_lengths(tokenizer, windows, target_psnr=target_psnr, target_mse=target_mse,
                            target_lpips=target_lpips, mean_tokens=mean_tokens,
                            target_mean_psnr=target_mean_psnr, candidates=candidates,
                            predictor=predictor, batch_size=batch_size, precision=precision, lpips=lpips)
    return choice.ids, choice.lengths

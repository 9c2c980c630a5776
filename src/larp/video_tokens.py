"""Whole videos to token ids and back: ``larp.tokenize_video`` and ``larp.detokenize_video``.

A video becomes consecutive windows of the tokenizer's clip length (:mod:`larp.data.windows`), each window
``N`` token ids: ``ids`` of shape ``(windows, N)``. ``info`` says how they were made (the window plan's
:class:`~larp.data.windows.WindowInfo`, the tokenizer and its weights' fingerprint), and is all that
:func:`detokenize_video` needs to give back a video of the source's length and frame rate: the padded frames
of the last window are dropped and a letterbox (``resize="pad"``) is removed.

>>> tokens = larp.tokenize_video("talk.mp4", tokenizer)            # the whole video, at its own frame rate
>>> tokens.ids.shape, tokens.info["pad_frames"]                      # ((16, 1024), 6) for 250 frames
>>> video = larp.detokenize_video(tokens.ids, tokens.info, tokenizer)   # (3, 250, 128, 128)

**Adaptive lengths** (a tokenizer trained with nested dropout; :mod:`larp.budget`): with ``target_psnr``,
``target_mse``, ``target_lpips`` or ``mean_tokens`` each window keeps only the first ``k`` of its ``N`` ids;
``ids`` keep their shape ``(windows, N)`` with ``-1`` past each window's length, ``info["window_lengths"]``
lists the lengths (always written, all ``N`` at a fixed length) and ``info["budget"]`` the policy.
:func:`detokenize_video` decodes each window from its own length.

>>> tokens = larp.tokenize_video("talk.mp4", tokenizer, target_psnr=30.0)
>>> tokens.info["window_lengths"]                                     # [192, 64, 1024, ...]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from larp.budget import (
    POLICIES,
    POOLED,
    allocate_pooled,
    budget_option,
    choose_lengths,
    decode_prefixes,
    encode_with_curves,
    pad_past_lengths,
    resolve_policy,
    window_lengths_of,
)
from larp.data.windows import VideoWindows, WindowPlan
from larp.models.tokenizer import LARPTokenizer
from larp.precision import autocast

__all__ = [
    "TokenizedVideo",
    "adaptive_ids",
    "budget_policy",
    "decode_windows",
    "detokenize_video",
    "encode_windows",
    "iter_decoded",
    "strip_padding",
    "tokenize_video",
    "window_plan",
]


@dataclass
class TokenizedVideo:
    """The ids of a whole video, ``(windows, N)`` int64, and the ``info`` that says how they were made."""

    ids: np.ndarray
    info: dict


def window_plan(tokenizer: LARPTokenizer, *, fps: float | None = None, stride: int | None = None,
                start: float = 0.0, end: float | None = None, max_windows: int | None = None,
                resize: str = "crop") -> WindowPlan:
    """The :class:`WindowPlan` of ``tokenizer``: windows of its ``frame_num`` frames at its input size."""
    config = tokenizer.config
    return WindowPlan(frames=config.frame_num, size=config.input_size, fps=fps, stride=stride, start=start,
                      end=end, max_windows=max_windows, resize=resize)


def encode_windows(tokenizer: LARPTokenizer, windows: torch.Tensor, precision: str = "auto", *,
                   stochastic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """(b, 3, T, S, S) windows -> (b, N) int64 ids on the CPU; nearest codes unless ``stochastic``."""
    with autocast(precision, tokenizer.device):
        ids = tokenizer.encode(windows.to(tokenizer.device), stochastic=stochastic, generator=generator)
    return ids.cpu()


def decode_windows(tokenizer: LARPTokenizer, ids: torch.Tensor, frames: int, precision: str = "auto") -> torch.Tensor:
    """(b, N) ids -> (b, 3, frames, S, S) float32 on the CPU, clamped to [0, 1].

    Ids of ``-1`` past a window's length (adaptive lengths) decode each window from its own prefix
    (:func:`larp.budget.decode_prefixes`; a nested-dropout tokenizer)."""
    if bool((ids < 0).any()):
        window_lengths_of(ids.cpu())  # only a tail may be -1
        return decode_prefixes(tokenizer, ids, None, frames, precision).cpu()
    with autocast(precision, tokenizer.device):
        video = tokenizer.decode(ids.to(tokenizer.device), num_frames=frames, clamp=True)
    return video.float().cpu()


def _batches(windows: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    batch: list[torch.Tensor] = []
    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def tokenize_video(
    path: str | os.PathLike,
    tokenizer: LARPTokenizer,
    *,
    fps: float | None = None,
    stride: int | None = None,
    start: float = 0.0,
    end: float | None = None,
    max_windows: int | None = None,
    resize: str = "crop",
    batch_size: int = 8,
    precision: str = "auto",
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    fingerprint: str | None = None,
    target_psnr: float | None = None,
    target_mse: float | None = None,
    target_lpips: float | None = None,
    mean_tokens: float | None = None,
    target_mean_psnr: float | None = None,
    candidates: list[int] | None = None,
    predictor=None,
    lpips=None,
) -> TokenizedVideo:
    """Tokenize a whole video: consecutive windows of the tokenizer's clip length, decoded as a stream.

    Args:
        path: video file (anything FFmpeg decodes).
        tokenizer: the model; its ``frame_num`` and ``input_size`` set the windows.
        fps: resample to this frame rate, frames picked by timestamp (default: the video's own rate).
        stride: or keep every N-th frame.
        start, end: seconds (end exclusive; default: to the end).
        max_windows: stop after this many windows.
        resize: ``crop`` (short side + centre crop, the official policy), ``pad`` (letterbox) or ``stretch``.
        batch_size: windows per forward pass.
        precision: a :data:`larp.precision.PRECISIONS` name.
        stochastic, generator: sample codes (SVQ) instead of taking the nearest.
        fingerprint: the tokenizer's fingerprint when already known (computing it hashes every weight).
        target_psnr, target_mse, target_lpips, target_mean_psnr, mean_tokens: at most one: adaptive lengths (a
            nested-dropout tokenizer; :func:`larp.budget.adaptive_encode`). ``target_mean_psnr`` and
            ``mean_tokens`` hold over all the windows of this call.
        candidates: the lengths to choose from (default :func:`larp.budget.candidate_lengths`).
        predictor: a length predictor (``larp.budget.LengthPredictorLike``): lengths chosen without decoding.
        lpips: an LPIPS module for ``target_lpips`` (default: the pretrained weights).

    Returns:
        :class:`TokenizedVideo`: ids ``(windows, N)`` int64 (``-1`` past each window's length) and info
        (``WindowInfo.to_dict()`` plus ``tokenizer``, ``tokenizer_fingerprint``, ``tokens_per_window``,
        ``codebook_size``, ``size``, ``stride``, ``end``, ``window_lengths``, ``mean_tokens`` (the mean length)
        and ``budget`` (None, or the policy: its option and value, ``candidates``, ``metric``, ``predicted``).

    Raises:
        larp.data.video_io.VideoReadError: the file is unreadable (the message names it and the reason).
        ValueError: adaptive options on a tokenizer without nested dropout, or several of them.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    option = budget_option(target_psnr=target_psnr, target_mse=target_mse, target_lpips=target_lpips,
                           mean_tokens=mean_tokens, target_mean_psnr=target_mean_psnr)
    if option is not None and stochastic:
        raise ValueError("adaptive lengths take the nearest codes; stochastic encoding is not supported with them")
    if option is None and predictor is not None:
        raise ValueError("a length predictor needs a target (target_psnr, target_mse, target_lpips) or mean_tokens")
    if option is not None:
        resolve_policy(tokenizer, option, candidates, predictor)  # every check before the video is read
    plan = window_plan(tokenizer, fps=fps, stride=stride, start=start, end=end, max_windows=max_windows,
                       resize=resize)
    windows = VideoWindows(path, plan)
    if option is None:
        ids = torch.cat([encode_windows(tokenizer, batch, precision, stochastic=stochastic, generator=generator)
                         for batch in _batches(windows, batch_size)])
        lengths, policy = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long), None
    else:
        ids, lengths, policy = adaptive_ids(tokenizer, _batches(windows, batch_size), option, candidates=candidates,
                                         predictor=predictor, batch_size=batch_size, precision=precision,
                                         lpips=lpips)
    info = tokens_info(windows, tokenizer, fingerprint)
    info.update(window_lengths=lengths.tolist(), mean_tokens=float(lengths.double().mean()), budget=policy)
    return TokenizedVideo(ids.numpy(), info)


def budget_policy(option: tuple[str, float], candidates: list[int], metric: str, predictor=None) -> dict:
    """How adaptive lengths were chosen, for sidecars and ``_dataset.json``."""
    kind, value = option
    return {POLICIES[kind]: value, "candidates": list(candidates), "metric": metric,
            "predicted": predictor is not None, "predictor": getattr(predictor, "source", None)}


def adaptive_ids(tokenizer: LARPTokenizer, batches: Iterable[torch.Tensor], option: tuple[str, float], *,
                 candidates=None, predictor=None, batch_size: int = 8, precision: str = "auto",
                 lpips=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Ids (W, N) with -1 past each length, lengths (W,) and the policy, of the windows of all ``batches``
    ((b, 3, T, S, S) each): a target per batch, a mean budget over all of them (their curves kept, the
    allocation made at the end). ``option`` is :func:`larp.budget.budget_option`'s."""
    kind, value = option
    ids, lengths, curves = [], [], []
    metric, used = None, candidates
    for batch in batches:
        if kind in POOLED:
            batch_ids, batch_curves, used, metric = encode_with_curves(
                tokenizer, batch, candidates, predictor=predictor, batch_size=batch_size, precision=precision)
            ids.append(batch_ids)
            curves.append(batch_curves)
        else:
            choice = choose_lengths(tokenizer, batch, **{POLICIES[kind]: value}, candidates=candidates,
                                    predictor=predictor, batch_size=batch_size, precision=precision, lpips=lpips)
            ids.append(choice.ids)
            lengths.append(choice.lengths)
            used, metric = choice.candidates, choice.metric
    all_ids = torch.cat(ids)
    if kind in POOLED:
        all_lengths = allocate_pooled(option, torch.cat(curves), used, metric)
        all_ids = pad_past_lengths(all_ids, all_lengths)
    else:
        all_lengths = torch.cat(lengths)
    return all_ids, all_lengths, budget_policy(option, used, metric, predictor)


def tokens_info(windows: VideoWindows, tokenizer: LARPTokenizer, fingerprint: str | None = None) -> dict:
    """The info of a finished :class:`VideoWindows` iteration, with the tokenizer that made the ids."""
    if fingerprint is None:
        from larp.training.token_cache import tokenizer_fingerprint

        fingerprint = tokenizer_fingerprint(tokenizer)
    config = tokenizer.config
    return {
        **windows.info.to_dict(),
        "size": windows.plan.size,
        "stride": windows.plan.stride,
        "end": windows.plan.end,
        "tokens_per_window": config.num_tokens,
        "codebook_size": config.quantizer.codebook_size,
        "tokenizer": getattr(tokenizer, "source", None),
        "tokenizer_fingerprint": fingerprint,
    }


def strip_padding(video: torch.Tensor, info: dict, *, first_frame: int = 0) -> torch.Tensor:
    """Drop what tokenizing added to ``video`` (3, t, S, S): the padded tail frames and the letterbox.

    ``first_frame`` is the index in the whole windowed video of ``video``'s first frame (for pieces).
    """
    real = int(info["num_windows"]) * int(info["frames_per_window"]) - int(info.get("pad_frames", 0))
    video = video[:, : max(0, real - first_frame)]
    box = info.get("letterbox")
    if box:
        top, bottom, left, right = (int(v) for v in box)
        h, w = video.shape[-2:]
        video = video[:, :, top : h - bottom, left : w - right]
    return video


def iter_decoded(ids: np.ndarray | torch.Tensor, info: dict, tokenizer: LARPTokenizer, *,
                 size: tuple[int, int] | None = None, batch_size: int = 8,
                 precision: str = "auto") -> Iterator[torch.Tensor]:
    """:func:`detokenize_video` as a stream: pieces ``(3, t, h, w)`` of at most ``batch_size`` windows."""
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    if ids.ndim != 2:
        raise ValueError(f"token ids must have shape (windows, tokens), got {tuple(ids.shape)}")
    frames = int(info["frames_per_window"])
    expected = info.get("num_windows")
    if expected is not None and int(expected) != ids.shape[0]:
        raise ValueError(f"the ids hold {ids.shape[0]} windows but the info says {expected}")
    lengths = window_lengths_of(ids)
    recorded = info.get("window_lengths")
    if recorded is not None and [int(n) for n in recorded] != lengths.tolist():
        raise ValueError("the ids' window lengths (ids >= 0 per window) differ from the info's window_lengths")
    if frames > tokenizer.config.frame_num:
        raise ValueError(f"the windows have {frames} frames; this tokenizer decodes at most "
                         f"{tokenizer.config.frame_num}")
    if size is not None:
        width, height = size
        if width < 1 or height < 1:
            raise ValueError(f"size must be positive (width, height), got {size}")
    for first in range(0, ids.shape[0], batch_size):
        video = decode_windows(tokenizer, ids[first : first + batch_size], frames, precision)  # (b, 3, T, S, S)
        piece = strip_padding(video.permute(1, 0, 2, 3, 4).flatten(1, 2), info, first_frame=first * frames)
        if piece.shape[1] == 0:
            continue
        if size is not None and (piece.shape[-1], piece.shape[-2]) != tuple(size):
            piece = F.interpolate(piece.transpose(0, 1), size=(size[1], size[0]), mode="bilinear",
                                  align_corners=False, antialias=True).clamp_(0, 1).transpose(0, 1)
        yield piece


def detokenize_video(ids: np.ndarray | torch.Tensor, info: dict, tokenizer: LARPTokenizer, *,
                     size: tuple[int, int] | None = None, batch_size: int = 8,
                     precision: str = "auto") -> torch.Tensor:
    """Decode every window and join them into one video ``(3, frames, h, w)`` float32 in [0, 1].

    The padded frames of the last window (``info["pad_frames"]``) are dropped and a letterbox
    (``info["letterbox"]``) removed, so the video has the source's frame count (at ``info["fps"]``);
    ``size`` = (width, height) resizes it (antialiased bilinear).
    """
    pieces = list(iter_decoded(ids, info, tokenizer, size=size, batch_size=batch_size, precision=precision))
    if not pieces:
        raise ValueError("no frames to decode: the ids hold no window")
    return torch.cat(pieces, dim=1)

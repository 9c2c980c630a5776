"""Whole videos to token ids and back: ``larp.tokenize_video`` and ``larp.detokenize_video``.

A video becomes consecutive windows of the tokenizer's clip length (:mod:`larp.data.windows`), each window
``N`` token ids: ``ids`` of shape ``(windows, N)``. ``info`` says how they were made (the window plan's
:class:`~larp.data.windows.WindowInfo`, the tokenizer and its weights' fingerprint), and is all that
:func:`detokenize_video` needs to give back a video of the source's length and frame rate: the padded frames
of the last window are dropped and a letterbox (``resize="pad"``) is removed.

>>> tokens = larp.tokenize_video("talk.mp4", tokenizer)            # the whole video, at its own frame rate
>>> tokens.ids.shape, tokens.info["pad_frames"]                      # ((16, 1024), 6) for 250 frames
>>> video = larp.detokenize_video(tokens.ids, tokens.info, tokenizer)   # (3, 250, 128, 128)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from larp.data.windows import VideoWindows, WindowPlan
from larp.models.tokenizer import LARPTokenizer
from larp.precision import autocast

__all__ = [
    "TokenizedVideo",
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
    """(b, N) ids -> (b, 3, frames, S, S) float32 on the CPU, clamped to [0, 1]."""
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

    Returns:
        :class:`TokenizedVideo`: ids ``(windows, N)`` int64 and info (``WindowInfo.to_dict()`` plus
        ``tokenizer``, ``tokenizer_fingerprint``, ``tokens_per_window``, ``codebook_size``, ``size``,
        ``stride``, ``end``).

    Raises:
        larp.data.video_io.VideoReadError: the file is unreadable (the message names it and the reason).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    plan = window_plan(tokenizer, fps=fps, stride=stride, start=start, end=end, max_windows=max_windows,
                       resize=resize)
    windows = VideoWindows(path, plan)
    ids = [encode_windows(tokenizer, batch, precision, stochastic=stochastic, generator=generator)
           for batch in _batches(windows, batch_size)]
    return TokenizedVideo(torch.cat(ids).numpy(), tokens_info(windows, tokenizer, fingerprint))


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

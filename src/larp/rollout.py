"""Long videos from the generators: frame prediction rolled forward window after window.

A frame-prediction generator (the *predictor*) continues a clip from its first ``k`` frames
(``condition_frames``): the condition clip is those frames with the last one repeated to the clip length
(LARP.md D.3, :func:`larp.data.video_io.condition_clip`), and the predicted window's first ``k`` frames
re-predict the given ones. Rolled forward, each next window is predicted from the last ``k`` frames of
the video made so far, and contributes its ``T - k`` new frames (``T`` = the tokenizer's ``frame_num``):

    video = [k start frames] + [T - k new frames of window 1] + ... + [T - k new frames of window K]
          = k + K * (T - k) frames

The start is either real frames (``video``: window 1 is predicted from its first ``k`` frames, which lead
the output) or the token ids of a first window (``first_ids``, e.g. from a class-conditional generator:
its ``T`` decoded frames are window 1; windows 2..K are predicted). Both give ``k + K * (T - k)`` frames.

Memory is bounded by one window: the model side keeps only the last window's frames; the frames handed
out are uint8 and the next condition is made from exactly those uint8 frames (what the written video
holds). One ``torch.Generator`` draws every window in turn, so a seed gives the same tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from larp.models.generator import LARPGenerator, check_matches_tokenizer
from larp.models.tokenizer import LARPTokenizer
from larp.precision import autocast

__all__ = [
    "DEFAULT_CONDITION_FRAMES",
    "RolloutWindow",
    "check_predictor",
    "recorded_condition_frames",
    "roll_forward",
    "rollout",
    "rollout_frames",
    "window_span",
]

#: The frame-prediction protocol's given frames (LARP.md D.3), when the predictor's training value is unknown.
DEFAULT_CONDITION_FRAMES = 5


@dataclass
class RolloutWindow:
    """One window of a rollout.

    Attributes:
        index: 0 for the first window.
        ids: (b, N) int64 token ids of the window, on the CPU.
        frames: (b, 3, n, h, w) uint8 frames this window adds to the video, on the CPU: ``k + T - k = T``
            for the first window (the start frames included), ``T - k`` for the others.
    """

    index: int
    ids: torch.Tensor
    frames: torch.Tensor


def rollout_frames(windows: int, frames_per_window: int, condition_frames: int) -> int:
    """Frames of a rollout video: ``k + windows * (T - k)``."""
    return condition_frames + windows * (frames_per_window - condition_frames)


def window_span(index: int, frames_per_window: int, condition_frames: int) -> slice:
    """The ``T`` frames of the rollout video that window ``index`` covers: its condition frames and its new ones."""
    first = index * (frames_per_window - condition_frames)
    return slice(first, first + frames_per_window)


def check_predictor(predictor: LARPGenerator, tokenizer: LARPTokenizer, *, name: str = "the predictor") -> None:
    """Raise ValueError unless ``predictor`` is a frame-prediction generator for ``tokenizer``'s tokens."""
    if not predictor.config.frame_prediction:
        raise ValueError(f"{name} is a class-conditional generator; rolling forward needs a frame-prediction one "
                         f"(trained with condition frames)")
    check_matches_tokenizer(predictor.config, tokenizer.config)


def recorded_condition_frames(generator: str | os.PathLike) -> int | None:
    """The ``condition_frames`` a frame predictor was trained with, when its folder records it: the
    ``recipe.yaml`` of the training run whose export it is (``RUN/generator`` next to ``RUN/recipe.yaml``),
    or one in the folder itself. None when there is none (a hub id, a copied folder)."""
    folder = Path(generator)
    for recipe in (folder / "recipe.yaml", folder.parent / "recipe.yaml"):
        if not recipe.is_file():
            continue
        try:
            data = yaml.safe_load(recipe.read_text())
        except (OSError, yaml.YAMLError):
            continue
        value = data.get("condition_frames") if isinstance(data, dict) else None
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and isinstance(model, dict) \
                and model.get("frame_prediction"):
            return value
    return None


def _to_uint8(frames: torch.Tensor) -> torch.Tensor:
    return frames.float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def _condition_ids(tokenizer: LARPTokenizer, tail: torch.Tensor, frames: int, precision: str) -> torch.Tensor:
    """(b, 3, k, h, w) uint8 last frames -> (b, N) ids of their condition clip: the k frames, the last one
    repeated to the clip length ``frames`` (what :func:`condition_clip` makes of a clip starting with them)."""
    given = tail.to(tokenizer.device, torch.float32) / 255
    clip = torch.cat([given, given[:, :, -1:].expand(-1, -1, frames - tail.shape[2], -1, -1)], dim=2)
    with autocast(precision, tokenizer.device):
        return tokenizer.encode(clip)


@torch.no_grad()
def roll_forward(
    tokenizer: LARPTokenizer,
    predictor: LARPGenerator | None,
    windows: int,
    *,
    condition_frames: int,
    video: torch.Tensor | None = None,
    first_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    precision: str = "fp32",
) -> Iterator[RolloutWindow]:
    """Yield the ``windows`` windows of a rollout one at a time (see the module docstring).

    Args:
        tokenizer: the tokenizer whose tokens ``predictor`` models.
        predictor: a frame-prediction generator (None only for one window from ``first_ids``).
        windows: K >= 1.
        condition_frames: k, in [1, T): the frames each next window is predicted from.
        video: (b, 3, >= k, S, S) float in [0, 1]: start from real frames (its first k frames are used).
        first_ids: (b, N) token ids of the first window (exclusive with ``video``).
        generator: the RNG every window is sampled with.
        temperature, top_k, top_p: sampling options of the predictor (no classifier-free guidance).
        precision: the tokenizer's precision (:mod:`larp.precision`); the predictor samples in fp32.
    """
    frames = tokenizer.config.frame_num
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
        raise ValueError(f"windows must be an integer >= 1, got {windows!r}")
    if predictor is not None or windows > 1 or video is not None:
        if predictor is None:
            raise ValueError("a rollout needs a frame-prediction predictor beyond one given first window")
        check_predictor(predictor, tokenizer)
    if not 1 <= condition_frames < frames:
        raise ValueError(f"condition_frames must be in [1, {frames}) (the clip length), got {condition_frames}")
    if (video is None) == (first_ids is None):
        raise ValueError("give exactly one start: video (real frames) or first_ids (the first window's ids)")
    options = dict(generator=generator, temperature=temperature, top_k=top_k, top_p=top_p)
    device = tokenizer.device

    def decode(ids: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            return _to_uint8(tokenizer.decode(ids.to(device), clamp=True))

    k = condition_frames
    if video is not None:
        if video.dim() != 5 or video.shape[2] < k:
            raise ValueError(f"video must be (b, 3, t >= {k}, h, w) start frames, got {tuple(video.shape)}")
        given = _to_uint8(video[:, :, :k])
        ids = predictor.generate(_condition_ids(tokenizer, given, frames, precision), **options)
        new = torch.cat([given, decode(ids)[:, :, k:]], dim=2)  # the start frames are the real ones
    else:
        ids = first_ids.to(device)
        new = decode(ids)
    for index in range(windows):
        if index:
            ids = predictor.generate(_condition_ids(tokenizer, tail, frames, precision), **options)
            new = decode(ids)[:, :, k:]  # its first k frames re-predict the condition: the video has them
        # the video's last k frames: the previous ones and the new ones, when a window adds fewer than k
        tail = new[:, :, -k:] if new.shape[2] >= k else torch.cat([tail, new], dim=2)[:, :, -k:]
        yield RolloutWindow(index, ids.cpu(), new)


def rollout(tokenizer: LARPTokenizer, predictor: LARPGenerator | None, windows: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole rollout at once: ids (b, K, N) int64 and the video (b, 3, k + K (T - k), h, w) uint8.
    Arguments as :func:`roll_forward`."""
    ids, frames = [], []
    for window in roll_forward(tokenizer, predictor, windows, **kwargs):
        ids.append(window.ids)
        frames.append(window.frames)
    return torch.stack(ids, dim=1), torch.cat(frames, dim=2)

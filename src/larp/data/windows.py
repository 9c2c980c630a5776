"""Whole videos as a stream of model windows: any length, size and frame rate in, ``(3, frames, size, size)`` out.

A :class:`WindowPlan` says how a video is cut: which frames (the native rate, every ``stride``-th frame, or
frames picked by timestamp at ``fps``), from ``start`` to ``end`` seconds, how each frame becomes a square of
the model's size (:data:`ResizePolicy`), and how many frames make a window. :class:`VideoWindows` decodes the
file once, as a stream (PyAV), and yields the windows one at a time, so memory holds about one window of
frames whatever the video's length; its :class:`WindowInfo` records what was done (the sidecar of
``larp tokenize`` and the columns of a token dataset).

Time: a frame's time is its presentation timestamp minus the first frame's, in seconds (a frame without a
timestamp takes ``index / source_fps``). With ``fps`` the frame of window time ``start + k / fps`` is the last
decoded frame whose time is <= it, so variable-frame-rate files are resampled by their real timing; the
times run until the end of the last frame (its time plus one frame duration) or ``end``.

The last window is completed by repeating its last frame; ``WindowInfo.pad_frames`` says how many.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import av
import torch
import torch.nn.functional as F

from larp.data.video_io import (
    VideoReadError,
    _FrameDecoder,
    _frame_to_rgb,
    _open_input,
    _video_stream,
    probe_video,
    resize_and_crop,
)

__all__ = ["RESIZE_POLICIES", "ResizePolicy", "VideoWindows", "WindowInfo", "WindowPlan", "letterbox_box"]

ResizePolicy = Literal["crop", "pad", "stretch"]
#: crop: short side to the model size + centre crop (the official policy); pad: letterbox, the whole frame
#: kept on black; stretch: both sides to the model size.
RESIZE_POLICIES: tuple[str, ...] = get_args(ResizePolicy)

# Timestamps are floats: a frame at exactly the window time counts as "at or before" it.
_TIME_TOLERANCE = 1e-6


@dataclass(frozen=True)
class WindowPlan:
    """How a video is cut into model windows.

    Attributes:
        frames: frames per window (the tokenizer's ``frame_num``).
        size: the model's (square) input size.
        fps: resample in time to this rate, frames picked by timestamp (``None``: the native rate).
        stride: or keep every N-th decoded frame (exclusive with ``fps``).
        start: first time, in seconds from the first frame.
        end: end time in seconds (exclusive; ``None``: to the end of the video).
        max_windows: stop after this many windows.
        resize: the spatial policy, one of :data:`RESIZE_POLICIES`.
    """

    frames: int
    size: int
    fps: float | None = None
    stride: int | None = None
    start: float = 0.0
    end: float | None = None
    max_windows: int | None = None
    resize: ResizePolicy = "crop"

    def __post_init__(self) -> None:
        for name in ("frames", "size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"WindowPlan.{name} must be an integer >= 1, got {value!r}")
        if self.fps is not None and self.stride is not None:
            raise ValueError("give fps (resample by timestamp) or stride (every N-th frame), not both")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps!r}")
        if self.stride is not None and (isinstance(self.stride, bool) or not isinstance(self.stride, int)
                                        or self.stride < 1):
            raise ValueError(f"stride must be an integer >= 1, got {self.stride!r}")
        if not (math.isfinite(self.start) and self.start >= 0):
            raise ValueError(f"start must be a number of seconds >= 0, got {self.start!r}")
        if self.end is not None and not (math.isfinite(self.end) and self.end > self.start):
            raise ValueError(f"end ({self.end!r} s) must be after start ({self.start!r} s)")
        if self.max_windows is not None and (isinstance(self.max_windows, bool)
                                             or not isinstance(self.max_windows, int) or self.max_windows < 1):
            raise ValueError(f"max_windows must be an integer >= 1, got {self.max_windows!r}")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {self.resize!r}")


@dataclass
class WindowInfo:
    """What was done to a video: the sidecar of ``larp tokenize`` and the columns of a token dataset.

    Complete once the iteration of :class:`VideoWindows` has finished.

    Attributes:
        source_fps: the file's average frame rate (0.0 when FFmpeg cannot tell).
        source_frames: decodable frames in the file.
        source_size: (width, height) of the file's frames.
        fps: frame rate of the windows (``plan.fps``, or the source's divided by the stride).
        start: time in seconds of the first window frame.
        frames_per_window: frames per window.
        num_windows: windows yielded.
        pad_frames: copies of the last frame that complete the last window.
        resize: the spatial policy.
        letterbox: (top, bottom, left, right) black bands in model pixels (``pad`` only, else ``None``).
    """

    source_fps: float
    source_frames: int
    source_size: tuple[int, int]
    fps: float
    start: float
    frames_per_window: int
    num_windows: int
    pad_frames: int
    resize: str
    letterbox: tuple[int, int, int, int] | None

    def to_dict(self) -> dict:
        """JSON-ready (tuples become lists)."""
        data = asdict(self)
        data["source_size"] = list(self.source_size)
        data["letterbox"] = None if self.letterbox is None else list(self.letterbox)
        return data

    @property
    def frames(self) -> int:
        """Frames of the video the windows cover (without the padded ones)."""
        return self.num_windows * self.frames_per_window - self.pad_frames


def letterbox_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) black bands of a ``width x height`` frame letterboxed into ``size x size``."""
    if width >= height:
        inner = max(1, int(round(size * height / width)))
        top = (size - inner) // 2
        return top, size - inner - top, 0, 0
    inner = max(1, int(round(size * width / height)))
    left = (size - inner) // 2
    return 0, 0, left, size - inner - left


def _resize_frame(frame: torch.Tensor, size: int, policy: str) -> torch.Tensor:
    """(3, h, w) float in [0, 1] -> (3, size, size) under ``policy`` (antialiased bilinear, like resize_and_crop)."""
    if policy == "crop":
        return resize_and_crop(frame[:, None], size)[:, 0]
    h, w = frame.shape[-2:]
    if policy == "stretch":
        if (h, w) == (size, size):
            return frame
        return F.interpolate(frame[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    top, bottom, left, right = letterbox_box(w, h, size)
    inner_h, inner_w = size - top - bottom, size - left - right
    if (inner_h, inner_w) != (h, w):
        frame = F.interpolate(frame[None], size=(inner_h, inner_w), mode="bilinear", align_corners=False,
                              antialias=True)[0]
    out = frame.new_zeros(3, size, size)
    out[:, top : top + inner_h, left : left + inner_w] = frame
    return out


class VideoWindows:
    """Streams a video as windows of ``plan.frames`` frames of ``plan.size x plan.size``.

    Iterating decodes the file from the beginning (each iteration anew) and yields ``(3, frames, size, size)``
    float32 tensors in [0, 1]; only the picked frames are converted and resized, one at a time. ``info`` is
    filled as it goes and final when the iterator is exhausted.

    Raises:
        VideoReadError: the file is missing, unreadable or corrupt (when constructed), or has no frame between
            ``start`` and ``end`` (when iterated).
    """

    def __init__(self, path: str | os.PathLike, plan: WindowPlan):
        self.path = os.fspath(path)
        self.plan = plan
        probe = probe_video(self.path)  # demuxes only (cheap): checks the file, counts its frames
        self._probe = probe
        self.info = self._fresh_info()

    def _fresh_info(self) -> WindowInfo:
        probe, plan = self._probe, self.plan
        if plan.fps is not None:
            fps = float(plan.fps)
        else:
            fps = probe.fps / (plan.stride or 1)
        letterbox = letterbox_box(probe.width, probe.height, plan.size) if plan.resize == "pad" else None
        return WindowInfo(
            source_fps=probe.fps, source_frames=probe.num_frames, source_size=(probe.width, probe.height),
            fps=fps, start=float(plan.start), frames_per_window=plan.frames, num_windows=0, pad_frames=0,
            resize=plan.resize, letterbox=letterbox,
        )

    def __iter__(self) -> Iterator[torch.Tensor]:
        self.info = info = self._fresh_info()
        plan = self.plan
        pending: list[torch.Tensor] = []
        picked = 0
        for frame in self._picked_frames():
            if picked == 0:
                info.start = round(frame[0], 6)
            picked += 1
            pending.append(frame[1])
            if len(pending) == plan.frames:
                info.num_windows += 1
                yield torch.stack(pending, dim=1)
                pending = []
                if plan.max_windows is not None and info.num_windows >= plan.max_windows:
                    return
        if picked == 0:
            span = f"from {plan.start:g} s" + (f" to {plan.end:g} s" if plan.end is not None else "")
            raise VideoReadError(f"Cannot read video {self.path!r}: no frame {span} "
                                 f"({self._probe.num_frames} frames at {self._probe.fps:.3g} fps)")
        if pending:
            info.pad_frames = plan.frames - len(pending)
            pending.extend([pending[-1]] * info.pad_frames)
            info.num_windows += 1
            yield torch.stack(pending, dim=1)

    # ------------------------------------------------------------------ frame selection
    def _picked_frames(self) -> Iterator[tuple[float, torch.Tensor]]:
        """(window time, resized frame) of every picked frame, in order; stops at ``end``."""
        plan = self.plan
        source_fps = self._probe.fps
        with _open_input(self.path) as container:
            stream = _video_stream(container, self.path)
            decoder = _FrameDecoder(container, stream, self.path)
            timed = _timed_frames(decoder, source_fps)
            with closing(timed):
                if plan.fps is None:
                    yield from self._every_nth(timed)
                else:
                    yield from self._by_timestamp(timed, source_fps)

    def _convert(self, frame: av.VideoFrame, ref_size: tuple[int, int]) -> torch.Tensor:
        rgb = torch.from_numpy(_frame_to_rgb(frame, ref_size, self.path))  # (h, w, 3) uint8
        return _resize_frame(rgb.permute(2, 0, 1).float().div_(255.0), self.plan.size, self.plan.resize)

    def _every_nth(self, timed) -> Iterator[tuple[float, torch.Tensor]]:
        plan = self.plan
        stride = plan.stride or 1
        kept = 0
        for time, frame, ref_size in timed:
            if time < plan.start - _TIME_TOLERANCE:
                continue
            if plan.end is not None and time >= plan.end - _TIME_TOLERANCE:
                return
            if kept % stride == 0:
                yield time, self._convert(frame, ref_size)
            kept += 1

    def _by_timestamp(self, timed, source_fps: float) -> Iterator[tuple[float, torch.Tensor]]:
        plan = self.plan
        step = 1.0 / plan.fps
        k = 0
        previous: tuple[float, av.VideoFrame, tuple[int, int]] | None = None
        converted: torch.Tensor | None = None  # previous frame, converted once however often it is picked

        def target() -> float:
            return plan.start + k * step

        def before_end(time: float) -> bool:
            return plan.end is None or time < plan.end - _TIME_TOLERANCE

        for current in timed:
            time = current[0]
            # every window time before this frame shows the previous frame
            while previous is not None and target() < time - _TIME_TOLERANCE:
                if not before_end(target()):
                    return
                if converted is None:
                    converted = self._convert(previous[1], previous[2])
                yield target(), converted
                k += 1
            previous, converted = current, None
        if previous is None:
            return
        # the last frame lasts one frame duration
        duration = 1.0 / source_fps if source_fps > 0 else step
        video_end = previous[0] + duration
        while target() < video_end - _TIME_TOLERANCE and before_end(target()):
            if converted is None:
                converted = self._convert(previous[1], previous[2])
            yield target(), converted
            k += 1


def _timed_frames(decoder: _FrameDecoder, source_fps: float) -> Iterator[tuple[float, av.VideoFrame, tuple[int, int]]]:
    """(time in seconds from the first frame, frame, reference size) of every decoded frame."""
    first: float | None = None
    ref_size: tuple[int, int] | None = None
    with closing(iter(decoder)) as frames:
        for index, frame in enumerate(frames):
            if ref_size is None:
                ref_size = (frame.width, frame.height)
            stamp = frame.time
            if stamp is None:
                stamp = index / source_fps if source_fps > 0 else float(index)
            if first is None:
                first = stamp
            yield stamp - first, frame, ref_size

"""Whole videos as windows (larp.data.windows): counts, padding, frame picking by index and by timestamp
(variable frame rate included), start/end, the three spatial policies, the info, and errors."""

from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from larp.data.video_io import VideoReadError, read_video, write_video
from larp.data.windows import VideoWindows, WindowPlan, letterbox_box

# each frame a flat grey level LEVEL * index: decoded means tell which source frame was picked
LEVEL = 7


def numbered_video(path, frames: int, *, fps: float, width: int = 64, height: int = 48) -> str:
    """Frame i is flat grey LEVEL * i / 255 (frames <= 36)."""
    levels = torch.arange(frames, dtype=torch.float32).mul(LEVEL / 255.0)
    write_video(path, levels.view(1, frames, 1, 1).expand(3, frames, height, width).contiguous(), fps=fps)
    return str(path)


def picked(windows: list[torch.Tensor]) -> list[int]:
    """Source frame index of every frame of the windows (from its grey level)."""
    return [round(float(frame.mean()) * 255 / LEVEL) for window in windows for frame in window.unbind(1)]


def pattern_video(path, frames: int, *, fps: float, width: int, height: int) -> str:
    """A moving diagonal gradient (content everywhere, so crops and letterboxes show)."""
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    t = torch.arange(frames, dtype=torch.float32)[:, None, None] / max(frames, 1)
    base = ((x + y) / 2 + t) % 1.0  # (t, h, w)
    video = torch.stack([base, 1 - base, 0.2 + 0.6 * base]) * 0.8 + 0.1
    write_video(path, video, fps=fps)
    return str(path)


@pytest.mark.parametrize("length, windows, pad", [(1, 1, 15), (15, 1, 1), (17, 2, 15), (33, 3, 15), (100, 7, 12)])
def test_the_whole_video_in_windows_with_the_last_one_padded(tmp_path, length, windows, pad):
    path = pattern_video(tmp_path / "v.mp4", length, fps=24, width=200, height=120)
    stream = VideoWindows(path, WindowPlan(frames=16, size=32))
    out = list(stream)
    info = stream.info
    assert len(out) == windows == info.num_windows == math.ceil(length / 16)
    assert info.pad_frames == pad and info.frames == length
    assert all(w.shape == (3, 16, 32, 32) and w.dtype == torch.float32 for w in out)
    assert 0.0 <= float(out[0].min()) and float(out[0].max()) <= 1.0
    # the padded frames repeat the last real frame
    last = out[-1]
    real = 16 - pad
    assert torch.equal(last[:, real:], last[:, real - 1 : real].expand(3, pad, 32, 32))
    assert (info.source_frames, info.source_size, info.source_fps, info.fps) == (length, (200, 120), 24.0, 24.0)


def test_native_rate_and_stride_pick_frames_by_index(tmp_path):
    path = numbered_video(tmp_path / "n.mp4", 33, fps=30)
    native = VideoWindows(path, WindowPlan(frames=8, size=32))
    assert picked(list(native)) == list(range(33)) + [32] * 7
    strided = VideoWindows(path, WindowPlan(frames=8, size=32, stride=3))
    assert picked(list(strided)) == list(range(0, 33, 3)) + [30] * 5
    assert strided.info.fps == 10.0 and strided.info.pad_frames == 5


def test_fps_resamples_by_timestamp(tmp_path):
    path = numbered_video(tmp_path / "n.mp4", 33, fps=30)  # 1.1 s
    down = VideoWindows(path, WindowPlan(frames=8, size=32, fps=10))
    # times 0, 0.1, ..., 1.0: the frame at or before each
    assert picked(list(down)) == [3 * k for k in range(11)] + [30] * 5
    assert (down.info.fps, down.info.num_windows, down.info.pad_frames) == (10.0, 2, 5)
    up = VideoWindows(path, WindowPlan(frames=16, size=32, fps=60, end=0.2))
    assert picked(list(up)) == [k // 2 for k in range(12)] + [5] * 4  # each frame twice


def test_a_variable_frame_rate_file_is_resampled_by_its_timestamps(tmp_path):
    path = str(tmp_path / "vfr.mp4")
    stamps_ms = [0, 10, 50, 200, 210, 400, 900]
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"crf": "10"}
        for index, stamp in enumerate(stamps_ms):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), LEVEL * index, np.uint8), format="rgb24")
            frame.pts, frame.time_base = stamp, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    stream = VideoWindows(path, WindowPlan(frames=8, size=32, fps=10, end=0.95))
    # window times 0, 0.1, ..., 0.9 s -> the last frame whose timestamp is <= each
    assert picked(list(stream)) == [0, 2, 3, 4, 5, 5, 5, 5, 5, 6] + [6] * 6
    native = VideoWindows(path, WindowPlan(frames=8, size=32))
    assert picked(list(native)) == list(range(7)) + [6]


def test_start_end_and_max_windows(tmp_path):
    path = numbered_video(tmp_path / "n.mp4", 33, fps=30)
    cut = VideoWindows(path, WindowPlan(frames=8, size=32, start=0.5, end=1.0))
    assert picked(list(cut)) == list(range(15, 30)) + [29]
    assert cut.info.start == 0.5 and cut.info.pad_frames == 1
    resampled = VideoWindows(path, WindowPlan(frames=4, size=32, fps=10, start=0.25, end=0.65))
    assert picked(list(resampled)) == [7, 10, 13, 16]  # times 0.25, 0.35, 0.45, 0.55
    first = VideoWindows(path, WindowPlan(frames=8, size=32, max_windows=2))
    assert picked(list(first)) == list(range(16))
    assert (first.info.num_windows, first.info.pad_frames) == (2, 0)
    with pytest.raises(VideoReadError, match="no frame from 5 s"):
        list(VideoWindows(path, WindowPlan(frames=8, size=32, start=5.0)))


def test_crop_is_the_official_resize_and_centre_crop(tmp_path):
    path = pattern_video(tmp_path / "p.mp4", 8, fps=24, width=200, height=120)
    (window,) = VideoWindows(path, WindowPlan(frames=8, size=32))
    assert torch.equal(window, read_video(path, size=32))


@pytest.mark.parametrize("width, height, box", [(200, 120, (6, 7, 0, 0)), (90, 160, (0, 0, 7, 7)), (64, 64, (0, 0, 0, 0))])
def test_pad_letterboxes_the_whole_frame(tmp_path, width, height, box):
    assert letterbox_box(width, height, 32) == box
    path = pattern_video(tmp_path / "p.mp4", 3, fps=24, width=width, height=height)
    stream = VideoWindows(path, WindowPlan(frames=4, size=32, resize="pad"))
    (window,) = list(stream)
    assert stream.info.letterbox == box and stream.info.to_dict()["letterbox"] == list(box)
    top, bottom, left, right = box
    inside = window[:, :3, top : 32 - bottom, left : 32 - right]
    band = torch.ones(32, 32, dtype=torch.bool)
    band[top : 32 - bottom, left : 32 - right] = False
    if band.any():
        assert float(window[:, :, band].abs().max()) == 0.0  # black bands
    assert float(inside.amin(dim=(0, 2, 3)).min()) > 0.05  # content to the edges of the box
    # the content is the whole frame resized
    full = read_video(path)  # (3, 3, h, w)
    expected = F.interpolate(full.transpose(0, 1), size=inside.shape[-2:], mode="bilinear", antialias=True,
                             align_corners=False).transpose(0, 1)
    assert torch.allclose(inside, expected, atol=1e-5)


def test_stretch_resizes_both_sides(tmp_path):
    path = pattern_video(tmp_path / "s.mp4", 2, fps=24, width=90, height=160)
    stream = VideoWindows(path, WindowPlan(frames=4, size=32, resize="stretch"))
    (window,) = list(stream)
    full = read_video(path)
    expected = F.interpolate(full.transpose(0, 1), size=(32, 32), mode="bilinear", antialias=True,
                             align_corners=False).transpose(0, 1)
    assert torch.allclose(window[:, :2], expected, atol=1e-5)
    assert stream.info.letterbox is None and stream.info.resize == "stretch"


def test_info_dict_keys_and_values(tmp_path):
    path = pattern_video(tmp_path / "v.mp4", 17, fps=30, width=90, height=160)
    stream = VideoWindows(path, WindowPlan(frames=16, size=32, resize="pad"))
    list(stream)
    assert stream.info.to_dict() == {
        "source_fps": 30.0, "source_frames": 17, "source_size": [90, 160], "fps": 30.0, "start": 0.0,
        "frames_per_window": 16, "num_windows": 2, "pad_frames": 15, "resize": "pad", "letterbox": [0, 0, 7, 7],
    }


def test_bad_files_and_plans_are_clear_errors(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01 not a video" * 40)
    with pytest.raises(VideoReadError, match="broken.mp4"):
        VideoWindows(bad, WindowPlan(frames=16, size=32))
    with pytest.raises(VideoReadError, match="file not found"):
        VideoWindows(tmp_path / "missing.mp4", WindowPlan(frames=16, size=32))
    with pytest.raises(ValueError, match="not both"):
        WindowPlan(frames=16, size=32, fps=8, stride=2)
    with pytest.raises(ValueError, match="end"):
        WindowPlan(frames=16, size=32, start=2.0, end=1.0)
    with pytest.raises(ValueError, match="resize"):
        WindowPlan(frames=16, size=32, resize="zoom")


def test_windows_are_streamed_not_decoded_up_front(tmp_path, monkeypatch):
    """Taking the first window of a long video decodes only about one window of frames."""
    path = numbered_video(tmp_path / "n.mp4", 36, fps=30)
    import larp.data.windows as windows

    converted = []
    real = windows._frame_to_rgb
    monkeypatch.setattr(windows, "_frame_to_rgb", lambda *a: converted.append(1) or real(*a))
    iterator = iter(VideoWindows(path, WindowPlan(frames=4, size=32)))
    next(iterator)
    assert len(converted) == 4
    iterator.close()

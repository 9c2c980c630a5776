"""Tests for larp.data.video_io (CPU only; every video is generated in tmp_path)."""

from __future__ import annotations

import os
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from larp.data import video_io
from larp.data.video_io import (
    VideoInfo,
    VideoReadError,
    make_grid,
    probe_video,
    read_video,
    resize_and_crop,
    write_video,
    write_video_pieces,
)

# Brightness step between consecutive frames of an index-coded clip (uint8 units):
# large enough that even the low-bitrate mpeg4 encoder keeps frames distinguishable.
INDEX_STEP = 20


# ----------------------------------------------------------------------- helpers


def synthetic_clip(t: int = 12, h: int = 48, w: int = 64) -> torch.Tensor:
    """A coloured square moving over a smooth gradient: (3, t, h, w) float in [0, 1]."""
    ys = torch.linspace(0.1, 0.9, h)[:, None].expand(h, w)
    xs = torch.linspace(0.2, 0.8, w)[None, :].expand(h, w)
    clip = torch.empty(3, t, h, w)
    for k in range(t):
        clip[0, k] = ys
        clip[1, k] = xs
        clip[2, k] = 0.3 + 0.4 * k / max(t - 1, 1)
        x0 = 2 + 3 * k
        clip[:, k, 10:22, x0 : x0 + 12] = torch.tensor([0.95, 0.25, 0.1])[:, None, None]
    return clip


def index_frames(t: int, h: int = 32, w: int = 48) -> np.ndarray:
    """(t, h, w, 3) uint8 grey frames; frame k has brightness k * INDEX_STEP."""
    assert (t - 1) * INDEX_STEP <= 255
    values = np.arange(t, dtype=np.uint8) * INDEX_STEP
    return np.broadcast_to(values[:, None, None, None], (t, h, w, 3)).copy()


def frame_indices(clip: torch.Tensor) -> list[int]:
    """Recover the frame index of each frame of an index-coded clip (3, t, h, w)."""
    means = clip.mean(dim=(0, 2, 3)) * 255.0
    return [int(round(m / INDEX_STEP)) for m in means.tolist()]


def write_with_pyav(path: Path, frames: np.ndarray, codec: str, pix_fmt: str, fps: int = 8) -> None:
    """Encode (t, h, w, 3) uint8 RGB frames with PyAV directly (container from the suffix)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if codec == "mpeg4":
            stream.bit_rate = 2_000_000  # keep mpeg4's default low bitrate from blurring levels
        for k, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def to_float_clip(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255.0


@pytest.fixture
def index_mp4(tmp_path: Path) -> Path:
    """12-frame index-coded H.264 mp4 (frame k has brightness k * INDEX_STEP)."""
    path = tmp_path / "index.mp4"
    write_video(path, to_float_clip(index_frames(12)), fps=8)
    return path


# -------------------------------------------------------------------- round trips


def test_mp4_round_trip(tmp_path: Path) -> None:
    clip = synthetic_clip()
    path = tmp_path / "clip.mp4"
    write_video(path, clip, fps=8)

    info = probe_video(path)
    assert info == VideoInfo(path=str(path), num_frames=12, fps=8.0, width=64, height=48, codec="h264")

    out = read_video(path)
    assert out.shape == (3, 12, 48, 64)
    assert out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert (out - clip).abs().mean() < 0.03


def test_gif_round_trip(tmp_path: Path) -> None:
    clip = synthetic_clip(t=8, h=40, w=56)
    path = tmp_path / "clip.gif"
    write_video(path, clip, fps=10)

    info = probe_video(path)
    assert info.num_frames == 8
    assert (info.width, info.height, info.codec) == (56, 40, "gif")
    assert info.fps == pytest.approx(10.0, rel=0.05)  # gif delays are in 1/100 s

    out = read_video(path)
    assert out.shape == (3, 8, 40, 56)
    # 256-colour palette quantisation (with dithering): looser than mp4.
    assert (out - clip).abs().mean() < 0.06
    # Dithering is unbiased: per-frame average colours are almost exact.
    assert (out.mean(dim=(2, 3)) - clip.mean(dim=(2, 3))).abs().max() < 0.02
    # The Netscape extension with loop count 0 (= forever) is present.
    data = path.read_bytes()
    assert data.startswith(b"GIF89a")
    loop_ext = data.find(b"NETSCAPE2.0")
    assert loop_ext >= 0 and data[loop_ext + 11 : loop_ext + 16] == b"\x03\x01\x00\x00\x00"


@pytest.mark.parametrize(
    ("suffix", "codec", "pix_fmt", "decoder"),
    [
        (".avi", "mpeg4", "yuv420p", "mpeg4"),
        (".avi", "mjpeg", "yuvj420p", "mjpeg"),
        (".webm", "libvpx", "yuv420p", "vp8"),
        (".mkv", "libx264", "yuv420p", "h264"),
    ],
)
def test_read_other_containers(tmp_path: Path, suffix: str, codec: str, pix_fmt: str, decoder: str) -> None:
    frames = index_frames(10)
    path = tmp_path / f"clip_{codec}{suffix}"
    write_with_pyav(path, frames, codec, pix_fmt)

    info = probe_video(path)
    assert info.num_frames == 10  # webm/mkv carry no frame count: counted by demuxing
    assert info.fps == pytest.approx(8.0)
    assert (info.width, info.height) == (48, 32)
    assert info.codec == decoder

    out = read_video(path)
    assert out.shape == (3, 10, 32, 48)
    assert frame_indices(out) == list(range(10))
    assert (out - to_float_clip(frames)).abs().mean() < 0.03


def test_read_video_accepts_str_and_pathlike(index_mp4: Path) -> None:
    assert torch.equal(read_video(str(index_mp4), num_frames=2), read_video(index_mp4, num_frames=2))
    assert probe_video(str(index_mp4)).path == str(index_mp4)


# ---------------------------------------------------------------- frame selection


@pytest.mark.parametrize(
    ("start", "num_frames", "stride", "expected"),
    [
        (0, None, 1, list(range(12))),
        (0, 4, 1, [0, 1, 2, 3]),
        (5, 3, 1, [5, 6, 7]),
        (1, 4, 3, [1, 4, 7, 10]),
        (0, None, 5, [0, 5, 10]),
        (7, None, 2, [7, 9, 11]),
        (11, 1, 4, [11]),
        (0, 12, 1, list(range(12))),
    ],
)
def test_frame_selection(index_mp4: Path, start: int, num_frames: int | None, stride: int, expected: list[int]) -> None:
    clip = read_video(index_mp4, start=start, num_frames=num_frames, stride=stride)
    assert clip.shape == (3, len(expected), 32, 48)
    assert frame_indices(clip) == expected


def test_short_video_error_names_file_and_counts(index_mp4: Path) -> None:
    # Frames 4, 6, ..., 12 need a 13-frame video; the file has 12.
    with pytest.raises(VideoReadError) as excinfo:
        read_video(index_mp4, start=4, num_frames=5, stride=2)
    message = str(excinfo.value)
    assert str(index_mp4) in message
    assert "12 frames available" in message
    assert "13 needed" in message

    with pytest.raises(VideoReadError, match="12 frames available but 13 needed"):
        read_video(index_mp4, num_frames=13)
    with pytest.raises(VideoReadError, match=str(index_mp4.name)):
        read_video(index_mp4, start=12)  # num_frames=None but nothing left from start


def test_pad_repeats_last_frame(index_mp4: Path) -> None:
    clip = read_video(index_mp4, start=4, num_frames=5, stride=2, pad=True)
    assert frame_indices(clip) == [4, 6, 8, 10, 11]  # index 12 is clamped to the last frame

    clip = read_video(index_mp4, start=9, num_frames=6, pad=True)
    assert frame_indices(clip) == [9, 10, 11, 11, 11, 11]
    assert torch.equal(clip[:, 2], clip[:, 5])

    clip = read_video(index_mp4, start=20, num_frames=2, pad=True)  # entirely past the end
    assert frame_indices(clip) == [11, 11]

    # pad has no effect when the video is long enough.
    assert torch.equal(read_video(index_mp4, num_frames=3, pad=True), read_video(index_mp4, num_frames=3))


def test_zero_frame_video_is_an_error_even_with_pad(tmp_path: Path) -> None:
    path = tmp_path / "empty.avi"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mjpeg", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
        container.start_encoding()  # header and index, but no frame
    for read in (probe_video, lambda p: read_video(p, num_frames=2, pad=True)):
        with pytest.raises(VideoReadError, match="empty.avi"):
            read(path)


def test_read_with_size_matches_resize_and_crop(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, synthetic_clip(t=6, h=48, w=64))
    full = read_video(path)
    small = read_video(path, size=24)
    assert small.shape == (3, 6, 24, 24)
    torch.testing.assert_close(small, resize_and_crop(full, 24), rtol=0, atol=1e-6)
    # Resize applies after frame selection.
    sub = read_video(path, start=1, num_frames=2, stride=3, size=24)
    torch.testing.assert_close(sub, small[:, [1, 4]], rtol=0, atol=1e-6)


def test_decoding_stops_early(index_mp4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only frames up to the last requested one are decoded and converted."""
    converted: list[int] = []
    original = video_io._frame_to_rgb

    def spy(frame: av.VideoFrame, ref_size: tuple[int, int], path: str) -> np.ndarray:
        converted.append(int(frame.to_ndarray(format="gray").mean().round()) // INDEX_STEP)
        return original(frame, ref_size, path)

    monkeypatch.setattr(video_io, "_frame_to_rgb", spy)
    read_video(index_mp4, start=2, num_frames=2, stride=3)
    assert converted == [2, 5]


# ------------------------------------------------------------------------- errors


def _assert_read_error(path: Path) -> None:
    for read in (probe_video, read_video):
        with pytest.raises(VideoReadError) as excinfo:
            read(path)
        assert str(path) in str(excinfo.value)


def test_random_bytes_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_read_error(path)
    with pytest.raises(VideoReadError, match="Invalid data"):  # the reason from FFmpeg
        read_video(path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_mp4_is_an_error(tmp_path: Path, keep: float) -> None:
    good = tmp_path / "good.mp4"
    write_video(good, synthetic_clip(t=8))
    data = good.read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: int(len(data) * keep)])  # the index (moov) is at the end
    _assert_read_error(path)


def test_truncated_mkv_gives_its_readable_head(tmp_path: Path) -> None:
    """Damage after some frames ends the stream (as in FFmpeg); probe and read agree."""
    # Texture makes every frame a sizeable packet, so a cut at 60% keeps several frames.
    noise = np.random.default_rng(0).integers(-8, 9, (12, 32, 48, 3))
    frames = np.clip(index_frames(12).astype(np.int64) + noise, 0, 255).astype(np.uint8)
    path = tmp_path / "full.mkv"
    write_with_pyav(path, frames, "libx264", "yuv420p")
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    info = probe_video(cut)
    assert 0 < info.num_frames < 12
    clip = read_video(cut)
    assert clip.shape[1] == info.num_frames
    assert frame_indices(clip) == list(range(info.num_frames))
    with pytest.raises(VideoReadError, match=f"{info.num_frames} frames available"):
        read_video(cut, num_frames=12)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "missing.mp4"
    _assert_read_error(path)
    with pytest.raises(FileNotFoundError):  # also catchable as the builtin
        read_video(path)


def test_text_file_and_directory(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a video\n" * 50)
    _assert_read_error(text)
    disguised = tmp_path / "notes.mp4"
    disguised.write_text("this is not a video either\n" * 50)
    _assert_read_error(disguised)
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    _assert_read_error(folder)


@pytest.mark.parametrize(
    "kwargs",
    [{"start": -1}, {"stride": 0}, {"num_frames": 0}, {"num_frames": -3}, {"size": 0}, {"start": 1.5}],
)
def test_bad_arguments_raise_value_error(index_mp4: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError) as excinfo:
        read_video(index_mp4, **kwargs)
    assert excinfo.type is ValueError  # not a VideoReadError: the arguments are wrong, not the file


# --------------------------------------------------------------- resize_and_crop


@pytest.mark.parametrize(
    ("h", "w", "size", "resized"),
    [
        (48, 64, 32, (32, 42)),  # landscape: int(32 * 64 / 48) = 42
        (64, 48, 32, (42, 32)),  # portrait
        (37, 91, 16, (16, 39)),  # odd sizes: int(39.35) = 39
        (91, 37, 16, (39, 16)),
        (50, 50, 20, (20, 20)),  # square
        (17, 16, 24, (25, 24)),  # upscaling: int(24 * 17 / 16) = int(25.5) = 25
        (10, 1000, 7, (7, 700)),
    ],
)
def test_resize_and_crop_matches_manual_computation(h: int, w: int, size: int, resized: tuple[int, int]) -> None:
    video = torch.rand(3, 2, h, w, generator=torch.Generator().manual_seed(h * w))
    out = resize_and_crop(video, size)
    assert out.shape == (3, 2, size, size)

    # Manual reference: torchvision's Resize(size, antialias=True) + CenterCrop(size).
    ref = F.interpolate(video.permute(1, 0, 2, 3), size=resized, mode="bilinear", align_corners=False, antialias=True)
    top = int(round((resized[0] - size) / 2.0))
    left = int(round((resized[1] - size) / 2.0))
    ref = ref[:, :, top : top + size, left : left + size].permute(1, 0, 2, 3)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize(
    ("w", "left"),
    [(11, 0), (12, 1), (13, 2), (15, 2), (17, 4)],  # round half to even: 0.5->0, 1.5->2, 2.5->2, 3.5->4
)
def test_center_crop_offsets(w: int, left: int) -> None:
    # Short side already equals size: no resampling, so the crop is visible exactly.
    video = torch.arange(10 * w, dtype=torch.float32).reshape(1, 1, 10, w)
    out = resize_and_crop(video, 10)
    torch.testing.assert_close(out, video[..., left : left + 10])
    torch.testing.assert_close(resize_and_crop(video.transpose(2, 3), 10), video.transpose(2, 3)[..., left : left + 10, :])


def test_resize_is_antialiased() -> None:
    # 1-px checkerboard downscaled 3x: plain bilinear samples single pixels (pure aliasing),
    # an antialiased filter averages them to grey.
    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    board = ((yy + xx) % 2).float().expand(3, 2, 48, 48)
    out = resize_and_crop(board, 16)
    assert (out - 0.5).abs().max() < 0.02

    aliased = F.interpolate(board[:, 0:1].permute(1, 0, 2, 3), size=(16, 16), mode="bilinear", align_corners=False)
    assert (aliased - 0.5).abs().min() > 0.4  # sanity check: the test would catch a missing antialias


def test_resize_and_crop_validates_input() -> None:
    with pytest.raises(TypeError):
        resize_and_crop(torch.zeros(3, 2, 8, 8, dtype=torch.uint8), 4)
    with pytest.raises(ValueError):
        resize_and_crop(torch.zeros(3, 8, 8), 4)
    with pytest.raises(ValueError):
        resize_and_crop(torch.zeros(3, 2, 8, 8), 0)


# -------------------------------------------------------------------- write_video


def test_write_odd_size_mp4(tmp_path: Path) -> None:
    clip = synthetic_clip(t=5, h=33, w=47)
    path = tmp_path / "odd.mp4"
    write_video(path, clip, fps=12.5)
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames) == (48, 34, 5)  # padded to even
    assert info.fps == pytest.approx(12.5)
    out = read_video(path)
    assert (out[:, :, :33, :47] - clip).abs().mean() < 0.03
    # The extra row/column replicates the edge.
    assert (out[:, :, :33, 47] - clip[:, :, :, 46]).abs().mean() < 0.05
    assert (out[:, :, 33, :47] - clip[:, :, 32, :]).abs().mean() < 0.05


def test_gif_falls_back_to_fixed_palette(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without FFmpeg's palette filters the encoder's fixed rgb8 palette is used."""

    def no_filters(frames: np.ndarray, rate: Fraction) -> list[av.VideoFrame]:
        raise ValueError("palette filters unavailable")

    monkeypatch.setattr(video_io, "_palette_frames", no_filters)
    clip = synthetic_clip(t=4, h=24, w=32)
    path = tmp_path / "fallback.gif"
    write_video(path, clip)
    out = read_video(path)
    assert out.shape == (3, 4, 24, 32)
    assert (out - clip).abs().mean() < 0.12  # 3-3-2 bit colours


def test_write_odd_size_gif_keeps_size(tmp_path: Path) -> None:
    path = tmp_path / "odd.gif"
    write_video(path, synthetic_clip(t=3, h=21, w=35))
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames) == (35, 21, 3)


def test_write_clamps_values(tmp_path: Path) -> None:
    clip = torch.zeros(3, 2, 16, 16)
    clip[:, :, :, :8] = -3.0
    clip[:, :, :, 8:] = 7.0
    path = tmp_path / "clamped.mp4"
    write_video(path, clip)
    out = read_video(path)
    assert out[:, :, :, :6].max() < 0.03
    assert out[:, :, :, 10:].min() > 0.97


def test_write_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    with pytest.raises(ValueError, match=r"\.mp4.*|\.gif"):
        write_video(path, synthetic_clip(t=2))
    with pytest.raises(ValueError) as excinfo:
        write_video(tmp_path / "clip", synthetic_clip(t=2))
    assert ".mp4" in str(excinfo.value) and ".gif" in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_video(tmp_path / "a.mp4", torch.zeros(4, 2, 8, 8))
    with pytest.raises(ValueError):
        write_video(tmp_path / "a.mp4", torch.zeros(3, 2, 8, 8), fps=0)
    with pytest.raises(TypeError):
        write_video(tmp_path / "a.mp4", torch.zeros(3, 2, 8, 8, dtype=torch.uint8))
    assert list(tmp_path.iterdir()) == []


def test_write_creates_parents_and_leaves_no_temp_files(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    write_video(folder / "x.mp4", synthetic_clip(t=3))
    write_video(folder / "x.gif", synthetic_clip(t=3))
    write_video(folder / "x.mp4", synthetic_clip(t=4))  # overwrite in place
    assert sorted(p.name for p in folder.iterdir()) == ["x.gif", "x.mp4"]
    assert probe_video(folder / "x.mp4").num_frames == 4


def test_write_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "clip.mp4"
    write_video(final, synthetic_clip(t=3))
    before = final.read_bytes()

    def crash(path: str, frames: np.ndarray, rate: Fraction) -> None:
        Path(path).write_bytes(b"half a video")  # partial output under the temp name
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(video_io, "_write_mp4", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_video(final, synthetic_clip(t=5))
    assert final.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # and no temp file is left


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_pieces_make_the_same_video_as_one_clip(tmp_path: Path, suffix: str) -> None:
    clip = synthetic_clip(t=7, h=21, w=35)
    write_video(tmp_path / f"one{suffix}", clip, fps=10)
    pieces = (clip[:, i : i + 3] for i in range(0, 7, 3))  # a generator: consumed once, piece by piece
    assert write_video_pieces(tmp_path / f"pieces{suffix}", pieces, fps=10) == 7
    one, joined = read_video(tmp_path / f"one{suffix}"), read_video(tmp_path / f"pieces{suffix}")
    # the same frames in the same order (x264's threads may round a few pixels otherwise under load)
    assert one.shape == joined.shape and one.shape[1] == 7
    assert (one - joined).abs().mean(dim=(0, 2, 3)).max() < 0.005
    assert probe_video(tmp_path / f"pieces{suffix}").fps == pytest.approx(10)


def test_mp4_pieces_are_not_held(tmp_path: Path) -> None:
    """An mp4 is encoded piece by piece: its 8-bit frames are never all in memory (numpy's allocations are
    traced; the whole video would be 20 x 393 KB)."""
    pieces = (torch.rand(3, 8, 128, 128) for _ in range(20))
    tracemalloc.start()
    try:
        assert write_video_pieces(tmp_path / "a.mp4", pieces) == 160
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 8 * 128 * 128 * 3  # a few pieces' worth, not 20


def test_pieces_must_agree_and_exist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="same frame size: 32x24 then 16x16"):
        write_video_pieces(tmp_path / "a.mp4", [synthetic_clip(t=2, h=24, w=32), synthetic_clip(t=2, h=16, w=16)])
    with pytest.raises(ValueError, match="same frame size"):
        write_video_pieces(tmp_path / "a.gif", [synthetic_clip(t=2, h=24, w=32), synthetic_clip(t=2, h=16, w=16)])
    with pytest.raises(ValueError, match="no frame to write"):
        write_video_pieces(tmp_path / "a.mp4", [])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing left behind


# ---------------------------------------------------------------------- make_grid


def test_make_grid_shape_and_placement() -> None:
    n, c, t, h, w = 5, 3, 2, 4, 6
    videos = torch.stack([torch.full((c, t, h, w), float(k)) for k in range(n)])
    grid = make_grid(videos, nrow=3, padding=2, pad_value=-1.0)
    assert grid.shape == (3, 2, 2 * (h + 2) + 2, 3 * (w + 2) + 2)

    for k in range(n):
        row, col = divmod(k, 3)
        top, left = 2 + row * (h + 2), 2 + col * (w + 2)
        assert torch.equal(grid[:, :, top : top + h, left : left + w], videos[k])
    # Everything that is not a tile (borders and the empty 6th cell) is pad_value.
    assert int((grid == -1.0).sum()) == grid.numel() - n * c * t * h * w


def test_make_grid_matches_torchvision_layout() -> None:
    # torchvision: ncol = min(nrow, n), nrows = ceil(n / ncol).
    videos = torch.rand(2, 3, 1, 5, 7)
    grid = make_grid(videos)  # nrow=8 > n
    assert grid.shape == (3, 1, 5 + 4, 2 * (7 + 2) + 2)
    assert make_grid(torch.rand(9, 3, 1, 4, 4), nrow=4, padding=0).shape == (3, 1, 12, 16)
    single = make_grid(torch.rand(1, 3, 2, 4, 4), padding=1, pad_value=0.5)
    assert single.shape == (3, 2, 6, 6)
    assert torch.all(single[:, :, 0] == 0.5)


def test_make_grid_validates_input() -> None:
    with pytest.raises(ValueError):
        make_grid(torch.rand(3, 2, 4, 4))
    with pytest.raises(ValueError):
        make_grid(torch.rand(2, 3, 2, 4, 4), nrow=0)
    with pytest.raises(ValueError):
        make_grid(torch.rand(0, 3, 2, 4, 4))


def test_grid_can_be_written(tmp_path: Path) -> None:
    grid = make_grid(torch.rand(4, 3, 3, 16, 16), nrow=2)
    write_video(tmp_path / "grid.gif", grid)
    assert probe_video(tmp_path / "grid.gif").num_frames == 3
    assert os.path.getsize(tmp_path / "grid.gif") > 0

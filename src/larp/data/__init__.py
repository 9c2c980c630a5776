"""Video data: decoding and encoding files (PyAV), resizing, grids."""

from larp.data.video_io import (
    VideoInfo,
    VideoReadError,
    make_grid,
    probe_video,
    read_video,
    resize_and_crop,
    write_video,
)

__all__ = ["VideoInfo", "VideoReadError", "make_grid", "probe_video", "read_video", "resize_and_crop", "write_video"]

"""Video data: decoding and encoding files (PyAV), datasets (manifests, synthetic), scanning."""

from larp.data.datasets import (
    VideoClipDataset,
    VideoEntry,
    collate_skipping_none,
    find_videos,
    load_entries,
    read_manifest,
)
from larp.data.scan import ScanReport, scan_videos
from larp.data.synthetic import CLASS_NAMES, SyntheticConfig, SyntheticVideos
from larp.data.video_io import (
    VideoInfo,
    VideoReadError,
    make_grid,
    probe_video,
    read_video,
    resize_and_crop,
    write_video,
)

__all__ = [
    "CLASS_NAMES",
    "ScanReport",
    "SyntheticConfig",
    "SyntheticVideos",
    "VideoClipDataset",
    "VideoEntry",
    "VideoInfo",
    "VideoReadError",
    "collate_skipping_none",
    "find_videos",
    "load_entries",
    "make_grid",
    "probe_video",
    "read_manifest",
    "read_video",
    "resize_and_crop",
    "scan_videos",
    "write_video",
]

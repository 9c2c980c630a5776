"""Tokenizing a folder of videos: videos/s, windows/s, decoding vs model time, peak memory, written as JSON.

Workload: a folder of generated mp4s of mixed sizes (portrait, landscape, odd), lengths and frame rates
(moving colour gradients and a square, H.264), cut into whole-video windows at the native rate
(:class:`larp.data.windows.VideoWindows`, crop policy) and encoded in batches across videos
(:func:`larp.video_tokens.encode_windows`, ``--batch-size`` windows at a time), one process, decoding and the
model in turn, so the split is exact: ``decode_s`` is the time spent producing windows (demux, decode,
resize), ``model_s`` the time in the tokenizer. Each ``--preset`` runs in a fresh subprocess: its peak RSS
(VmHWM) and the growth over the RSS after the model was built. Weights are random (throughput does not
depend on them). ``--hd-seconds S`` adds one S-second 1920x1080 25 fps video tokenized alone (the peak
memory of a long 1080p video over the model's own).

    OMP_NUM_THREADS=2 python benchmarks/bench_tokenize_dataset.py --preset larp-small larp-l \\
        --max-windows larp-l=2 --out benchmarks/results/tokenize-dataset-cpu.json
    python benchmarks/bench_tokenize_dataset.py --quick --out /tmp/tokenize-quick.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import torch
from common import machine, peak_rss_mb, rss_mb, sync

import larp
from larp.data.windows import VideoWindows, WindowPlan
from larp.files import write_json_atomic
from larp.video_tokens import encode_windows

# (width, height, frames, fps): landscape, portrait, odd, HD, short, long; cycled over the folder
MIXES = [(320, 240, 100, 30), (640, 272, 250, 25), (200, 120, 33, 24), (90, 160, 17, 30), (1280, 720, 60, 30),
         (480, 854, 75, 24), (160, 90, 1, 25), (352, 288, 150, 25)]  # even sizes: yuv420p
QUICK_MIXES = [(64, 48, 20, 24), (48, 64, 17, 30), (90, 60, 5, 25)]


def synthetic_frames(width: int, height: int, frames: int, seed: int) -> Iterator[np.ndarray]:
    """(height, width, 3) uint8 frames, one at a time: drifting colour gradients and a moving square
    (compresses like video; generated as a stream so that a long 1080p file needs one frame of memory)."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6.28, size=3)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    side = max(2, min(width, height) // 4)
    for i in range(frames):
        frame = np.stack([0.5 + 0.5 * np.sin(6 * x + 4 * y + 0.1 * i + phase[c]) for c in range(3)], axis=-1)
        frame = (frame * 255).astype(np.uint8)
        top = int((height - side) * (0.5 + 0.5 * math.sin(0.07 * i + phase[0])))
        left = int((width - side) * (0.5 + 0.5 * math.cos(0.05 * i + phase[1])))
        frame[top : top + side, left : left + side] = 255
        yield frame


def write_mp4(path: Path, width: int, height: int, frames: int, fps: int, seed: int) -> None:
    """An H.264 mp4 written frame by frame with PyAV (even sizes: yuv420p)."""
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in synthetic_frames(width, height, frames, seed):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    tmp.rename(path)


def make_folder(folder: Path, count: int, mixes: list[tuple[int, int, int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        width, height, frames, fps = mixes[i % len(mixes)]
        path = folder / f"video-{i:03d}-{width}x{height}-{frames}f-{fps}fps.mp4"
        if not path.exists():
            write_mp4(path, width, height, frames, fps, seed=i)
        paths.append(path)
    return paths


def make_hd(folder: Path, seconds: float) -> Path:
    """One ``seconds``-long 1920x1080 25 fps video."""
    path = folder / f"hd-{seconds:g}s-1920x1080-25fps.mp4"
    if not path.exists():
        write_mp4(path, 1920, 1080, int(round(25 * seconds)), 25, seed=99)
    return path


def tokenize_folder(tokenizer, paths: list[Path], batch_size: int, max_windows: int | None, precision: str) -> dict:
    """Tokenize every video, batching windows across videos; the decode / model split and the counts."""
    config = tokenizer.config
    plan = WindowPlan(frames=config.frame_num, size=config.input_size, max_windows=max_windows)
    decode_s = model_s = 0.0
    windows = 0
    pending: list[torch.Tensor] = []
    frames = 0

    def flush() -> None:
        nonlocal model_s
        began = time.perf_counter()
        encode_windows(tokenizer, torch.stack(pending), precision)
        sync(tokenizer.device)
        model_s += time.perf_counter() - began
        pending.clear()

    began_all = time.perf_counter()
    for path in paths:
        began = time.perf_counter()
        stream = VideoWindows(path, plan)
        iterator = iter(stream)
        while True:
            try:
                window = next(iterator)
            except StopIteration:
                break
            finally:
                decode_s += time.perf_counter() - began
            pending.append(window)
            windows += 1
            if len(pending) == batch_size:
                flush()
            began = time.perf_counter()
        frames += stream.info.frames
    if pending:
        flush()
    total_s = time.perf_counter() - began_all
    return {
        "videos": len(paths), "windows": windows, "frames": frames, "seconds": round(total_s, 3),
        "decode_s": round(decode_s, 3), "model_s": round(model_s, 3),
        "videos_per_s": round(len(paths) / total_s, 3), "windows_per_s": round(windows / total_s, 3),
        "model_windows_per_s": round(windows / model_s, 3) if model_s else None,
        "decode_share": round(decode_s / total_s, 3),
    }


def run_case(args) -> dict:
    """One preset in this process (a fresh subprocess of the main run)."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    tokenizer = larp.LARPTokenizer.from_preset(args.case).to(device).eval()
    rss_model = rss_mb()
    paths = sorted(Path(args.folder).glob("video-*.mp4"))
    with torch.no_grad():
        result = tokenize_folder(tokenizer, paths, args.batch_size, args.case_max_windows, args.dtype)
        result.update(preset=args.case, batch_size=args.batch_size, max_windows_per_video=args.case_max_windows,
                      rss_after_model_mb=round(rss_model, 1), peak_rss_mb=round(peak_rss_mb(), 1))
        result["peak_rss_over_model_mb"] = round(result["peak_rss_mb"] - rss_model, 1)
        hd = sorted(Path(args.folder).glob("hd-*.mp4"))
        if hd:
            before = peak_rss_mb()
            result["hd"] = tokenize_folder(tokenizer, hd, args.batch_size, args.case_max_windows, args.dtype)
            result["hd"].update(file=hd[0].name, peak_rss_mb=round(peak_rss_mb(), 1),
                                peak_rss_over_model_mb=round(peak_rss_mb() - rss_model, 1),
                                peak_rss_grew_mb=round(peak_rss_mb() - before, 1))
    return result


def parse_max_windows(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--max-windows expects PRESET=N (N >= 1), got {item!r}")
        out[name] = int(value)
    return out


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", default=["larp-small"], help="tokenizer presets (random weights)")
    parser.add_argument("--videos", type=int, default=48, help="videos in the generated folder (default 48)")
    parser.add_argument("--max-windows", nargs="*", default=[], metavar="PRESET=N",
                        help="windows per video for a preset (e.g. larp-l=2: larp-l takes ~3 s per window on a CPU)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hd-seconds", type=float, default=0.0, help="also one 1920x1080 video this long (0: none)")
    parser.add_argument("--folder", type=Path, help="where the videos are generated (default: a temporary folder)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="larp-tiny on 6 small videos")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--case-max-windows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:  # a subprocess: one preset, its result as JSON
        write_json_atomic(args.out, run_case(args))
        return None
    caps = parse_max_windows(args.max_windows)
    if args.quick:
        args.preset, args.videos = ["larp-tiny"], 6
    with tempfile.TemporaryDirectory(prefix="larp-bench-") as scratch:
        folder = args.folder or Path(scratch) / "videos"
        began = time.perf_counter()
        paths = make_folder(folder, args.videos, QUICK_MIXES if args.quick else MIXES)
        if args.hd_seconds > 0:
            make_hd(folder, args.hd_seconds)
        generated_s = time.perf_counter() - began
        cases = []
        for preset in args.preset:
            part = Path(scratch) / f"{preset}.json"
            command = [sys.executable, __file__, "--case", preset, "--folder", str(folder), "--out", str(part),
                       "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--device", args.device]
            if preset in caps:
                command += ["--case-max-windows", str(caps[preset])]
            subprocess.run(command, check=True)
            cases.append(json.loads(part.read_text()))
            c = cases[-1]
            print(f"{preset}: {c['videos']} videos, {c['windows']} windows in {c['seconds']:.1f} s = "
                  f"{c['videos_per_s']:.2f} videos/s, {c['windows_per_s']:.2f} windows/s (decode {c['decode_s']:.1f} s, "
                  f"model {c['model_s']:.1f} s); peak RSS {c['peak_rss_mb']:.0f} MB "
                  f"(+{c['peak_rss_over_model_mb']:.0f} MB over the model)")
            if "hd" in c:
                h = c["hd"]
                print(f"  1080p {h['file']}: {h['windows']} windows in {h['seconds']:.1f} s (decode {h['decode_s']:.1f} s);"
                      f" peak RSS +{h['peak_rss_over_model_mb']:.0f} MB over the model")
    sizes = sorted({(w, h) for w, h, _, _ in (QUICK_MIXES if args.quick else MIXES)})
    record = {
        "benchmark": "tokenize-dataset",
        "folder": {"videos": len(paths), "sizes": [f"{w}x{h}" for w, h in sizes],
                   "frames": sorted({f for _, _, f, _ in (QUICK_MIXES if args.quick else MIXES)}),
                   "fps": sorted({r for _, _, _, r in (QUICK_MIXES if args.quick else MIXES)}),
                   "generated_s": round(generated_s, 1), "hd_seconds": args.hd_seconds},
        "policy": "crop, native frame rate, whole videos (or --max-windows), windows batched across videos",
        "dtype": args.dtype, "batch_size": args.batch_size,
        "cases": cases,
        "machine": machine(torch.device(args.device)),
    }
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()

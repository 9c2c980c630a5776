"""``larp scan``: check a video dataset (manifest or folder) before training."""

from __future__ import annotations

import argparse
from pathlib import Path

from larp.data.datasets import load_entries
from larp.data.scan import ScanReport, scan_videos
from larp.files import write_json_atomic

# Entries printed per kind of problem; the JSON report has all of them.
_SHOW = 10


def register(commands: argparse._SubParsersAction) -> None:
    scan = commands.add_parser(
        "scan",
        help="check every video of a dataset: unreadable, too short, duplicated, train/val overlap",
        description=(
            "Check every video of a manifest (official LARP csv: a 'path' column, optionally 'label' and "
            "'action') or of a folder of videos. Exit code 0 when clean, 1 when problems were found."
        ),
    )
    scan.add_argument("source", metavar="MANIFEST_OR_FOLDER", help="training videos: a .csv manifest or a folder")
    scan.add_argument(
        "--root",
        default=None,
        help="folder that relative manifest paths are relative to (default: found from the csv's location)",
    )
    scan.add_argument(
        "--val", default=None, metavar="MANIFEST_OR_FOLDER", help="validation videos, checked for overlap with training"
    )
    scan.add_argument("--frames", type=int, default=16, help="clip length; shorter videos are reported (default 16)")
    scan.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: CPU count, at most 8; 0: none)"
    )
    scan.add_argument("--json", default=None, metavar="FILE", help="also write the full report to this JSON file")
    scan.set_defaults(run=run_scan)


def run_scan(args: argparse.Namespace) -> int:
    if args.frames < 1:
        raise ValueError(f"--frames must be at least 1, got {args.frames}")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.json and Path(args.json).is_dir():  # refused before the scan, which may take long
        raise ValueError(f"--json {args.json} is a folder; expected a file, e.g. {Path(args.json) / 'scan.json'}")
    entries = load_entries(args.source, args.root)
    val_entries = load_entries(args.val, args.root) if args.val else None
    quiet = getattr(args, "quiet", False)
    report = scan_videos(
        entries, frames=args.frames, val_entries=val_entries, workers=args.workers, progress=False if quiet else None
    )
    print(format_report(report))
    if args.json:
        out = write_json_atomic(args.json, report.to_dict())  # never leaves a half-written report
        print(f"report written to {out}")
    return 0 if report.clean else 1


def format_report(report: ScanReport) -> str:
    """Human-readable summary: counts first, then up to a few examples of each problem."""
    scanned = f"{report.num_videos} training"
    if report.num_val_videos:
        scanned += f" + {report.num_val_videos} validation"
    lines = [f"scanned {scanned} videos (clips of {report.frames} frames)", f"  readable: {report.num_readable}"]
    if report.frame_stats:
        s = report.frame_stats
        lines.append(f"  frames per video: min {s['min']}, median {s['median']:g}, max {s['max']}")
    sections = [
        ("unreadable", report.unreadable, lambda p: f"[{p.split}] {p.path}: {p.reason}"),
        (f"too short (< {report.frames} frames)", report.too_short, lambda p: f"[{p.split}] {p.path}: {p.reason}"),
        ("listed twice (same file)", report.duplicate_paths, lambda d: f"[{d.split}] {d.key} x{len(d.paths)}"),
        ("duplicate content (same bytes)", report.duplicate_content, lambda d: f"[{d.split}] " + ", ".join(d.paths)),
        ("train/val overlap by file name", report.name_overlap, lambda o: f"{o.key}: {o.train[0]} | {o.val[0]}"),
        ("train/val overlap by content", report.content_overlap, lambda o: f"{o.train[0]} | {o.val[0]}"),
    ]
    for title, items, describe in sections:
        lines.append(f"  {title}: {len(items)}")
        for item in items[:_SHOW]:
            lines.append(f"    {describe(item)}")
        if len(items) > _SHOW:
            lines.append(f"    ... and {len(items) - _SHOW} more (--json writes them all)")
    lines.append("no problems found" if report.clean else f"{report.num_problems} problem(s) found")
    return "\n".join(lines)

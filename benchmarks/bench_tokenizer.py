"""Tokenizer encode/decode throughput and peak memory, written as JSON.

Workload (DESIGN.md performance targets): one 16x128x128 clip through the `larp-l` preset, at fp32, bf16 (cast weights) and
bf16 autocast, plus a small preset. Reports seconds per clip (median of --repeats after a warm-up), clips/s,
peak memory (CUDA: max allocated; CPU: peak RSS growth of the process), and the share of bf16 ids that
equal the fp32 ids on the same clip (random weights; trained weights are more decisive).

    python benchmarks/bench_tokenizer.py --out benchmarks/results/tokenizer-cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import time
from pathlib import Path

import torch
from common import machine, sync

import larp

# "bf16": weights cast to bf16; "bf16-autocast": fp32 weights under autocast (what `larp --dtype bf16` does)
MODES = {
    "fp32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
    "bf16-autocast": (torch.float32, torch.bfloat16),
    "fp16-autocast": (torch.float32, torch.float16),
}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_preset(preset: str, dtypes: list[str], batch: int, repeats: int, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    model = larp.LARPTokenizer.from_preset(preset)
    with torch.no_grad():  # random but non-degenerate weights (the untrained output layer is all zeros)
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model = model.eval().to(device)
    c = model.config
    video = torch.rand(batch, c.in_channels, c.frame_num, c.input_size, c.input_size, device=device)
    reference_ids = None
    rows = []
    for name in dtypes:
        weight_dtype, autocast_dtype = MODES[name]
        model = model.to(weight_dtype)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def precision():
            if autocast_dtype is None:
                return contextlib.nullcontext()
            return torch.autocast(device_type=device.type, dtype=autocast_dtype)

        def encode():
            with precision():
                return model.encode(video)

        def decode():
            with precision():
                return model.decode(ids)

        ids = encode()
        encode_s = _time(encode, device, repeats)
        decode_s = _time(decode, device, repeats)
        if reference_ids is None:
            reference_ids = ids
        rows.append(
            {
                "preset": preset,
                "dtype": name,
                "batch": batch,
                "clip": f"{c.frame_num}x{c.input_size}x{c.input_size}",
                "encode_s": round(encode_s, 4),
                "decode_s": round(decode_s, 4),
                "encode_clips_per_s": round(batch / encode_s, 3),
                "decode_clips_per_s": round(batch / decode_s, 3),
                "ids_equal_to_fp32": round((ids == reference_ids).float().mean().item(), 4),
                "peak_memory_mb": round(_peak_memory_mb(device), 1),
            }
        )
        print(json.dumps(rows[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["larp-l", "larp-small"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "bf16-autocast"], choices=sorted(MODES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args()
    device = torch.device(args.device)
    results = [row for preset in args.presets for row in bench_preset(preset, args.dtypes, args.batch, args.repeats, device)]
    report = {
        "benchmark": "tokenizer encode/decode",
        "machine": machine(device),
        "torch": torch.__version__,
        "larp": larp.__version__,
        "results": results,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Where a tokenizer's encode + decode time goes on a CPU, per precision: torch.profiler op tables, as JSON.

For each mode (fp32, bf16 weights, bf16 autocast; see bench_tokenizer.MODES) it profiles one encode and
one decode of the benchmark clip after a warm-up, and reports the top ops by self CPU time, the time per
op family (matrix products, attention, LayerNorm, GELU, dtype casts, the rest), and the ids equal to fp32.
It also times the tokenizer's main matrix products alone (the MLP and qkv projections of a 2,048-token
sequence, the attention of 12 heads x 2,048 x 64) in fp32 and bf16, which bounds what bf16 can gain on
this CPU.

    python benchmarks/profile_tokenizer.py --out benchmarks/results/bf16-profile-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_tokenizer import MODES, build_tokenizer, in_mode, make_clip, precision
from common import machine

import larp
from larp.files import write_json_atomic

# op name -> family (self CPU time is summed per family)
FAMILIES = {
    "matmul": ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn", "onednn"),
    "attention": ("scaled_dot_product", "flash_attention", "aten::_softmax", "aten::softmax"),
    "layer_norm": ("layer_norm",),
    "gelu": ("gelu",),
    "casts_copies": ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous"),
    "conv_patchify": ("convolution", "conv3d", "aten::_convolution", "mkldnn_convolution"),
    "elementwise_add": ("aten::add", "aten::add_"),
}


def family(name: str) -> str:
    for fam, keys in FAMILIES.items():
        if any(k in name for k in keys):
            return fam
    return "other"


def profile_mode(model, video, ids, mode: str, device: torch.device, top: int) -> dict:
    def step():
        with precision(mode, device):
            model.encode(video)
            model.decode(ids)

    step()  # warm-up (oneDNN primitive creation, weight reorders)
    start = time.perf_counter()
    step()
    wall = time.perf_counter() - start
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    families: dict[str, float] = {}
    for e in events:
        families[family(e.key)] = families.get(family(e.key), 0.0) + e.self_cpu_time_total
    return {
        "mode": mode,
        "encode_plus_decode_s": round(wall, 3),
        "profiled_self_cpu_s": round(total / 1e6, 3),
        "families_share": {k: round(v / total, 4) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        "families_s": {k: round(v / 1e6, 3) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        "top_ops": [
            {"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1),
             "share": round(e.self_cpu_time_total / total, 4), "calls": e.count}
            for e in rows[:top]
        ],
    }


def _median_time(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def kernel_ceiling(dim: int, tokens: int, heads: int) -> dict:
    """fp32 and bf16 times of the block's matrix products and attention alone (random data)."""
    out = {}
    x32 = torch.randn(1, tokens, dim)
    cases = {
        "linear_fc1": (dim, 4 * dim),
        "linear_fc2": (4 * dim, dim),
        "linear_qkv": (dim, 3 * dim),
    }
    for name, (fan_in, fan_out) in cases.items():
        inp = torch.randn(1, tokens, fan_in)
        w = torch.randn(fan_out, fan_in) * 0.02
        t32 = _median_time(lambda: F.linear(inp, w))
        t16 = _median_time(lambda: F.linear(inp.bfloat16(), w.bfloat16()))
        out[name] = {"fp32_ms": round(t32 * 1e3, 2), "bf16_ms": round(t16 * 1e3, 2), "speedup": round(t32 / t16, 2),
                     "fp32_gflops": round(2 * tokens * fan_in * fan_out / t32 / 1e9, 1)}
    q = torch.randn(1, heads, tokens, dim // heads)
    t32 = _median_time(lambda: F.scaled_dot_product_attention(q, q, q))
    qb = q.bfloat16()
    t16 = _median_time(lambda: F.scaled_dot_product_attention(qb, qb, qb))
    out["sdpa"] = {"fp32_ms": round(t32 * 1e3, 2), "bf16_ms": round(t16 * 1e3, 2), "speedup": round(t32 / t16, 2)}
    ln = torch.nn.LayerNorm(dim)
    t32 = _median_time(lambda: ln(x32))
    lnb = torch.nn.LayerNorm(dim).bfloat16()
    xb = x32.bfloat16()
    t16 = _median_time(lambda: lnb(xb))
    out["layer_norm"] = {"fp32_ms": round(t32 * 1e3, 2), "bf16_ms": round(t16 * 1e3, 2), "speedup": round(t32 / t16, 2)}
    gelu = torch.nn.GELU()
    h32 = torch.randn(1, tokens, 4 * dim)
    t32 = _median_time(lambda: gelu(h32))
    hb = h32.bfloat16()
    t16 = _median_time(lambda: gelu(hb))
    out["gelu_4d"] = {"fp32_ms": round(t32 * 1e3, 2), "bf16_ms": round(t16 * 1e3, 2), "speedup": round(t32 / t16, 2)}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="larp-l")
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16", "bf16-autocast"], choices=sorted(MODES))
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    fp32 = build_tokenizer(args.preset, device)
    video = make_clip(fp32.config, 1, device)
    torch.set_grad_enabled(False)
    ids = fp32.encode(video)
    report = {"benchmark": "tokenizer encode+decode profile", "preset": args.preset, "machine": machine(device),
              "torch": torch.__version__, "larp": larp.__version__,
              "command": "python benchmarks/profile_tokenizer.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "modes": []}
    for mode in args.modes:
        model = in_mode(fp32, mode)
        row = profile_mode(model, video, ids, mode, device, args.top)
        with precision(mode, device):
            row["ids_equal_to_fp32"] = round((model.encode(video) == ids).float().mean().item(), 4)
        report["modes"].append(row)
        print(json.dumps({k: row[k] for k in ("mode", "encode_plus_decode_s", "families_share", "ids_equal_to_fp32")}),
              flush=True)
        del model
    c = fp32.config
    report["kernel_ceiling"] = kernel_ceiling(c.encoder_hidden_size, c.num_patches + c.num_tokens, c.encoder_num_heads)
    print(json.dumps(report["kernel_ceiling"]), flush=True)
    report["load_average_at_end"] = os.getloadavg()
    if args.out:
        write_json_atomic(args.out, report)
    return report


if __name__ == "__main__":
    main()

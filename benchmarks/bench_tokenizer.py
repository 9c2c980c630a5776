"""Tokenizer encode/decode throughput and peak memory, written as JSON; optionally beside the official code.

Workload (DESIGN.md performance targets): one 16x128x128 clip through the `larp-l` preset, at fp32, bf16 (cast weights) and
bf16 autocast, plus a small preset. Reports seconds per clip (median of --repeats after a warm-up), clips/s,
peak memory (CUDA: max allocated; CPU: peak RSS of the process), and the share of bf16 ids that
equal the fp32 ids on the same clip (random weights; trained weights are more decisive).

With the official sources (``--official-src DIR``, default ``$LARP_OFFICIAL_SRC``) each preset also runs
the official LARP tokenizer in the same process, with the same weights: larp's model is saved in the
official format and read back by the official ``from_pretrained`` (every key checked to load exactly);
the official VQ is made deterministic (``set_vq_eval_deterministic``: it samples in eval mode otherwise),
so that ids can be compared. Each mode times larp and the official model alternately on the same clip
(the order swapped every repeat, so both see the same machine load) and reports both medians, the ratio
official/larp (of the medians, and the median of the per-repeat ratios), the share of ids equal between
the two and to each side's fp32 ids, and the largest difference of the decoded clips. The official code
needs timm==1.0.15 and easydict importable (see tools/official_code.py); it cannot run with bf16
weights (its VQ asserts a float32 codebook), which the result records.

    python benchmarks/bench_tokenizer.py --out benchmarks/results/tokenizer-cpu.json
    PYTHONPATH=/tmp/official_deps python benchmarks/bench_tokenizer.py --official-src /tmp/official_larp \
        --presets larp-l larp-small --out benchmarks/results/tokenizer-vs-official-cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import alternate, machine, peak_rss_mb, ratio_summary, sync

import larp
from larp.files import write_json_atomic

# "bf16": weights cast to bf16; "bf16-autocast": fp32 weights under autocast (what `larp --dtype bf16` does)
MODES = {
    "fp32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
    "bf16-autocast": (torch.float32, torch.bfloat16),
    "fp16-autocast": (torch.float32, torch.float16),
}
TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


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


def build_tokenizer(preset: str, device: torch.device) -> larp.LARPTokenizer:
    """The preset with seeded random weights plus N(0, 0.02^2) noise, eval mode, float32."""
    torch.manual_seed(0)
    model = larp.LARPTokenizer.from_preset(preset)
    with torch.no_grad():  # random but non-degenerate weights (the untrained output layer is all zeros)
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model.eval().to(device)


def make_clip(config, batch: int, device: torch.device) -> torch.Tensor:
    """A random clip, drawn from the global RNG right after :func:`build_tokenizer` (the clip of earlier results)."""
    return torch.rand(batch, config.in_channels, config.frame_num, config.input_size, config.input_size, device=device)


def in_mode(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``model`` itself for fp32 weights, else a copy cast to the mode's weight dtype (the fp32 original
    stays exact: casting it there and back would round every weight)."""
    weight_dtype, _ = MODES[mode]
    return model if weight_dtype == torch.float32 else copy.deepcopy(model).to(weight_dtype)


def precision(mode: str, device: torch.device):
    """The autocast context of ``mode`` (a no-op for the weight-dtype modes)."""
    _, autocast_dtype = MODES[mode]
    if autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=autocast_dtype)


def bench_preset(preset: str, dtypes: list[str], batch: int, repeats: int, device: torch.device) -> list[dict]:
    """larp alone: each mode's median encode and decode time, ids equal to fp32, peak memory."""
    fp32_model = build_tokenizer(preset, device)
    c = fp32_model.config
    video = make_clip(c, batch, device)
    reference_ids = None
    rows = []
    for name in dtypes:
        model = in_mode(fp32_model, name)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def encode():
            with precision(name, device):
                return model.encode(video)

        def decode():
            with precision(name, device):
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
        print(json.dumps(rows[-1]), flush=True)
    return rows


# ------------------------------------------------------------------------------------------ vs the official code
def load_official(src: str | os.PathLike):
    """The official ``LARPTokenizer`` class (and the helper module) from a checkout of hywang66/LARP."""
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    import official_code

    official_tokenizer, _, _ = official_code.import_official(src)
    return official_tokenizer, official_code


def share_equal(a: torch.Tensor, b: torch.Tensor) -> float:
    return round((a.long() == b.long()).float().mean().item(), 4)


def compare_preset(preset: str, modes: list[str], batch: int, repeats: int, device: torch.device,
                   official_cls, official_code, workdir: Path) -> dict:
    """larp and the official tokenizer with the same weights, alternating, for each mode.

    Returns a dict with the model facts and one row per mode (see the module docstring).
    """
    ours = build_tokenizer(preset, device)
    c = ours.config
    video = make_clip(c, batch, device)
    theirs = official_code.official_copy(ours, official_cls, workdir / preset).to(device)
    theirs.set_vq_eval_deterministic(True)  # the official VQ samples in eval mode unless told otherwise

    def official_encode(model):
        with torch.no_grad():  # the official encode takes the clip in its own dtype (larp casts it)
            return model.encode(video.to(model.dtype))["bottleneck_rep"].reshape(batch, -1)

    with torch.no_grad():
        fp32_ids = {"larp": ours.encode(video), "official": official_encode(theirs)}
        fp32_decoded = ours.decode(fp32_ids["larp"])
    report = {
        "preset": preset,
        "clip": f"{c.frame_num}x{c.input_size}x{c.input_size}",
        "batch": batch,
        "parameters": ours.num_parameters(),
        "official_parameters": sum(p.numel() for p in theirs.parameters()),
        "codes_used_fp32": int(fp32_ids["larp"].unique().numel()),
        "weights": "larp's preset, seeded, + N(0, 0.02^2) on every parameter; saved in the official format and "
                   "loaded by the official from_pretrained (every key exact)",
        "modes": [],
    }
    for mode in modes:
        row = {"mode": mode}
        a = in_mode(ours, mode)
        try:
            b = theirs
            if MODES[mode][0] != torch.float32:  # a fresh load: a deepcopy would share the original's PE lambdas
                b, _ = official_code.official_from_pretrained(official_cls, workdir / preset)
                b = b.eval().to(device=device, dtype=MODES[mode][0])
                b.set_vq_eval_deterministic(True)
            with precision(mode, device):
                official_encode(b)
        except Exception as error:  # the official code does not run in this mode
            row["official_error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
            b = None
        ids = fp32_ids["larp"]

        def enc_ours():
            with precision(mode, device):
                return a.encode(video)

        def dec_ours():
            with precision(mode, device):
                return a.decode(ids)

        def enc_theirs():
            with precision(mode, device):
                return official_encode(b)

        def dec_theirs():
            with precision(mode, device), torch.no_grad():
                return b.decode_from_bottleneck(ids)

        larp_ids = enc_ours()
        row["larp_ids_equal_to_larp_fp32"] = share_equal(larp_ids, fp32_ids["larp"])
        if b is None:
            enc = alternate({"larp": enc_ours}, device, repeats, warmup=1)
            dec = alternate({"larp": dec_ours}, device, repeats, warmup=1)
            for step, times in (("encode", enc), ("decode", dec)):
                row[step] = {"larp_s": round(statistics.median(times["larp"]), 4),
                             "larp_all_s": [round(t, 4) for t in times["larp"]]}
        else:
            official_ids = enc_theirs()
            row["official_ids_equal_to_official_fp32"] = share_equal(official_ids, fp32_ids["official"])
            row["ids_equal_larp_vs_official"] = share_equal(larp_ids, official_ids)
            row["decoded_max_abs_diff"] = float((dec_ours().float() - dec_theirs().float()).abs().max())
            enc = alternate({"larp": enc_ours, "official": enc_theirs}, device, repeats, warmup=1)
            dec = alternate({"larp": dec_ours, "official": dec_theirs}, device, repeats, warmup=1)
            row["encode"] = ratio_summary(enc["larp"], enc["official"])
            row["decode"] = ratio_summary(dec["larp"], dec["official"])
        row["larp_decoded_max_abs_diff_to_fp32"] = float((dec_ours().float() - fp32_decoded).abs().max())
        row["peak_memory_mb"] = round(_peak_memory_mb(device), 1)
        report["modes"].append(row)
        print(json.dumps({"preset": preset, **row}), flush=True)
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["larp-l", "larp-small"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "bf16-autocast"], choices=sorted(MODES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--official-src", default=os.environ.get("LARP_OFFICIAL_SRC"),
                        help="checkout of the official LARP code: also run it, alternating "
                             "(default: $LARP_OFFICIAL_SRC; absent: larp only)")
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    report = {"benchmark": "tokenizer encode/decode", "machine": machine(device), "torch": torch.__version__,
              "larp": larp.__version__, "command": "python benchmarks/bench_tokenizer.py " + " ".join(
                  sys.argv[1:] if argv is None else argv)}
    started = time.perf_counter()
    if args.official_src:
        official_cls, official_code = load_official(args.official_src)
        report["benchmark"] = "tokenizer encode/decode, larp vs the official code, alternating in one process"
        report["official"] = {"src": os.path.abspath(args.official_src), **official_code.versions()}
        report["notes"] = [
            "seconds: median of `repeats` timed calls after one warm-up per side, larp and official interleaved "
            "(order swapped each repeat); ratio_official_over_larp = official median / larp median; "
            "median_pair_ratio = median of official/larp over adjacent pairs",
            "encode: larp encode(video) -> ids; official encode(video) (deterministic VQ) -> bottleneck_rep; "
            "decode: both from larp's fp32 ids (larp decode(ids), official decode_from_bottleneck(ids))",
            "bf16: weights cast (a copy of the fp32 model); bf16-autocast: fp32 weights under "
            "torch.autocast(cpu, bf16). The official VQ disables autocast only for device_type='cuda', so on a "
            "CPU its codebook similarities run in bf16 under autocast; larp's stay fp32",
        ]
        with tempfile.TemporaryDirectory() as workdir:
            report["results"] = [compare_preset(preset, args.dtypes, args.batch, args.repeats, device,
                                                official_cls, official_code, Path(workdir))
                                 for preset in args.presets]
    else:
        report["results"] = [row for preset in args.presets
                             for row in bench_preset(preset, args.dtypes, args.batch, args.repeats, device)]
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["load_average_at_end"] = os.getloadavg()
    if args.out:
        write_json_atomic(args.out, report)
    return report


if __name__ == "__main__":
    main()

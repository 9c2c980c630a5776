"""AR generator sampling throughput and peak memory, written as JSON.

Workload (DESIGN.md performance targets): "generator preset S (12 layers, width 384), 4 class-conditional
samples x 1024 tokens, CFG 1.25", timed end to end (one call of ``generate`` with the KV cache, no warm-up;
the target is <= 21 s, 5x DESIGN.md's 107 s for the official loop, measured on another day: ``--official-src``
below times both in one run). Plus a grid for each ``--preset``:
batch 1 and 32, CFG 1.25 and off, with the KV cache and without (``use_cache=False`` recomputes the whole
prefix at every token).

Tokens/s is always generated tokens per second over the whole batch (``batch * tokens / seconds``; the
CFG rows are not counted). Decoding without the cache costs O(n^2) in the number of tokens, so the uncached
cases generate only ``--uncached-tokens`` tokens (the model's ``max_seq_len`` is truncated to that, which
keeps every step identical to the first steps of the full model), and each is paired with a cached run of
the same truncated length, so that the cache speed-up is measured on the same work.

Weights are random (seeded) plus N(0, 0.02^2) noise on every parameter: the fresh generator's output head
is zero, which would make every logit equal. bf16 casts the model to bf16, as the official sampler does.
Peak memory: CUDA max allocated; CPU peak RSS of the case's process (every case runs in a fresh
subprocess of this script, peak RSS = VmHWM) and its growth over the RSS just before sampling.
The script also checks that cached and uncached greedy decoding (top_k=1) give identical tokens.

``--compile`` adds a compiled twin of every cached case (``generate(compile=...)``: the decode step under
``torch.compile(fullgraph=True)``, with CUDA graphs on CUDA), whose row also gives the first call's time
(compilation included) and whether its tokens equal the eager ones for the same seed. ``--sync-check`` runs,
on CUDA, a whole decode loop (prefill, then every decode step, eager and compiled) under
``torch.cuda.set_sync_debug_mode("error")``, so that any host sync raises, and counts the syncs of one whole
``generate`` call (1 expected: its input check).

With the official sources (``--official-src DIR``, default ``$LARP_OFFICIAL_SRC``) the script instead runs
larp and the official sampler in one process, alternating, on the same weights: the generator is saved in
the official format and read back by the official ``LARP_AR.from_pretrained`` (every key checked to load
exactly), and the official ``LARP_AR.sample`` (its ``ar/generate.py`` loop: prefill, then one token per
step with its KV cache) is timed beside ``generate`` for each ``--official-cases`` case (``workload``: the
DESIGN.md workload; ``batch32``: 32 samples x 256 tokens, CFG 1.25), fp32, temperature 1, no top-k/p, each
call end to end without warm-up, the order swapped every repeat. Both samplers draw from the same
distribution but with different random streams (the official ``torch.multinomial``, larp's exponential
race), so their sampled ids differ; a greedy (top_k=1) run of each case's model at ``--check-tokens``
tokens checks that the two give the same ids.

    OMP_NUM_THREADS=2 python benchmarks/bench_sampling.py --preset ar-tiny --dtype fp32 bf16 \
        --out benchmarks/results/sampling-cpu.json
    python benchmarks/bench_sampling.py --device cuda --preset llama-abs-LP --dtype bf16 --batches 1 64 \
        --cfg-scales 1.25 --workload off --no-uncached --compile --sync-check \
        --out benchmarks/results/sampling-h200.json
    PYTHONPATH=/tmp/official_deps python benchmarks/bench_sampling.py --official-src /tmp/official_larp \
        --official-cases workload batch32 --out benchmarks/results/sampling-vs-official-cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import alternate, machine, peak_rss_mb, ratio_summary, rss_mb, sync

import larp
from larp.files import write_json_atomic
from larp.models import sampling
from larp.models.generator import GENERATOR_PRESETS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
WORKLOAD = {"preset": "llama-abs-S", "batch": 4, "tokens": 1024, "cfg_scale": 1.25, "use_cache": True}
OFFICIAL_WORKLOAD_S = 107.0  # DESIGN.md: the official loop, 2-core CPU, fp32, another day (--official-src: same run)
TARGET_WORKLOAD_S = 21.0


# ------------------------------------------------------------------------------------------ one case
def build_model(preset: str, tokens: int | None, dtype: str, device: torch.device, seed: int = 0):
    """The preset (max_seq_len truncated to ``tokens``), with seeded noise on every weight, in eval mode."""
    config = GENERATOR_PRESETS[preset]
    if tokens is not None and tokens != config.max_seq_len:
        if tokens > config.max_seq_len:
            raise ValueError(f"{preset} generates {config.max_seq_len} tokens; {tokens} asked for")
        config = dataclasses.replace(config, max_seq_len=tokens)
    torch.manual_seed(seed)
    with torch.device(device):  # built where it runs: the 632M LP preset initialises in seconds on a GPU
        model = larp.LARPGenerator(config)
        with torch.no_grad():  # non-degenerate logits (the fresh output head is all zeros)
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.02)
    return model.eval().to(device=device, dtype=DTYPES[dtype])


def _condition(model, batch: int, device: torch.device) -> torch.Tensor:
    config = model.config
    if config.frame_prediction:
        return torch.randint(0, config.vocab_size, (batch, config.max_seq_len),
                             generator=torch.Generator().manual_seed(1)).to(device)
    return (torch.arange(batch) % config.num_classes).to(device)


def run_case(case: dict) -> dict:
    """Time ``generate`` for one case (in this process); ``case`` as made by :func:`grid`."""
    device = torch.device(case["device"])
    model = build_model(case["preset"], case["tokens"], case["dtype"], device)
    cond = _condition(model, case["batch"], device)

    compile_option = case.get("compile", False)

    def sample(compile=compile_option):
        generator = torch.Generator(device=device).manual_seed(0)
        return model.generate(cond, cfg_scale=case["cfg_scale"], temperature=1.0, top_k=0, top_p=1.0,
                              generator=generator, use_cache=case["use_cache"], compile=compile)

    first_call_s = None
    for index in range(case["warmup"]):
        sync(device)
        start = time.perf_counter()
        sample()
        sync(device)
        if index == 0:
            first_call_s = time.perf_counter() - start
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = rss_mb()
    times = []
    for _ in range(case["repeats"]):
        sync(device)
        start = time.perf_counter()
        out = sample()
        sync(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    n = model.config.max_seq_len
    row = {k: case[k] for k in ("name", "preset", "dtype", "batch", "cfg_scale", "use_cache")}
    row["compile"] = compile_option
    row.update(
        tokens_per_sample=n,
        truncated_from=GENERATOR_PRESETS[case["preset"]].max_seq_len if n != GENERATOR_PRESETS[case["preset"]].max_seq_len else None,
        warmup=case["warmup"],
        repeats=case["repeats"],
        seconds=round(seconds, 4),
        seconds_all=[round(t, 4) for t in times],
        tokens_per_s=round(case["batch"] * n / seconds, 2),
        ms_per_step=round(1000 * seconds / n, 3),
    )
    if device.type == "cuda":
        row["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:
        peak = peak_rss_mb()
        row["peak_rss_mb"] = round(peak, 1)
        row["peak_rss_growth_mb"] = round(max(peak - rss_before, 0.0), 1)
    row["sample_checksum"] = int(out.sum().item())
    if compile_option:
        row["first_call_s"] = None if first_call_s is None else round(first_call_s, 2)  # compilation included
        eager = sample(compile=False)
        row["tokens_equal_eager"] = bool(torch.equal(out, eager))
        row["tokens_share_equal_eager"] = round((out == eager).float().mean().item(), 4)
    return row


def sync_check(preset: str, tokens: int, dtype: str, device: torch.device, compile) -> dict:
    """Host syncs of decoding on CUDA: a whole decode loop (the prefill, then every decode step, eager or
    compiled) under ``torch.cuda.set_sync_debug_mode("error")``, where any sync raises; and the syncs of one
    whole ``generate`` call under "warn" (1 expected: the input check). On CPU the loop runs without the mode."""
    model = build_model(preset, tokens, dtype, device)
    config, batch, scale = model.config, 2, 1.25 if model.config.has_null_class else 1.0
    cond = _condition(model, batch, device)
    options = dict(temperature=1.0, top_k=20, top_p=0.9)
    result = {"preset": preset, "dtype": dtype, "batch": batch, "cfg_scale": scale, "tokens_per_sample": tokens,
              "compile": compile}
    seeded = lambda: torch.Generator(device=device).manual_seed(0)  # noqa: E731
    expected = model.generate(cond, cfg_scale=scale, generator=seeded(), compile=compile, **options)  # compiles
    model.generate(cond, cfg_scale=scale, generator=seeded(), compile=compile, **options)  # CUDA graph recorded
    if device.type == "cuda":
        import warnings

        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.generate(cond, cfg_scale=scale, generator=seeded(), compile=compile, **options)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        result["generate_call_syncs"] = sum("synchroniz" in str(w.message) for w in caught)

    resolved = sampling._resolve_compile(compile, device)
    step = sampling.decode_step if resolved is None else sampling.compiled_decode_step(resolved[1], resolved[0])
    copies = 2 if scale != 1.0 else 1
    rows = torch.cat([cond, torch.full_like(cond, config.null_class)]) if copies == 2 else cond
    generator = seeded()

    def noise() -> torch.Tensor:
        return torch.empty(batch, config.output_size, device=device).exponential_(generator=generator)

    guidance = scale if copies == 2 else None
    debug = contextlib.nullcontext() if device.type != "cuda" else _sync_debug_error()
    with torch.no_grad():
        model.setup_cache(copies * batch, config.seq_len)
        if resolved is not None and resolved[1] in ("reduce-overhead", "max-autotune"):
            for tensor in model.cache_tensors():
                torch._dynamo.mark_static_address(tensor)
        try:
            with debug:
                prefix_len = config.cls_token_num
                logits = sampling.prefill(model, model.embed_condition(rows), torch.arange(prefix_len, device=device))
                out = [sampling._pick(logits, noise(), copies=copies, guidance=guidance, eow_cut=None, **options)]
                position = torch.full((1,), prefix_len, device=device)
                for _ in range(config.max_seq_len - 1):
                    if resolved is not None:
                        torch.compiler.cudagraph_mark_step_begin()
                    token = step(model, out[-1], position, noise(), copies=copies, guidance=guidance, **options)
                    out.append(token.clone() if resolved is not None else token)
                    position += 1
            # reached only when nothing raised; None: not checked (no sync debug mode off CUDA)
            result["decode_loop_sync_free"] = True if device.type == "cuda" else None
        except RuntimeError as error:
            result["decode_loop_sync_free"] = False
            result["error"] = str(error).splitlines()[0]
        finally:
            model.reset_cache()
    if "error" not in result:
        result["loop_tokens_equal_generate"] = bool(torch.equal(torch.stack(out, dim=1), expected))
    if device.type != "cuda":
        result["note"] = "torch.cuda.set_sync_debug_mode needs CUDA: the loop ran without it"
    return result


@contextlib.contextmanager
def _sync_debug_error():
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def check_cache_equivalence(preset: str, tokens: int, dtype: str, device: torch.device) -> dict:
    """Cached vs uncached decoding on a small case: greedy (top_k=1) and seeded sampling, CFG on and off."""
    model = build_model(preset, tokens, dtype, device)
    cond = _condition(model, 2, device)
    result = {"preset": preset, "dtype": dtype, "batch": 2, "tokens_per_sample": model.config.max_seq_len}
    scales = [1.0, 1.25] if model.config.has_null_class else [1.0]
    for scale in scales:
        for mode, options in (("greedy", {"top_k": 1}), ("sampled", {"temperature": 1.0})):
            outs = []
            for use_cache in (True, False):
                generator = torch.Generator(device=device).manual_seed(0)
                outs.append(model.generate(cond, cfg_scale=scale, generator=generator, use_cache=use_cache, **options))
            result[f"{mode}_cfg{scale}_identical"] = bool(torch.equal(outs[0], outs[1]))
            result[f"{mode}_cfg{scale}_share_equal"] = round((outs[0] == outs[1]).float().mean().item(), 4)
    return result


# ------------------------------------------------------------------------------------------ vs the official code
TOOLS = Path(__file__).resolve().parents[1] / "tools"
OFFICIAL_CASES = {
    "workload": {"batch": 4, "tokens": 1024, "cfg_scale": 1.25},
    "batch32": {"batch": 32, "tokens": 256, "cfg_scale": 1.25},
}


def load_official(src: str | os.PathLike):
    """The official ``LARP_AR`` class (and the helper module) from a checkout of hywang66/LARP."""
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    import official_code

    _, official_ar, _ = official_code.import_official(src)
    return official_ar, official_code


def official_sample(model, cond: torch.Tensor, *, cfg_scale: float, top_k: int = 0) -> torch.Tensor:
    """The official sampler (``LARP_AR.sample``), its KV caches dropped afterwards (it leaves them attached)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # its per-step torch.backends.cuda.sdp_kernel context
        ids = model.sample(cond, cfg_scale=cfg_scale, temperature=1.0, top_k=top_k, top_p=1.0)
    model.reset_caches()
    return ids.long()


def compare_with_official(preset: str, name: str, case: dict, repeats: int, check_tokens: int, device: torch.device,
                          official_ar, official_code, workdir: Path) -> dict:
    """larp's ``generate`` and the official ``sample`` on the same weights, alternating, end to end."""
    ours = build_model(preset, case["tokens"], "fp32", device)
    theirs = official_code.official_copy(ours, official_ar, workdir / name).to(device)
    cond = _condition(ours, case["batch"], device)
    scale = case["cfg_scale"]

    def run_ours():
        generator = torch.Generator(device=device).manual_seed(0)
        return ours.generate(cond, cfg_scale=scale, temperature=1.0, top_k=0, top_p=1.0, generator=generator)

    def run_theirs():
        torch.manual_seed(0)
        return official_sample(theirs, cond, cfg_scale=scale)

    usage = {side: [] for side in ("larp", "official")}

    def with_usage(side, fn):  # CPU time in user and kernel mode, and page faults, of each call
        def call():
            before = resource.getrusage(resource.RUSAGE_SELF)
            fn()
            after = resource.getrusage(resource.RUSAGE_SELF)
            usage[side].append((after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
                                after.ru_minflt - before.ru_minflt))
        return call

    times = alternate({"larp": with_usage("larp", run_ours), "official": with_usage("official", run_theirs)},
                      device, repeats, warmup=0)
    row = {"case": name, "preset": preset, **case, "dtype": "fp32", "repeats": repeats,
           **ratio_summary(times["larp"], times["official"])}
    for side, calls in usage.items():
        row[f"{side}_cpu_user_s"] = [round(u, 2) for u, _, _ in calls]
        row[f"{side}_cpu_sys_s"] = [round(k, 2) for _, k, _ in calls]
        row[f"{side}_minor_page_faults"] = [f for _, _, f in calls]
    generated = case["batch"] * case["tokens"]
    row["larp_tokens_per_s"] = round(generated / row["larp_s"], 1)
    row["official_tokens_per_s"] = round(generated / row["official_s"], 1)

    # Greedy ids of both, on the same model truncated to check_tokens (the same first positions)
    short = min(check_tokens, case["tokens"])
    ours_short = build_model(preset, short, "fp32", device)
    theirs_short = official_code.official_copy(ours_short, official_ar, workdir / f"{name}-greedy").to(device)
    cond_short = cond[:2]
    greedy_ours = ours_short.generate(cond_short, cfg_scale=scale, top_k=1)
    greedy_theirs = official_sample(theirs_short, cond_short, cfg_scale=scale, top_k=1)
    row["greedy_check"] = {"batch": 2, "tokens": short, "cfg_scale": scale,
                           "ids_equal": bool(torch.equal(greedy_ours, greedy_theirs)),
                           "share_equal": round((greedy_ours == greedy_theirs).float().mean().item(), 4)}
    return row


def official_report(args, device: torch.device) -> dict:
    """The --official-src run: every --official-cases case, written to --out after each."""
    official_ar, official_code = load_official(args.official_src)
    started = time.perf_counter()
    report = {
        "benchmark": "generator sampling, larp vs the official sampler, alternating in one process",
        "machine": machine(device),
        "torch": torch.__version__,
        "larp": larp.__version__,
        "official": {"src": os.path.abspath(args.official_src), **official_code.versions()},
        "command": "python benchmarks/bench_sampling.py " + " ".join(sys.argv[1:]),
        "notes": [
            "weights: larp's preset (max_seq_len truncated to the case's tokens), seeded, + N(0, 0.02^2) on every "
            "parameter; saved in the official format and loaded by the official LARP_AR.from_pretrained (every "
            "key exact)",
            "larp: LARPGenerator.generate (KV cache, eager); official: LARP_AR.sample (ar/generate.py); fp32, "
            "temperature 1, top_k 0, top_p 1, class-conditional with CFG (the batch doubled with the null class); "
            "each call end to end, no warm-up, larp and official interleaved with the order swapped each repeat",
            "tokens_per_s = batch * tokens / median seconds (CFG copies not counted)",
            "greedy_check: top_k=1 ids of both samplers on the same model truncated to `tokens`, first 2 conditions",
            "*_cpu_user_s / *_cpu_sys_s / *_minor_page_faults: getrusage deltas of each timed call (this process, "
            "all threads), in call order",
        ],
        "results": [],
    }
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.official_cases:
            row = compare_with_official(WORKLOAD["preset"], name, OFFICIAL_CASES[name], args.official_repeats,
                                        args.check_tokens, device, official_ar, official_code, Path(workdir))
            report["results"].append(row)
            print(json.dumps(row), flush=True)
            report["total_wall_s"] = round(time.perf_counter() - started, 1)
            report["load_average_at_end"] = os.getloadavg()
            if args.out:
                write_json_atomic(args.out, report)
    return report


# ------------------------------------------------------------------------------------------ driver
def grid(args) -> list[dict]:
    cases = []
    base = {"device": args.device}
    if args.workload != "off":
        for dtype in args.dtype:
            cases.append({**base, **WORKLOAD, "name": "design-workload", "dtype": dtype, "warmup": 0, "repeats": 1})
    if args.workload == "only":
        return cases
    for preset in args.preset:
        config = GENERATOR_PRESETS[preset]
        full = config.max_seq_len
        short = min(args.uncached_tokens, full)
        scales = [s for s in args.cfg_scales if s == 1.0 or config.has_null_class]
        for dtype in args.dtype:
            for batch in args.batches:
                for scale in scales:
                    common = {**base, "preset": preset, "dtype": dtype, "batch": batch, "cfg_scale": scale,
                              "warmup": args.warmup, "repeats": args.repeats}
                    if not args.skip_full_cached and (short != full or args.no_uncached):
                        cases.append({**common, "name": "cached-full", "tokens": full, "use_cache": True})
                    if not args.no_uncached:
                        cases.append({**common, "name": "cached", "tokens": short, "use_cache": True})
                        cases.append({**common, "name": "uncached", "tokens": short, "use_cache": False})
    if args.compile:  # a compiled twin of every cached case, warmed up at least once (the compilation)
        twins = [{**case, "name": case["name"] + "-compiled", "compile": _compile_value(args.compile),
                  "warmup": max(case["warmup"], 1)} for case in cases if case["use_cache"]]
        cases += twins
    return cases


def _compile_value(text: str):
    """--compile's value -> generate's compile option: "true" -> True, else a mode or backend name."""
    return True if text == "true" else text


def run_in_subprocess(case: dict) -> dict:
    command = [sys.executable, __file__, "--case", json.dumps(case)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {**case, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def speedups(rows: list[dict]) -> list[dict]:
    """Cache speed-up of each (preset, dtype, batch, cfg) at the same truncated length."""
    out = []
    for row in rows:
        if row.get("name") != "uncached" or "seconds" not in row:
            continue
        key = ("preset", "dtype", "batch", "cfg_scale", "tokens_per_sample")
        match = [r for r in rows if r.get("name") == "cached" and all(r.get(k) == row.get(k) for k in key)]
        if match:
            out.append({**{k: row[k] for k in key}, "cache_speedup": round(row["seconds"] / match[0]["seconds"], 2)})
    return out


def compiled_vs_eager(rows: list[dict]) -> list[dict]:
    """Speed-up of each compiled case over its eager twin, and whether their tokens agree."""
    out = []
    for row in rows:
        if not row.get("compile") or "seconds" not in row:
            continue
        key = ("preset", "dtype", "batch", "cfg_scale", "tokens_per_sample")
        twin = [r for r in rows if not r.get("compile") and r.get("use_cache") and "seconds" in r
                and all(r.get(k) == row.get(k) for k in key)]
        if twin:
            out.append({**{k: row[k] for k in key}, "eager_s": twin[0]["seconds"], "compiled_s": row["seconds"],
                        "speedup": round(twin[0]["seconds"] / row["seconds"], 2),
                        "first_call_s": row.get("first_call_s"), "tokens_equal_eager": row.get("tokens_equal_eager")})
    return out


def build_report(args, device, checks: list, rows: list, started: float, sync_checks: list | None = None) -> dict:
    """The JSON written to --out: rewritten after every case, so a stopped run keeps what it measured."""
    workload = [r for r in rows if r.get("name") == "design-workload" and "seconds" in r]
    return {
        "benchmark": "generator sampling",
        "machine": machine(device),
        "torch": torch.__version__,
        "larp": larp.__version__,
        "device": args.device,
        "notes": [
            "tokens_per_s = batch * tokens_per_sample / seconds (CFG rows not counted), median of `repeats` "
            "calls of generate() after `warmup` calls, each case in a fresh subprocess",
            f"uncached cases (use_cache=False) and their 'cached' pairs generate {args.uncached_tokens} tokens per "
            "sample (max_seq_len truncated; 'truncated_from' gives the preset's length); 'cached-full' is the "
            "preset's full length",
            "design-workload: llama-abs-S, 4 samples x 1024 tokens, CFG 1.25, KV cache, temperature 1, no top-k/p, "
            "one end-to-end call without warm-up",
            "weights random + N(0, 0.02^2) noise (non-degenerate logits)",
            "peak_rss_mb: the case process' peak RSS; peak_rss_growth_mb: its growth over the RSS just before the "
            "timed calls (after model build and warm-up)",
        ],
        "design_workload": [
            {"dtype": r["dtype"], "seconds": r["seconds"], "official_s": OFFICIAL_WORKLOAD_S, "target_s": TARGET_WORKLOAD_S,
             "speedup_vs_official": round(OFFICIAL_WORKLOAD_S / r["seconds"], 2), "meets_target": r["seconds"] <= TARGET_WORKLOAD_S}
            for r in workload
        ],
        "cache_equivalence": checks,
        "sync_checks": sync_checks or [],
        "compiled_vs_eager": compiled_vs_eager(rows),
        "cache_speedups": speedups(rows),
        "results": rows,
        "total_wall_s": round(time.perf_counter() - started, 1),
        "complete": len(rows) == (0 if args.checks_only else len(grid(args))),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["llama-abs-S"], choices=sorted(GENERATOR_PRESETS),
                        help="presets of the batch/CFG/cache grid")
    parser.add_argument("--dtype", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--cfg-scales", nargs="+", type=float, default=[1.0, 1.25])
    parser.add_argument("--uncached-tokens", type=int, default=128,
                        help="tokens per sample of the uncached cases and their cached pairs (max_seq_len truncated)")
    parser.add_argument("--skip-full-cached", action="store_true",
                        help="no cached run at the preset's full length when it differs from --uncached-tokens")
    parser.add_argument("--workload", choices=["on", "off", "only"], default="on",
                        help="the DESIGN.md workload (llama-abs-S, 4 x 1024 tokens, CFG 1.25, cached, end to end)")
    parser.add_argument("--check-tokens", type=int, default=32, help="length of the cached/uncached equivalence check")
    parser.add_argument("--no-uncached", action="store_true",
                        help="only cached cases, at the preset's full length (no use_cache=False comparison)")
    parser.add_argument("--compile", nargs="?", const="true", default=None, metavar="MODE",
                        help="also time every cached case with the compiled decode step (generate(compile=...)): "
                             "no value = True (inductor; CUDA graphs on CUDA), or an inductor mode "
                             "('reduce-overhead', ...) or 'aot_eager'")
    parser.add_argument("--checks-only", action="store_true",
                        help="run the equivalence (and --sync-check) checks only, no timed grid")
    parser.add_argument("--sync-check", action="store_true",
                        help="run the decode loop under torch.cuda.set_sync_debug_mode('error') (CUDA), eager and "
                             "with --compile's option, on each --preset at --check-tokens tokens")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON file to write")
    parser.add_argument("--official-src", default=os.environ.get("LARP_OFFICIAL_SRC"),
                        help="checkout of the official LARP code: run larp and the official sampler alternately "
                             "instead of the grid (default: $LARP_OFFICIAL_SRC; absent: larp only)")
    parser.add_argument("--official-cases", nargs="+", default=["workload"], choices=sorted(OFFICIAL_CASES),
                        help="cases of the --official-src run (workload: 4 x 1024, CFG 1.25; "
                             "batch32: 32 x 256, CFG 1.25)")
    parser.add_argument("--official-repeats", type=int, default=2,
                        help="timed calls per side in the --official-src run")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args(argv)
    if args.case is not None:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    if args.official_src:
        official_report(args, torch.device(args.device))
        return

    device = torch.device(args.device)
    started = time.perf_counter()
    checks = []
    for preset in dict.fromkeys(args.preset + ([WORKLOAD["preset"]] if args.workload != "off" else [])):
        tokens = min(args.check_tokens, GENERATOR_PRESETS[preset].max_seq_len)
        checks.append(check_cache_equivalence(preset, tokens, "fp32", device))
        print(json.dumps(checks[-1]), flush=True)
    sync_checks = []
    if args.sync_check:
        for preset in args.preset:
            tokens = min(args.check_tokens, GENERATOR_PRESETS[preset].max_seq_len)
            for compile in [False] + ([_compile_value(args.compile)] if args.compile else []):
                sync_checks.append(sync_check(preset, tokens, args.dtype[0], device, compile))
                print(json.dumps(sync_checks[-1]), flush=True)
    rows = []
    for case in [] if args.checks_only else grid(args):
        rows.append(run_in_subprocess(case))
        print(json.dumps(rows[-1]), flush=True)
        if args.out:
            write_json_atomic(args.out, build_report(args, device, checks, rows, started, sync_checks))
    report = build_report(args, device, checks, rows, started, sync_checks)
    print(json.dumps({"design_workload": report["design_workload"], "cache_speedups": report["cache_speedups"],
                      "compiled_vs_eager": report["compiled_vs_eager"]}, indent=1))
    if args.out:
        write_json_atomic(args.out, report)


if __name__ == "__main__":
    main()

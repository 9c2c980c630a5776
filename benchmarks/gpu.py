"""Every GPU measurement of the project in one go (issue 16): about 8-9 minutes on an H200.

Runs the benchmark scripts one after another, each as a subprocess with its own time limit (one stage that
overruns or fails is recorded, and the next still runs), writes each script's JSON to
``--out-dir/<name>-<tag>.json`` and a summary of all stages to ``--out-dir/gpu-summary-<tag>.json``:

1. ``tests``: the CUDA-only tests (``pytest -m gpu``): cached decoding never syncs, compiled (CUDA-graph)
   sampling gives the eager tokens, a whole decode loop runs under ``set_sync_debug_mode("error")``;
2. ``sampling-checks``: llama-abs-S, bf16: cached = uncached decoding, and the decode loop (eager and compiled)
   under ``torch.cuda.set_sync_debug_mode("error")``;
3. ``sampling``: llama-abs-LP (632M), bf16, batch 1 and 64, 1024 tokens, CFG 1.25, eager and compiled
   (``generate(compile=True)``: inductor + CUDA graphs): tokens/s, peak memory, compiled tokens = eager;
4. ``tokenizer-b1`` / ``tokenizer-b64``: larp-l encode/decode clips/s at fp32, bf16 and bf16 autocast, the
   share of bf16 ids equal to fp32, peak memory;
5. ``training``: train steps of the LARP-L tokenizer recipe and of the LP generator recipe: step time, peak
   memory (and, for the generator, model-FLOPs utilisation in the summary);
6. ``tokenize-dataset``: whole-video tokenization of a generated folder with larp-l (windows/s).

``--dry`` runs the same sequence on the CPU with tiny presets (ar-tiny, larp-tiny, the tiny recipes) in about
a minute on a quiet machine, to check the script before a GPU session.

    python benchmarks/gpu.py                      # on the GPU machine: benchmarks/results/*-h200.json
    python benchmarks/gpu.py --dry --out-dir /tmp/gpu-dry
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
H200_BF16_PEAK_TFLOPS = 989.4  # dense bf16, H200 SXM (the same tensor cores as H100 SXM)
LP = {"n_layer": 30, "dim": 1280, "max_seq_len": 1024}  # llama-abs-LP (the generator-LP training case)


def stages(dry: bool, out: Path, tag: str) -> list[dict]:
    """(name, command, time limit in s, JSON written) of every stage, in the order they run."""
    py = sys.executable
    path = lambda name: str(out / f"{name}-{tag}.json")  # noqa: E731
    if dry:
        device, gen, gen_check, tokenizer = "cpu", "ar-tiny", "ar-tiny", "larp-tiny"
        train_cases = ["tokenizer-tiny", "generator-tiny"]
        batches, dtype, compile_ = ["1", "4"], "fp32", "true"
        dataset = ["--quick"]
        tok_repeats, train_steps = "1", ["--warmup", "1", "--steps", "2"]
    else:
        device, gen, gen_check, tokenizer = "cuda", "llama-abs-LP", "llama-abs-S", "larp-l"
        train_cases = ["tokenizer-larp-l", "generator-LP"]
        batches, dtype, compile_ = ["1", "64"], "bf16", "true"
        dataset = ["--preset", "larp-l", "--videos", "24", "--batch-size", "32", "--dtype", "bf16"]
        tok_repeats, train_steps = "3", ["--warmup", "2", "--steps", "5"]
    sampling = [py, str(HERE / "bench_sampling.py"), "--device", device, "--dtype", dtype, "--workload", "off"]
    return [
        {"name": "tests", "limit": 120, "json": path("tests"),
         "command": [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]},
        {"name": "sampling-checks", "limit": 75, "json": path("sampling-checks"),
         "command": sampling + ["--preset", gen_check, "--checks-only", "--sync-check", "--compile", compile_,
                                "--check-tokens", "64", "--out", path("sampling-checks")]},
        {"name": "sampling", "limit": 270, "json": path("sampling"),
         "command": sampling + ["--preset", gen, "--batches", *batches, "--cfg-scales", "1.25", "--no-uncached",
                                "--compile", compile_, "--check-tokens", "16", "--warmup", "1", "--repeats", "2",
                                "--out", path("sampling")]},
        {"name": "tokenizer-b1", "limit": 45, "json": path("tokenizer-b1"),
         "command": [py, str(HERE / "bench_tokenizer.py"), "--device", device, "--presets", tokenizer,
                     "--batch", "1", "--dtypes", "fp32", "bf16", "bf16-autocast", "--repeats", tok_repeats,
                     "--out", path("tokenizer-b1")]},
        {"name": "tokenizer-b64", "limit": 60, "json": path("tokenizer-b64"),
         "command": [py, str(HERE / "bench_tokenizer.py"), "--device", device, "--presets", tokenizer,
                     "--batch", "4" if dry else "64", "--dtypes", "fp32", "bf16", "bf16-autocast",
                     "--repeats", tok_repeats, "--out", path("tokenizer-b64")]},
        {"name": "training", "limit": 100, "json": path("training"),
         "command": [py, str(HERE / "bench_training.py"), "--device", device, "--cases", *train_cases, *train_steps,
                     "--out", path("training")]},
        {"name": "tokenize-dataset", "limit": 45, "json": path("tokenize-dataset"),
         "command": [py, str(HERE / "bench_tokenize_dataset.py"), "--device", device, *dataset,
                     "--out", path("tokenize-dataset")]},
    ]


def run_stage(stage: dict) -> dict:
    started = time.perf_counter()
    record = {"name": stage["name"], "command": " ".join(stage["command"]), "limit_s": stage["limit"]}
    try:
        python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # tests.conftest
        done = subprocess.run(stage["command"], cwd=ROOT, capture_output=True, text=True, timeout=stage["limit"],
                              env={**os.environ, "PYTHONPATH": python_path})
        record["returncode"] = done.returncode
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        record["returncode"] = None
        record["timed_out"] = True
        output = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (expired.stdout, expired.stderr))
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["ok"] = record["returncode"] == 0
    record["output_tail"] = output.strip().splitlines()[-8:]
    if stage["name"] == "tests":
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)", output)}
        Path(stage["json"]).write_text(json.dumps({"benchmark": "CUDA-only tests (pytest -m gpu)", **counts,
                                                   "returncode": record["returncode"], "tail": record["output_tail"]},
                                                  indent=2) + "\n")
        record["tests"] = counts
    record["json"] = stage["json"] if Path(stage["json"]).is_file() else None
    return record


def generator_mfu(row: dict, peak_tflops: float) -> dict | None:
    """Model-FLOPs utilisation of an LP generator training step: 6 N T per sequence (N parameters, T positions)
    plus causal-free attention 12 L T^2 d (the usual PaLM accounting), over the step time and the bf16 peak."""
    if "step_s" not in row or "params_m" not in row:
        return None
    positions = LP["max_seq_len"]  # 1 class + 1023 token inputs
    flops = row["batch"] * (6 * row["params_m"] * 1e6 * positions + 12 * LP["n_layer"] * positions**2 * LP["dim"])
    achieved = flops / row["step_s"] / 1e12
    return {"case": row["case"], "model_tflops_per_step": round(flops / 1e12, 2),
            "achieved_tflops": round(achieved, 1), "mfu": round(achieved / peak_tflops, 4), "peak_tflops": peak_tflops}


def summary(records: list[dict], dry: bool) -> dict:
    """The headline figures of every stage that wrote its JSON."""
    figures: dict = {}

    def load(name):
        record = next((r for r in records if r["name"] == name and r.get("json")), None)
        return json.loads(Path(record["json"]).read_text()) if record else None

    if (data := load("sampling")) is not None:
        figures["sampling"] = [{k: r.get(k) for k in ("name", "preset", "dtype", "batch", "cfg_scale", "compile",
                                                     "tokens_per_s", "ms_per_step", "peak_memory_mb", "peak_rss_mb",
                                                     "first_call_s", "tokens_equal_eager", "error")}
                               for r in data["results"]]
        figures["compiled_vs_eager"] = data["compiled_vs_eager"]
    if (data := load("sampling-checks")) is not None:
        figures["sync_checks"] = data["sync_checks"]
        figures["cache_equivalence"] = data["cache_equivalence"]
    for name in ("tokenizer-b1", "tokenizer-b64"):
        if (data := load(name)) is not None:
            figures[name] = data["results"]
    if (data := load("training")) is not None:
        figures["training"] = data["results"]
        if not dry:
            figures["generator_mfu"] = [m for r in data["results"] if r.get("case") == "generator-LP"
                                        and (m := generator_mfu(r, H200_BF16_PEAK_TFLOPS))]
    if (data := load("tokenize-dataset")) is not None:
        keys = ("preset", "videos", "windows", "seconds", "windows_per_s", "model_s", "decode_s")
        figures["tokenize_dataset"] = [{k: c.get(k) for k in keys} for c in data["cases"]]
    if (data := load("tests")) is not None:
        counted = ("passed", "failed", "skipped", "deselected", "error")
        figures["tests"] = {k: v for k, v in data.items() if k in counted}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="the same sequence on the CPU with tiny presets (~1 min)")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results", help="where the JSON files go")
    parser.add_argument("--tag", default=None, help="file name suffix (default: h200, or dry-cpu with --dry)")
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds for all stages together (default 540); a stage gets at most what is left, "
                             "and the stages that find less than 15 s are skipped (recorded as such)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these stages (names as in the summary)")
    args = parser.parse_args(argv)
    if not args.dry:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --dry for the CPU rehearsal")
    tag = args.tag or ("dry-cpu" if args.dry else "h200")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plan = stages(args.dry, args.out_dir.resolve(), tag)
    if args.only:
        unknown = sorted(set(args.only) - {s["name"] for s in plan})
        if unknown:
            parser.error(f"--only: unknown stage(s) {unknown}; stages: {[s['name'] for s in plan]}")
        plan = [s for s in plan if s["name"] in args.only]
    started = time.perf_counter()
    records = []
    for stage in plan:
        left = args.budget - (time.perf_counter() - started)
        if left < 15:
            records.append({"name": stage["name"], "ok": False, "skipped": f"--budget {args.budget} s spent",
                            "returncode": None, "seconds": 0.0, "json": None, "output_tail": []})
            print(f"[gpu.py] {stage['name']}: skipped (--budget spent)", flush=True)
            continue
        stage = {**stage, "limit": int(min(stage["limit"], left))}
        print(f"[gpu.py] {stage['name']} (limit {stage['limit']} s) ...", flush=True)
        records.append(run_stage(stage))
        r = records[-1]
        state = "ok" if r["ok"] else ("TIMED OUT" if r.get("timed_out") else f"FAILED (exit {r['returncode']})")
        print(f"[gpu.py] {stage['name']}: {state} in {r['seconds']} s -> {r['json']}", flush=True)
        if not r["ok"]:
            print("\n".join("    " + line for line in r["output_tail"]), flush=True)
    report = {"benchmark": "gpu.py (issue 16)", "dry": args.dry, "tag": tag, "budget_s": args.budget,
              "total_s": round(time.perf_counter() - started, 1), "stages": records,
              "figures": summary(records, args.dry)}
    target = args.out_dir / f"gpu-summary-{tag}.json"
    target.write_text(json.dumps(report, indent=2) + "\n")
    print(f"[gpu.py] {sum(r['ok'] for r in records)}/{len(records)} stages ok in {report['total_s']} s; wrote {target}")
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())

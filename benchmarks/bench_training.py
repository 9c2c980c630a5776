"""Training-step time and peak memory (forward + backward + optimizer step), written as JSON.

Cases:
  tokenizer-tiny   the tokenizer of the tiny-cpu recipe with its prior (larp-tiny, gptc prior), batch 32;
  generator-tiny   the generator of the ar-tiny-cpu recipe (dim 256, 4 layers, 32 tokens, vocab 256), batch 64;
  tokenizer-larp-l the larp-l-long recipe (larp-l + gptc-s prior + discriminator, bf16), batch 16   [CUDA only]
  generator-LP     llama-abs-LP on UCF tokens (1024 tokens, vocab 8192, 101 classes), bf16 autocast, batch 8  [CUDA only]

Each step is the project's own ``train_step`` (larp.training.tokenizer_trainer / generator_trainer), timed
after ``--warmup`` steps, median of ``--steps``. Data loading is excluded: a few batches are made up front
(synthetic clips from the recipe's data section; random token rows for the generators) and cycled.
The tokenizer steps are taken in the phase where everything is on (past the continuous warm-up, the prior
delay and its ramp: quantization, prior loss, and the GAN when the recipe has one), and away from the
dead-code restart and codebook-from-data steps. Peak memory: CUDA max allocated; CPU the peak RSS of the
case's process (each case runs in a fresh subprocess of this script) and its growth over the RSS before
the first step.

    OMP_NUM_THREADS=2 python benchmarks/bench_training.py --out benchmarks/results/training-cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import machine, peak_rss_mb, rss_mb, sync

import larp
from larp.precision import needs_grad_scaler, resolve_precision
from larp.training import distributed as dist
from larp.training.loop import reduce_metrics
from larp.training.recipe import GeneratorTrainConfig, TokenizerTrainConfig, load_recipe

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "tokenizer-tiny": {"kind": "tokenizer", "recipe": "src/larp/recipes/tiny-cpu.yaml", "overrides": ["batch_size=32"], "cuda_only": False},
    "generator-tiny": {"kind": "generator", "recipe": "src/larp/recipes/ar-tiny-cpu.yaml", "overrides": ["batch_size=64"], "cuda_only": False},
    "tokenizer-larp-l": {"kind": "tokenizer", "recipe": "src/larp/recipes/larp-l-long.yaml", "overrides": ["data.num_workers=0"], "cuda_only": True},
    "generator-LP": {"kind": "generator", "recipe": "src/larp/recipes/ucf-ar.yaml", "overrides": ["data.num_workers=0"], "cuda_only": True},
}


def _tokenizer_setup(recipe: TokenizerTrainConfig, info: dist.DistInfo, notes: list[str]):
    from larp.training import tokenizer_trainer as tt

    try:
        task = tt.TokenizerTask(recipe, info)
    except FileNotFoundError as error:  # no LPIPS weights here: measure without the perceptual loss
        notes.append(f"perceptual loss off (LPIPS weights not found: {str(error).splitlines()[0]})")
        recipe = dataclasses.replace(recipe, loss=dataclasses.replace(recipe.loss, perceptual_weight=0.0))
        task = tt.TokenizerTask(recipe, info)
    batches = [next(task.stream) for _ in range(2)]
    task.stream = itertools.cycle(batches)
    # every loss term on: past the continuous warm-up and the prior delay + ramp, and the GAN start
    first = max(recipe.codebook.continuous_warmup + 1, recipe.prior.weight_delay + recipe.prior.weight_ramp,
                recipe.loss.gan_start) + 1
    every = recipe.codebook.restart_every if recipe.codebook.dead_code_restart else 0
    if every:  # the steps to come must not hit a dead-code restart
        first = (first // every) * every + 1
    steps = itertools.count(first + 1)  # the step after `first`, as the bench always measured
    params = sum(p.numel() for p in task.core.parameters())
    if task.discriminator is not None:
        params += sum(p.numel() for p in dist.unwrap(task.discriminator).parameters())
    frames = recipe.model
    return (lambda: reduce_metrics(task.train_step(next(steps)), info)), recipe.batch_size, params, {
        "model": f"tokenizer {frames.frame_num}x{frames.input_size}x{frames.input_size}, {frames.num_tokens} tokens",
        "precision": recipe.precision, "prior": recipe.prior.enabled, "gan": recipe.loss.gan.disc_weight > 0,
        "perceptual": recipe.loss.perceptual_weight > 0, "start_step": first,
    }


def _generator_setup(recipe: GeneratorTrainConfig, info: dist.DistInfo, notes: list[str]):
    from larp.models.generator import LARPGenerator
    from larp.training import generator_trainer as gt

    torch.manual_seed(recipe.seed)
    generator = LARPGenerator(recipe.model).to(info.device).train()
    optimizer = gt.make_optimizer(generator, recipe, info.device)
    model = torch.compile(generator) if recipe.compile else generator
    g = recipe.model
    rng = torch.Generator().manual_seed(0)
    batches = [{"tokens": torch.randint(0, g.vocab_size, (recipe.batch_size, g.max_seq_len), generator=rng),
                "label": torch.randint(0, g.num_classes, (recipe.batch_size,), generator=rng)} for _ in range(2)]
    scaler = torch.amp.GradScaler(info.device.type, enabled=needs_grad_scaler(recipe.precision, info.device))
    task = gt.GeneratorTask(recipe, info, model=model, optimizer=optimizer, scaler=scaler, stream=itertools.cycle(batches))
    steps = itertools.count(1)
    notes.append("token rows random (the cached-token path of train_step; no tokenizer in the loop)")
    params = sum(p.numel() for p in generator.parameters())
    return (lambda: reduce_metrics(task.train_step(next(steps)), info)), recipe.batch_size, params, {
        "model": f"generator dim {g.dim}, {g.n_layer} layers, {g.max_seq_len} tokens, vocab {g.vocab_size}",
        "precision": resolve_precision(recipe.precision, info.device),
    }


def run_case(name: str, device: str, warmup: int, steps: int) -> dict:
    spec = CASES[name]
    info = dist.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device(device))
    notes: list[str] = []
    if spec["kind"] == "tokenizer":
        recipe = load_recipe(ROOT / spec["recipe"], spec["overrides"], TokenizerTrainConfig)
        step, batch, params, info_row = _tokenizer_setup(recipe, info, notes)
    else:
        recipe = load_recipe(ROOT / spec["recipe"], spec["overrides"], GeneratorTrainConfig)
        step, batch, params, info_row = _generator_setup(recipe, info, notes)
    dev = info.device
    rss_before = rss_mb()
    for _ in range(warmup):
        step()
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps):
        sync(dev)
        start = time.perf_counter()
        metrics = step()  # returns floats: one host sync per step (reduce_metrics), as a logged step
        sync(dev)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    row = {"case": name, "recipe": spec["recipe"], "batch": batch, "params_m": round(params / 1e6, 2), **info_row,
           "warmup_steps": warmup, "timed_steps": steps, "step_s": round(seconds, 4),
           "step_s_all": [round(t, 4) for t in times], "steps_per_s": round(1 / seconds, 3),
           "samples_per_s": round(batch / seconds, 2), "loss": round(metrics["loss"], 4)}
    if dev.type == "cuda":
        row["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    else:
        peak = peak_rss_mb()
        row["peak_rss_mb"] = round(peak, 1)
        row["peak_rss_growth_mb"] = round(max(peak - rss_before, 0.0), 1)
    if notes:
        row["notes"] = notes
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    parser.add_argument("--out", default=None, help="JSON file to write")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(run_case(args.case, args.device, args.warmup, args.steps)))
        return

    device = torch.device(args.device)
    rows = []
    for name in args.cases:
        if CASES[name]["cuda_only"] and device.type != "cuda":
            rows.append({"case": name, "recipe": CASES[name]["recipe"], "skipped": "CUDA only (run with --device cuda)"})
        else:
            command = [sys.executable, __file__, "--case", name, "--device", args.device,
                       "--warmup", str(args.warmup), "--steps", str(args.steps)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode == 0:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            else:
                tail = done.stderr.strip().splitlines()
                rows.append({"case": name, "recipe": CASES[name]["recipe"], "error": tail[-1] if tail else f"exit {done.returncode}"})
        print(json.dumps(rows[-1]), flush=True)
    report = {
        "benchmark": "training step",
        "machine": machine(device),
        "torch": torch.__version__,
        "larp": larp.__version__,
        "device": args.device,
        "notes": [
            "step = the project's train_step (forward + backward + optimizer); median of timed_steps after "
            "warmup_steps; data loading excluded (batches made up front and cycled); each case in a fresh subprocess",
            "samples_per_s: clips/s (tokenizers) or token sequences/s (generators)",
        ],
        "results": rows,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

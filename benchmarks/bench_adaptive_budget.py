"""Adaptive token budgets against fixed lengths on one nested-dropout tokenizer, written as JSON.

Clips: held-out synthetic videos (``SyntheticVideos(SyntheticConfig(num_videos=..., seed=1))``, a seed the
demo does not train on). For every clip the PSNR of every candidate prefix is measured once
(:func:`larp.budget.measure_quality`); then

* fixed lengths: the mean PSNR at each candidate (every clip at the same length);
* quality targets: :func:`larp.budget.choose_lengths` (the batched bisection, decoding) at a few target PSNRs:
  the mean tokens used and the mean PSNR reached, against the smallest fixed length whose mean PSNR reaches the
  same target, and against the smallest fixed length whose mean PSNR reaches the adaptive mean PSNR;
* mean budgets: :func:`larp.budget.allocate_mean_tokens` (exact DP and greedy) at a few means, against the
  fixed length equal to that mean;
* mean-quality targets: :func:`larp.budget.lengths_for_mean_target` (the fewest tokens whose mean PSNR meets
  the target, on the hull path) against the smallest fixed length whose mean PSNR meets it.

    python benchmarks/bench_adaptive_budget.py --tokenizer DEMO/models/tokenizer \\
        --out benchmarks/results/adaptive-budget-cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import machine

import larp
from larp.budget import (
    allocate_mean_tokens,
    candidate_lengths,
    choose_lengths,
    lengths_for_mean_target,
    lengths_for_target,
    measure_quality,
)
from larp.data.synthetic import SyntheticConfig, SyntheticVideos
from larp.evaluation.image_metrics import ssim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--targets", type=float, nargs="+", default=[14.5, 15.0, 15.5, 16.0, 16.5, 17.0])
    parser.add_argument("--means", type=float, nargs="+", default=[2, 4, 6, 8, 12, 16, 20, 24, 28, 32])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    tokenizer = larp.LARPTokenizer.from_pretrained(args.tokenizer).eval()
    data = SyntheticVideos(SyntheticConfig(num_videos=args.clips, seed=args.seed))
    clips = torch.stack([data[i]["video"] for i in range(args.clips)])
    n = tokenizer.config.num_tokens
    candidates = candidate_lengths(n)
    started = time.perf_counter()
    curves = torch.cat([measure_quality(tokenizer, clips[i : i + args.batch_size], candidates,
                                        batch_size=args.batch_size, precision="fp32")
                        for i in range(0, len(clips), args.batch_size)])
    measure_s = time.perf_counter() - started
    fixed = {k: float(curves[:, c].mean()) for c, k in enumerate(candidates)}
    monotone = float((curves.diff(dim=1) >= 0).all(dim=1).double().mean())

    def smallest_fixed(psnr: float) -> int | None:
        return next((k for k in candidates if fixed[k] >= psnr - 1e-9), None)

    targets = []
    for target in args.targets:
        started = time.perf_counter()
        lengths, quality, decodes = [], [], 0
        for i in range(0, len(clips), args.batch_size):
            choice = choose_lengths(tokenizer, clips[i : i + args.batch_size], target_psnr=target,
                                    candidates=candidates, batch_size=args.batch_size, precision="fp32")
            lengths.append(choice.lengths)
            quality.append(choice.quality)
            decodes += choice.decodes
        lengths, quality = torch.cat(lengths), torch.cat(quality)
        mean_psnr = float(quality.mean())
        exhaustive = lengths_for_target(curves, candidates, target)  # every candidate decoded: the exact smallest
        targets.append({
            "target_psnr": target, "mean_tokens": float(lengths.double().mean()), "mean_psnr": mean_psnr,
            "share_meeting_target": float((quality >= target).double().mean()),
            "share_at_max": float((lengths == n).double().mean()),
            "smallest_fixed_reaching_target": smallest_fixed(target),
            "smallest_fixed_reaching_adaptive_mean_psnr": smallest_fixed(mean_psnr),
            "decodes_per_clip": decodes / len(clips), "seconds": time.perf_counter() - started,
            "exhaustive_mean_tokens": float(exhaustive.double().mean()),
            "exhaustive_mean_psnr": float(curves[torch.arange(len(clips)),
                                                 torch.searchsorted(torch.tensor(candidates), exhaustive)].mean()),
            "share_equal_to_exhaustive": float((exhaustive == lengths).double().mean()),
        })
        print(json.dumps(targets[-1]))

    means = []
    index = {k: c for c, k in enumerate(candidates)}
    for mean in args.means:
        row = {"mean_tokens": mean}
        if mean in index:
            row["fixed_psnr"] = fixed[int(mean)]
        for method in ("dp", "greedy"):
            started = time.perf_counter()
            lengths = allocate_mean_tokens(curves, candidates, mean, method=method)
            row[f"{method}_seconds"] = time.perf_counter() - started
            row[f"{method}_mean_tokens"] = float(lengths.double().mean())
            row[f"{method}_psnr"] = float(curves[torch.arange(len(clips)), [index[k] for k in lengths.tolist()]].mean())
        # SSIM of the DP choice against the fixed length (decoded again)
        lengths = allocate_mean_tokens(curves, candidates, mean, method="dp")
        if mean in index:
            row.update(_ssim_pair(tokenizer, clips, lengths, int(mean), args.batch_size))
        means.append(row)
        print(json.dumps(row))

    mean_targets = []
    for target in args.targets:
        lengths = lengths_for_mean_target(curves, candidates, target)
        reached = float(curves[torch.arange(len(clips)), [index[k] for k in lengths.tolist()]].mean())
        mean_targets.append({"target_mean_psnr": target, "adaptive_mean_tokens": float(lengths.double().mean()),
                             "adaptive_mean_psnr": reached, "smallest_fixed_reaching_target": smallest_fixed(target),
                             "fixed_psnr_there": fixed.get(smallest_fixed(target))})
        print(json.dumps(mean_targets[-1]))

    from larp.training.token_cache import tokenizer_fingerprint

    config = tokenizer.config
    result = {"tokenizer": {"folder": Path(args.tokenizer).name, "fingerprint": tokenizer_fingerprint(tokenizer),
                            "num_tokens": n, "codebook_size": config.quantizer.codebook_size,
                            "clip": [config.frame_num, config.input_size, config.input_size],
                            "nested_dropout": config.nested_dropout},
              "clips": args.clips, "seed": args.seed, "candidates": candidates,
              "fixed_psnr": fixed, "share_monotone_curves": monotone, "measure_all_candidates_seconds": measure_s,
              "targets": targets, "means": means, "mean_targets": mean_targets, "machine": machine(torch.device("cpu"))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


def _ssim_pair(tokenizer, clips, lengths, k, batch_size) -> dict:
    from larp.budget import decode_prefixes

    adaptive, fixed = [], []
    for i in range(0, len(clips), batch_size):
        batch = clips[i : i + batch_size]
        ids = tokenizer.encode(batch)
        adaptive.append(ssim(batch, decode_prefixes(tokenizer, ids, lengths[i : i + batch_size])))
        fixed.append(ssim(batch, decode_prefixes(tokenizer, ids, torch.full((len(batch),), k))))
    return {"dp_ssim": float(torch.cat(adaptive).mean()), "fixed_ssim": float(torch.cat(fixed).mean())}


if __name__ == "__main__":
    main()

"""Perceptual allocation of a mean token budget against the PSNR-optimal one and fixed lengths, written as JSON.

The PSNR-optimal allocation (``larp evaluate-budget``'s *adaptive*) has the higher PSNR at every mean budget,
but on some tokenizers (the demo's earlier one, trained with 10% nested dropout) a higher Fréchet distance than
fixed lengths at some budgets: it starves windows whose PSNR barely moves with more tokens and whose motion a
short prefix loses. The *perceptual* allocation
maximises PSNR plus the feature distance in dB of other networks than the scoring detector, averaged over them
(:func:`larp.budget.perceptual_quality`).

The protocol, fixed before any result on the reported clips was seen:

1. The feature networks are ``--networks`` synthetic-data classifiers of the scoring detector's kind, each
   trained here with its own initialisation seed s = 1, 2, ... on its own clips (synthetic seed 6 + s), while
   the scoring detector is seed 0 on seed-0 clips: the Fréchet distance is not measured with the features the
   allocation optimised.
2. The weight is chosen on *selection* clips (the held-out protocol's clips 256-511): the one (of
   ``--weights``) with the most budgets at which the perceptual allocation beats fixed lengths in both PSNR and
   Fréchet distance; ties go to the smaller weight.
3. The *report* clips (``--report-offset``, ``--report-clips``: by default 1,024 held-out clips from 2048,
   never used for a choice) are scored with that weight: fixed, PSNR-optimal (*adaptive*) and *perceptual*,
   at every budget. Alongside, for reference only, the allocation over the *scoring detector's own* features
   (*scorer-features*, the same weight): not a fair policy (it optimises the network that then scores it), it
   shows how far any allocation can get on this detector.

    python benchmarks/bench_perceptual_allocation.py --models DEMO/models \\
        --out benchmarks/results/adaptive-perceptual-cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import machine

from larp.budget import allocate_mean_tokens, candidate_lengths, measure_quality, perceptual_quality
from larp.cli.tokenizer_commands import load_tokenizer
from larp.data.synthetic import SyntheticConfig, SyntheticVideos
from larp.evaluation.budget import encode_ids, score_lengths
from larp.evaluation.clips import ClipSource, read_batch
from larp.evaluation.fvd import FeatureStats
from larp.evaluation.protocols import resolve_protocol
from larp.evaluation.runner import resolve_detector
from larp.evaluation.video_classifier import VIDEO_CLASSIFIER_PRESETS, train_video_classifier


def feature_networks(folder: Path, count: int, frames: int, size: int, steps: int) -> tuple[list[Path], float]:
    """Train the allocation's ``count`` feature networks into ``folder/seed-S`` (S = 1..count) unless they are
    there; their folders and the seconds the training took."""
    started, folders = time.perf_counter(), []
    for seed in range(1, count + 1):
        folders.append(folder / f"seed-{seed}")
        if (folders[-1] / "model.safetensors").is_file():
            continue
        config = replace(VIDEO_CLASSIFIER_PRESETS["synthetic-32"], frames=frames, input_size=size)
        data = SyntheticVideos(SyntheticConfig(num_videos=8192, seed=6 + seed, frames=frames, size=size))
        train_video_classifier(data, config=config, steps=steps, seed=seed).save_pretrained(folders[-1])
    return folders, time.perf_counter() - started


def score_set(tokenizer, detector, networks, offset: int, clips: int, budgets: list[int], weights: list[float],
              reference: bool = False):
    """Rows {policy, weight, budget, mean_tokens, psnr, fvd, class_accuracy} on held-out clips offset..offset+clips
    (with ``reference``, also the *scorer-features* rows at the first weight)."""
    c = tokenizer.config
    protocol, _ = resolve_protocol("synthetic-recon", {"num_samples": offset + clips, "frames": c.frame_num,
                                                       "size": c.input_size})
    source = ClipSource("synthetic", protocol, progress=False)
    videos, kept = read_batch(source, source.items[offset : offset + clips])
    labels = torch.tensor([source.label(item) for item in kept])
    candidates = candidate_lengths(c.num_tokens)
    ids = encode_ids(tokenizer, videos)
    psnr_curves = measure_quality(tokenizer, videos, candidates, ids=ids, batch_size=64)
    distances = [measure_quality(tokenizer, videos, candidates, metric="features", ids=ids, batch_size=64,
                                 features=network.features) for network in networks]
    scorer = measure_quality(tokenizer, videos, candidates, metric="features", ids=ids, batch_size=64,
                             features=detector.features) if reference else None
    real = FeatureStats()
    real.update(detector.features(videos))
    rows = []
    for budget in budgets:
        policies = [("fixed", None, torch.full((len(videos),), budget)),
                    ("adaptive", None, allocate_mean_tokens(psnr_curves, candidates, budget))]
        policies += [("perceptual", w, allocate_mean_tokens(perceptual_quality(psnr_curves, distances, w),
                                                            candidates, budget)) for w in weights]
        if reference:
            policies.append(("scorer-features", weights[0], allocate_mean_tokens(
                perceptual_quality(psnr_curves, scorer, weights[0]), candidates, budget)))
        for policy, weight, lengths in policies:
            scores = score_lengths(tokenizer, videos, ids, lengths.long(), labels=labels, detector=detector,
                                   real_stats=real, score_ssim=False)
            rows.append({"policy": policy, "weight": weight, "budget": budget, **scores})
    return rows


def wins(rows: list[dict], policy: str, weight: float | None) -> list[int]:
    """The budgets at which (policy, weight) beats fixed lengths in both PSNR and Fréchet distance."""
    fixed = {r["budget"]: r for r in rows if r["policy"] == "fixed"}
    return [r["budget"] for r in rows if r["policy"] == policy and r["weight"] == weight
            and r["psnr"] > fixed[r["budget"]]["psnr"] and r["fvd"] < fixed[r["budget"]]["fvd"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="the demo's models folder (tokenizer/, detector/)")
    parser.add_argument("--networks", type=int, default=4, help="feature networks averaged (default 4)")
    parser.add_argument("--networks-folder", help="their folder (default: trained into "
                        "MODELS/perceptual-detectors/seed-S)")
    parser.add_argument("--network-steps", type=int, default=300)
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 6, 8, 10, 12, 16, 20, 24])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--clips", type=int, default=256, help="selection clips (from the held-out clip CLIPS)")
    parser.add_argument("--report-offset", type=int, default=2048)
    parser.add_argument("--report-clips", type=int, default=1024)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.report_offset < 2 * args.clips:
        parser.error("the report clips must come after the selection clips (--report-offset >= 2 x --clips)")

    started = time.perf_counter()
    models = Path(args.models)
    tokenizer = load_tokenizer(str(models / "tokenizer"), "cpu", "auto")
    c = tokenizer.config
    folder = Path(args.networks_folder) if args.networks_folder else models / "perceptual-detectors"
    folders, trained_s = feature_networks(folder, args.networks, c.frame_num, c.input_size, args.network_steps)
    protocol, _ = resolve_protocol("synthetic-recon", {"frames": c.frame_num, "size": c.input_size})
    detector = resolve_detector(str(models / "detector"), protocol, tokenizer.device, False)
    networks = [resolve_detector(str(f), protocol, tokenizer.device, False) for f in folders]

    selection = score_set(tokenizer, detector, networks, args.clips, args.clips, args.budgets, args.weights)
    won = {w: wins(selection, "perceptual", w) for w in args.weights}
    chosen = max(args.weights, key=lambda w: (len(won[w]), -w))
    report = score_set(tokenizer, detector, networks, args.report_offset, args.report_clips, args.budgets, [chosen],
                       reference=True)

    def portable(description: dict) -> dict:  # the record names DEMO/models and NETWORKS, not this machine's paths
        name = description["name"].replace(str(folder), "NETWORKS" if args.networks_folder else
                                           "DEMO/models/perceptual-detectors")
        return {**description, "name": name.replace(str(models), "DEMO/models")}

    result = {
        "tokenizer": "DEMO/models/tokenizer", "detector": portable(detector.describe()),
        "networks": [portable(n.describe()) for n in networks], "network_training_seconds": round(trained_s, 1),
        "budgets": args.budgets, "weights": args.weights,
        "selection": {"clips": [args.clips, 2 * args.clips - 1], "rows": selection,
                      "budgets_won": {str(w): b for w, b in won.items()},
                      "adaptive_budgets_won": wins(selection, "adaptive", None)},
        "chosen_weight": chosen,
        "report": {"clips": [args.report_offset, args.report_offset + args.report_clips - 1], "rows": report,
                   "perceptual_budgets_won": wins(report, "perceptual", chosen),
                   "adaptive_budgets_won": wins(report, "adaptive", None),
                   "scorer_features_budgets_won": wins(report, "scorer-features", chosen)},
        "seconds": round(time.perf_counter() - started, 1), "machine": machine(torch.device("cpu")),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"weight {chosen} (selection wins: {won}); report clips: perceptual beats fixed in PSNR and FD at "
          f"{result['report']['perceptual_budgets_won']}, PSNR-optimal at {result['report']['adaptive_budgets_won']}, "
          f"scorer features (reference) at {result['report']['scorer_features_budgets_won']}")
    for r in report:
        print(f"{r['policy']:<16}{r['budget']:>4}{r['mean_tokens']:>7.2f}{r['psnr']:>9.3f}{r['fvd']:>8.3f}"
              f"{r['class_accuracy']:>7.3f}")


if __name__ == "__main__":
    main()

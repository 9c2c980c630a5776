"""Adaptive against fixed token lengths for a class-conditional generator, on the same clips (issue 13, item 4).

1. ``--clips`` synthetic clips (the demo's data: 4 motion classes, 16 frames of 32x32, seed 0) are tokenized by
   the demo's nested-dropout tokenizer at adaptive lengths: per clip the smallest prefix k of its 32 ids, from
   the candidates every ``--every`` ids, whose reconstruction reaches ``--target-psnr`` dB (all 32 when none
   does), found by ``larp.budget.adaptive_encode`` (a batched bisection; without that module, this script
   decodes every candidate). ``--held-out`` clips of another seed (1, never trained on) are tokenized the same
   way: the real clips of the Fréchet distance and the tokens of the held-out NLL.
2. The arms, on the same clips in the same order, with the same recipe (the demo's class-conditional one:
   4 layers, width 128, 600 steps of 64 windows, seed 0) and the same number of steps:

   - *adaptive*: ``end_of_window: true``, max_seq_len N, trained on the adaptive windows (ids padded with -1
     past each length; the targets are the ids, then the end-of-window token);
   - *fixed-K*: every clip keeps its first K ids, modelled by a plain fixed-length generator
     (``end_of_window: false``, ``max_seq_len: K``): what one trains on fixed tokens of that budget. A fixed
     length matches the adaptive mean only at a candidate, so by default two fixed arms bracket it: K = the
     candidate nearest to the adaptive mean length (ties: the longer), and the nearest candidate on the
     mean's other side (``--fixed-length K [K ...]`` chooses them). Why not an end-of-window model whose
     windows all stop at K: it would learn a certain EOW at K, spending capacity and an output row on a
     certainty, and would otherwise model the same ids.

3. For each arm: ``--per-class`` windows per class are sampled (CFG 1.25, as the demo), each decoded from
   its own length; the synthetic-data detector gives their class accuracy and its features, whose Fréchet
   distance to the features of the real held-out clips is computed (``larp.metrics.frechet_distance``); and
   the teacher-forced NLL of the generator on the held-out clips' tokens (of its own arm), per id in nats:
   the adaptive arm counts only the ids (the end-of-window term is reported separately, per window, and in
   nats per window); a fixed arm counts its K ids per window.

Reference numbers from the same run: the detector's accuracy on the training clips' adaptive and
full-length reconstructions; the accuracy and the Fréchet distance to the held-out clips of the held-out
clips' adaptive, first-K and full-length reconstructions (what a perfect generator of each kind of token
would score), and of as many real training clips (the distance's floor at these sample sizes).

    OMP_NUM_THREADS=2 nice -n 5 python benchmarks/bench_adaptive_generator.py --models /path/to/demo/models \\
        --out benchmarks/results/adaptive-generator-cpu.json
    python benchmarks/bench_adaptive_generator.py --quick --out /tmp/adaptive-quick.json   # random tiny models
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from common import machine, peak_rss_mb

import larp
from larp.data.synthetic import SyntheticConfig, SyntheticVideos
from larp.evaluation.image_metrics import psnr
from larp.evaluation.video_classifier import VideoClassifier
from larp.files import write_json_atomic
from larp.metrics import frechet_distance
from larp.models.generator import IGNORE
from larp.training import distributed as dist
from larp.training.generator_trainer import GeneratorTask, decode_padded, make_optimizer
from larp.training.recipe import GeneratorTrainConfig, recipe_from_dict


def search_lengths(tokenizer, videos: torch.Tensor, target: float, every: int, batch_size: int):
    """Per clip (n, c, t, h, w): its N deterministic ids and the smallest candidate length (multiples of
    ``every``, and N) whose decoded PSNR reaches ``target`` (N when none does); with the PSNR there."""
    n = tokenizer.config.num_tokens
    candidates = sorted(set(range(every, n + 1, every)) | {n})
    all_ids, lengths, reached = [], [], []
    for first in range(0, videos.shape[0], batch_size):
        video = videos[first : first + batch_size]
        ids = tokenizer.encode(video)
        latents = tokenizer.ids_to_latents(ids)
        b = video.shape[0]
        # every candidate of every clip in one decoder batch: (candidates x b) rows, tails masked
        keep = torch.tensor(candidates).repeat_interleave(b)
        recon = tokenizer.decode_latents(latents.repeat(len(candidates), 1, 1), video.shape[2], keep=keep)
        scores = psnr(video.repeat(len(candidates), 1, 1, 1, 1), recon.clamp(0, 1)).view(len(candidates), b)
        ok = scores >= target
        ok[-1] = True  # all N ids when no shorter prefix reaches the target
        index = ok.float().argmax(dim=0)  # the first candidate that reaches it
        lengths.append(torch.tensor(candidates)[index])
        reached.append(scores[index, torch.arange(b)])
        all_ids.append(ids)
    return torch.cat(all_ids), torch.cat(lengths), torch.cat(reached)


def adaptive_tokens(tokenizer, videos, target, every, batch_size):
    """(ids (n, N) padded with -1, lengths (n,), PSNR at the length, which search): ``larp.budget.adaptive_encode``
    (a batched bisection over the candidates) when it exists, else :func:`search_lengths`."""
    try:
        from larp.budget import adaptive_encode  # issue 13's length search
    except ImportError:
        adaptive_encode = None
    n = tokenizer.config.num_tokens
    if adaptive_encode is None:
        ids, lengths, reached = search_lengths(tokenizer, videos, target, every, batch_size)
        padded = ids.masked_fill(torch.arange(n)[None] >= lengths[:, None], -1)
        return padded, lengths, reached, "this script's exhaustive candidate search"
    candidates = sorted(set(range(every, n + 1, every)) | {n})
    padded, lengths = adaptive_encode(tokenizer, videos, target_psnr=target, candidates=candidates,
                                      batch_size=batch_size, precision="fp32")
    reached = torch.cat([psnr(videos[i : i + 256], decode_padded(tokenizer, padded[i : i + 256]))
                         for i in range(0, videos.shape[0], 256)])
    return padded, lengths, reached, "larp.budget.adaptive_encode (bisection over the candidates)"


def histogram(lengths: torch.Tensor) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(lengths.tolist()).items())}


def candidate_lengths(n: int, every: int) -> list[int]:
    return sorted(set(range(every, n + 1, every)) | {n})


def nearest_candidate(mean: float, candidates: list[int]) -> int:
    """The candidate length nearest to ``mean`` (a tie goes to the longer one)."""
    return min(candidates, key=lambda k: (abs(k - mean), -k))


def bracketing_candidates(mean: float, candidates: list[int]) -> list[int]:
    """The nearest candidate length to ``mean`` first, then the one on the mean's other side (if any): a fixed
    length can only match a mean at a candidate, so the fixed arms bracket it."""
    nearest = nearest_candidate(mean, candidates)
    if nearest == mean:
        return [nearest]
    other = [k for k in candidates if (k < mean) != (nearest < mean)]
    if not other:
        return [nearest]
    return [nearest, max(other) if nearest > mean else min(other)]


def generator_recipe(tokenizer_dir: str, quick: bool, steps: int | None, *, end_of_window: bool,
                     max_seq_len: int) -> GeneratorTrainConfig:
    """The demo's class-conditional recipe (larp.demo.recipes); with the end-of-window token for the adaptive
    arm, over the first ``max_seq_len`` ids for the fixed one."""
    data = {
        "model_preset": "ar-tiny",
        "model": {"dim": 128, "n_layer": 4, "n_head": 4, "vocab_size": 256, "max_seq_len": max_seq_len,
                  "num_classes": 4, "end_of_window": end_of_window},
        "tokens": {"tokenizer": tokenizer_dir},
        "optim": {"lr": 1e-3, "warmup_steps": 50, "weight_decay": 0.05, "min_lr_mult": 0.05},
        "steps": 600, "batch_size": 64, "precision": "fp32",
    }
    if quick:
        data["model"].update(dim=64, n_layer=2)
        data.update(steps=20, batch_size=16)
    if steps is not None:
        data["steps"] = steps
    return recipe_from_dict(data, GeneratorTrainConfig)


def window_stream(tokens: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
    """Endless shuffled batches of padded windows, each epoch in a new seeded order."""
    rng = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(tokens.shape[0], generator=rng)
        for first in range(0, len(order) - batch_size + 1, batch_size):
            rows = order[first : first + batch_size]
            yield {"tokens": tokens[rows], "label": labels[rows]}


def decode_all(tokenizer, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Videos of token rows (n, N) padded with -1, each decoded from its own length."""
    with torch.no_grad():
        return torch.cat([decode_padded(tokenizer, ids[i : i + batch_size]) for i in range(0, ids.shape[0], batch_size)])


def detector_outputs(detector: VideoClassifier, videos: torch.Tensor, batch_size: int = 64):
    """(features (n, d), predicted class (n,)) of the synthetic-data detector, one pass per batch: the class is
    its head on the Fréchet features, as its forward."""
    features, predicted = [], []
    with torch.no_grad():
        for first in range(0, videos.shape[0], batch_size):
            f = detector.features(videos[first : first + batch_size]).float()
            features.append(f.cpu())
            predicted.append(detector.head(F.relu(f)).argmax(dim=1).cpu())
    return torch.cat(features), torch.cat(predicted)


def pad_to(ids: torch.Tensor, n: int) -> torch.Tensor:
    """Rows of k <= n ids -> (b, n) padded with -1 (a fixed arm's K ids as a prefix of the tokenizer's N)."""
    if ids.shape[1] == n:
        return ids
    return torch.cat([ids, ids.new_full((ids.shape[0], n - ids.shape[1]), -1)], dim=1)


def train_arm(recipe: GeneratorTrainConfig, tokens: torch.Tensor, labels: torch.Tensor, tokenizer):
    """A generator trained from the recipe's seed on these rows (the same order of clips for every arm)."""
    info = dist.DistInfo(0, 0, 1, torch.device("cpu"))
    torch.manual_seed(recipe.seed)
    generator = larp.LARPGenerator(recipe.model).train()
    task = GeneratorTask(recipe, info, model=generator, optimizer=make_optimizer(generator, recipe, info.device),
                         scaler=torch.amp.GradScaler("cpu", enabled=False),
                         stream=window_stream(tokens, labels, recipe.batch_size, recipe.seed), tokenizer=tokenizer)
    losses, started = [], time.perf_counter()
    for step in range(1, recipe.steps + 1):
        losses.append(float(task.train_step(step)["loss"]))
        if step % 50 == 0 or step == recipe.steps:
            print(f"  step {step}/{recipe.steps} loss {losses[-1]:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    generator.eval()
    return generator, {
        "end_of_window": recipe.model.end_of_window, "max_seq_len": recipe.model.max_seq_len,
        "steps": recipe.steps, "batch_size": recipe.batch_size, "parameters": generator.num_parameters(),
        "first_loss": losses[0], "final_loss_mean_last_20": sum(losses[-20:]) / len(losses[-20:]),
    }


@torch.no_grad()
def held_out_nll(generator, tokens: torch.Tensor, labels: torch.Tensor, batch_size: int) -> dict:
    """Teacher-forced NLL (nats) of held-out token rows under their true class (class dropout off).

    Counted per id: the positions whose target is a codebook id. The end-of-window targets of an
    ``end_of_window`` model (one per window shorter than N) are summed apart: per window (over all windows)
    and per end-of-window target; ``nll_per_window`` is both together (what the model pays for a window)."""
    config = generator.config
    length = config.max_seq_len
    id_sum = eow_sum = 0.0
    id_count = eow_count = 0
    position_sum = torch.zeros(length, dtype=torch.float64)
    position_count = torch.zeros(length, dtype=torch.float64)
    for first in range(0, tokens.shape[0], batch_size):
        rows, cond = tokens[first : first + batch_size], labels[first : first + batch_size]
        targets = generator.targets(rows)
        logits = generator(rows, cond).float()
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none").double()
        is_id = (targets >= 0) & (targets < config.vocab_size)
        is_eow = targets == config.vocab_size if config.end_of_window else torch.zeros_like(is_id)
        id_sum += float(nll[is_id].sum())
        id_count += int(is_id.sum())
        eow_sum += float(nll[is_eow].sum())
        eow_count += int(is_eow.sum())
        position_sum += (nll * is_id).sum(dim=0)
        position_count += is_id.sum(dim=0)
    windows = tokens.shape[0]
    out = {
        "windows": windows, "ids_counted": id_count, "mean_ids_per_window": id_count / windows,
        "nll_per_id": id_sum / id_count, "bits_per_id": id_sum / id_count / math.log(2),
        "nll_per_window": (id_sum + eow_sum) / windows,
        "nll_per_id_by_position": (position_sum / position_count.clamp_min(1)).tolist(),
    }
    if config.end_of_window:
        out.update(eow_targets=eow_count, eow_nll_per_window=eow_sum / windows,
                   eow_nll_per_eow_target=eow_sum / max(eow_count, 1))
    return out


@torch.no_grad()
def sample_arm(generator, tokenizer, detector, args, n: int):
    """``--per-class`` samples per class (the same noise seed for every arm), decoded from their own lengths:
    (features, predicted class, classes, lengths)."""
    rng = torch.Generator().manual_seed(args.seed)
    classes = torch.arange(4).repeat_interleave(args.per_class)
    features, predicted, lengths = [], [], []
    for first in range(0, len(classes), args.batch_size):
        cond = classes[first : first + args.batch_size]
        ids, k = generator.generate(cond, cfg_scale=args.cfg_scale, generator=rng, return_lengths=True)
        f, p = detector_outputs(detector, decode_padded(tokenizer, pad_to(ids, n)))
        features.append(f)
        predicted.append(p)
        lengths.append(k)
    return torch.cat(features), torch.cat(predicted), classes, torch.cat(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="the demo's models folder (tokenizer, detector)")
    parser.add_argument("--quick", action="store_true", help="random tiny models, few clips: the mechanics only")
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--held-out", type=int, default=256, help="held-out clips (seed 1): Fréchet reals, NLL")
    parser.add_argument("--target-psnr", type=float, default=None,
                        help="dB (default 16; --quick: 12, which some clips of the random tokenizer reach)")
    parser.add_argument("--every", type=int, default=2, help="candidate lengths: multiples of this (and N)")
    parser.add_argument("--fixed-length", type=int, nargs="+", default=None,
                        help="the fixed arms' K, one arm each (default: the candidate nearest to the adaptive mean "
                             "length, then the nearest on the mean's other side)")
    parser.add_argument("--allocated-arm", action="store_true",
                        help="also an arm on the lengths of larp.budget's mean_tokens policy at the adaptive arm's "
                             "mean length (the summed PSNR maximised at the same total of tokens)")
    parser.add_argument("--steps", type=int, default=None, help="generator steps of each arm (default: the demo's 600)")
    parser.add_argument("--per-class", type=int, default=64)
    parser.add_argument("--cfg-scale", type=float, default=1.25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not args.quick and args.models is None:
        parser.error("--models DIR (the demo's models folder with tokenizer/ and detector/) is required without --quick")
    if args.target_psnr is None:
        args.target_psnr = 12.0 if args.quick else 16.0
    if args.quick:
        args.per_class = min(args.per_class, 8)
    device = torch.device("cpu")
    torch.manual_seed(args.seed)
    if args.quick:
        config = dataclasses.replace(larp.TOKENIZER_PRESETS["larp-tiny"], nested_dropout=True)
        tokenizer = larp.LARPTokenizer(config).eval()
        detector = VideoClassifier.from_preset("synthetic-32").eval()
        tokenizer_dir = args.out.parent / "adaptive-quick-tokenizer"
        tokenizer.save_pretrained(tokenizer_dir)
        clips, held_out = min(args.clips, 64), min(args.held_out, 32)
    else:
        tokenizer_dir = args.models / "tokenizer"
        tokenizer = larp.LARPTokenizer.from_pretrained(tokenizer_dir, device=device).eval()
        detector = VideoClassifier.from_pretrained(args.models / "detector", device=device).eval()
        clips, held_out = args.clips, args.held_out
    cfg = tokenizer.config
    n = cfg.num_tokens
    candidates = candidate_lengths(n, args.every)
    for value in args.fixed_length or []:
        if not 1 <= value <= n:
            parser.error(f"--fixed-length must be in [1, {n}] (the tokenizer's tokens per window), got {value}")
    record: dict = {"machine": machine(device), "settings": {**vars(args), "models": str(args.models), "out": str(args.out)}}
    times = {}

    # 1. adaptive tokens of the training clips (the demo's training data: seed 0) and of held-out ones (seed 1)
    started = time.perf_counter()

    def clips_of(seed: int, count: int):
        data = SyntheticVideos(SyntheticConfig(num_videos=count, seed=seed, frames=cfg.frame_num, size=cfg.input_size,
                                               num_classes=4))
        items = [data[i] for i in range(count)]
        return torch.stack([item["video"] for item in items]), torch.tensor([item["label"] for item in items])

    def tokenize(videos: torch.Tensor):
        with torch.no_grad():
            tokens, lengths, reached, source = adaptive_tokens(tokenizer, videos, args.target_psnr, args.every,
                                                              args.batch_size)
            full_ids = torch.cat([tokenizer.encode(videos[i : i + 256]) for i in range(0, videos.shape[0], 256)])
        assert torch.equal(full_ids.masked_fill(tokens < 0, -1), tokens)  # the adaptive ids are its prefixes
        return tokens, lengths, reached, source, full_ids

    videos, labels = clips_of(0, clips)
    tokens, lengths, reached, source, full_ids = tokenize(videos)
    full, adaptive = decode_all(tokenizer, full_ids), decode_all(tokenizer, tokens)
    held_videos, held_labels = clips_of(1, held_out)
    held_tokens, held_lengths, held_reached, _, held_full_ids = tokenize(held_videos)
    times["tokenize_s"] = time.perf_counter() - started

    mean_length = lengths.float().mean().item()
    fixed_lengths = (list(dict.fromkeys(args.fixed_length)) if args.fixed_length is not None
                     else bracketing_candidates(mean_length, candidates))
    if args.allocated_arm:  # the same mean, shared among the windows of each set for the best summed PSNR
        from larp.budget import adaptive_encode

        started = time.perf_counter()
        with torch.no_grad():
            allocated, held_allocated = (
                adaptive_encode(tokenizer, video, mean_tokens=mean_length, candidates=candidates,
                                batch_size=args.batch_size, precision="fp32")[0] for video in (videos, held_videos))
        for ids, full_rows in ((allocated, full_ids), (held_allocated, held_full_ids)):
            assert torch.equal(full_rows.masked_fill(ids < 0, -1), ids)  # prefixes of the same ids
        times["allocate_s"] = time.perf_counter() - started

    def accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> float:
        return (predicted == truth).float().mean().item()

    record["data"] = {
        "clips": clips, "length_search": source, "target_psnr": args.target_psnr, "candidates": candidates,
        "mean_length": mean_length, "max_length": n,
        "share_reaching_target": (reached >= args.target_psnr).float().mean().item(),
        "mean_psnr_at_length": reached.mean().item(),
        "length_histogram": histogram(lengths),
        "mean_length_per_class": [lengths[labels == c].float().mean().item() for c in range(4)],
        "detector_accuracy": {
            "adaptive_reconstructions": accuracy(detector_outputs(detector, adaptive)[1], labels),
            "full_reconstructions": accuracy(detector_outputs(detector, full)[1], labels),
            "real_clips": accuracy(detector_outputs(detector, videos)[1], labels),
        },
        "fixed_lengths": fixed_lengths,
        **({"allocated_mean_length": (allocated >= 0).sum(dim=1).float().mean().item(),
            "allocated_length_histogram": histogram((allocated >= 0).sum(dim=1))} if args.allocated_arm else {}),
        "fixed_length_rule": ("--fixed-length" if args.fixed_length is not None else
                              "the candidate length nearest to the adaptive mean length (ties: the longer), then "
                              "the nearest candidate on the mean's other side"),
    }
    del full, adaptive
    print("data:", {key: v for key, v in record["data"].items() if key not in ("length_histogram", "candidates")}, flush=True)

    # held-out references: the real held-out clips' features are the Fréchet distance's reals
    started = time.perf_counter()
    real_features, real_predicted = detector_outputs(detector, held_videos)
    references = {"real_training_clips": videos[:held_out]}
    references["adaptive_reconstructions"] = decode_all(tokenizer, held_tokens)
    held_fixed_psnr = {}
    for k in fixed_lengths:
        video = references[f"first_{k}_reconstructions"] = decode_all(tokenizer, pad_to(held_full_ids[:, :k], n))
        with torch.no_grad():
            held_fixed_psnr[f"first_{k}_mean_psnr"] = psnr(held_videos, video).mean().item()
    if args.allocated_arm:
        references["allocated_reconstructions"] = decode_all(tokenizer, held_allocated)
        with torch.no_grad():
            held_fixed_psnr["allocated_mean_psnr"] = psnr(held_videos, references["allocated_reconstructions"]).mean().item()
        held_fixed_psnr["allocated_mean_length"] = (held_allocated >= 0).sum(dim=1).float().mean().item()
    references["full_reconstructions"] = decode_all(tokenizer, held_full_ids)
    reference_scores = {"real_held_out_clips": {"class_accuracy": accuracy(real_predicted, held_labels)}}
    for name, video in references.items():
        features, predicted = detector_outputs(detector, video)
        truth = labels[:held_out] if name == "real_training_clips" else held_labels
        reference_scores[name] = {"class_accuracy": accuracy(predicted, truth),
                                  "frechet_distance": frechet_distance(real_features, features)}
    del references
    record["held_out"] = {
        "clips": held_out, "seed": 1,
        "adaptive_mean_length": held_lengths.float().mean().item(),
        "adaptive_mean_psnr": held_reached.mean().item(),
        **held_fixed_psnr,
        "references": reference_scores,
    }
    times["references_s"] = time.perf_counter() - started
    print("held-out references:", record["held_out"], flush=True)

    # 2.-3. both arms: train, held-out NLL, samples
    arms = {
        "adaptive": (dict(end_of_window=True, max_seq_len=n), tokens, held_tokens),
    }
    if args.allocated_arm:
        arms["allocated"] = (dict(end_of_window=True, max_seq_len=n), allocated, held_allocated)
    for k in fixed_lengths:
        arms[f"fixed-{k}"] = (dict(end_of_window=False, max_seq_len=k), full_ids[:, :k].contiguous(),
                              held_full_ids[:, :k].contiguous())
    record["arms"] = {}
    for name, (model_options, train_tokens, held_arm_tokens) in arms.items():
        recipe = generator_recipe(str(tokenizer_dir), args.quick, args.steps, **model_options)
        started = time.perf_counter()
        generator, generator_record = train_arm(recipe, train_tokens, labels, tokenizer)
        times[f"{name}_train_s"] = time.perf_counter() - started
        started = time.perf_counter()
        nll = held_out_nll(generator, held_arm_tokens, held_labels, args.batch_size)
        features, predicted, classes, sampled_lengths = sample_arm(generator, tokenizer, detector, args, n)
        times[f"{name}_evaluate_s"] = time.perf_counter() - started
        record["arms"][name] = {
            "train_mean_length": (train_tokens >= 0).sum(dim=1).float().mean().item(),
            "generator": generator_record,
            "held_out_nll": nll,
            "samples": {
                "per_class": args.per_class, "cfg_scale": args.cfg_scale,
                "class_accuracy": accuracy(predicted, classes),
                "class_accuracy_per_class": [accuracy(predicted[classes == c], c) for c in range(4)],
                "frechet_distance": frechet_distance(real_features, features),
                "mean_length": sampled_lengths.float().mean().item(),
                "length_histogram": histogram(sampled_lengths),
                "mean_length_per_class": [sampled_lengths[classes == c].float().mean().item() for c in range(4)],
                "distinct_lengths": len(set(sampled_lengths.tolist())),
            },
        }
        print(f"{name}:", {key: v for key, v in record["arms"][name]["samples"].items() if key != "length_histogram"},
              {key: v for key, v in nll.items() if key != "nll_per_id_by_position"}, flush=True)
        del generator
        record["times"] = times
        write_json_atomic(args.out, record)  # each arm as it ends: a run stopped later keeps the finished ones
    record["comparison"] = {
        name: {"mean_tokens_train": arm["train_mean_length"], "mean_tokens_samples": arm["samples"]["mean_length"],
               "class_accuracy": arm["samples"]["class_accuracy"], "frechet_distance": arm["samples"]["frechet_distance"],
               "held_out_nll_per_id": arm["held_out_nll"]["nll_per_id"],
               "held_out_nll_per_window": arm["held_out_nll"]["nll_per_window"]}
        for name, arm in record["arms"].items()
    }
    record["times"] = times
    record["peak_rss_mb"] = peak_rss_mb()
    record["machine"]["load_average_at_end"] = list(os.getloadavg())
    write_json_atomic(args.out, record)
    print("comparison:", record["comparison"])
    print("times:", times)


if __name__ == "__main__":
    main()

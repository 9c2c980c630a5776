"""How long the motion class survives a frame-prediction rollout, measured with the demo's models.

A rollout (:mod:`larp.rollout`) makes one long video per sample: window 1, then each next window predicted
from the last ``condition_frames`` frames made so far (``k + K (T - k)`` frames for K windows). Two starts:

* ``class``: window 1 from the class-conditional generator (class c, CFG as the demo), the rest from the
  frame predictor (``larp sample --class c --predictor FP --windows K``);
* ``video``: held-out real clips of class c (the demo's held-out set), every window from the frame predictor
  (``larp sample --condition VIDEO --windows K``).

Each window's span of the video (its k condition frames and its T - k new ones, T frames) is classified by
the synthetic-data detector; the accuracy per window says whether the sample still moves like class c.
Baseline: the detector's accuracy on real held-out clips. Diagnosis (``prediction_from_real_frames``): one
prediction from the real frames at the clip's start and from the real frames ``T - k`` frames later (longer
held-out clips), where window 2 of a rollout is conditioned; the accuracy of both says whether a drop after
window 1 comes from the rollout or from a predictor that has only seen condition frames at clip starts.

    OMP_NUM_THREADS=2 python benchmarks/bench_rollout.py --models larp-demo/models --windows 64 --per-class 4 \
        --out benchmarks/results/rollout-cpu.json
    python benchmarks/bench_rollout.py --quick --out /tmp/rollout-quick.json   # random tiny models, 3 windows
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import machine, peak_rss_mb

import larp
from larp.data.synthetic import CLASS_NAMES, SyntheticConfig, SyntheticVideos
from larp.evaluation.video_classifier import VideoClassifier, classify
from larp.files import write_json_atomic
from larp.rollout import DEFAULT_CONDITION_FRAMES, recorded_condition_frames, roll_forward, rollout, window_span

REPORTED_WINDOWS = (1, 2, 4, 8, 16, 32, 64)


def load_models(folder: Path | None, device: torch.device) -> dict:
    """The demo's four models (``folder``/{tokenizer,generator,frame-predictor,detector}), or for ``None``
    random tiny ones (perturbed, so that the zero-initialised heads give varied samples)."""
    if folder is not None:
        return {
            "tokenizer": larp.LARPTokenizer.from_pretrained(folder / "tokenizer", device=device).eval(),
            "generator": larp.LARPGenerator.from_pretrained(folder / "generator", device=device).eval(),
            "predictor": larp.LARPGenerator.from_pretrained(folder / "frame-predictor", device=device).eval(),
            "detector": VideoClassifier.from_pretrained(folder / "detector", device=device).eval(),
        }
    torch.manual_seed(0)
    models = {"tokenizer": larp.LARPTokenizer.from_preset("larp-tiny"),
              "generator": larp.LARPGenerator.from_preset("ar-tiny"),
              "predictor": larp.LARPGenerator.from_preset("ar-fp-tiny"),
              "detector": VideoClassifier.from_preset("synthetic-32")}
    with torch.no_grad():
        for model in models.values():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.05)
    return {name: model.to(device).eval() for name, model in models.items()}


def held_out(tokenizer: larp.LARPTokenizer, classes: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` clips of each class of the demo's held-out synthetic set (seed 1)."""
    config = tokenizer.config
    data = SyntheticVideos(SyntheticConfig(num_videos=max(64, 8 * classes * per_class), seed=1,
                                           frames=config.frame_num, size=config.input_size, num_classes=classes))
    items = [data[i] for i in range(len(data))]
    labels = torch.tensor([item["label"] for item in items])
    chosen = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(classes)])
    return torch.stack([items[i]["video"] for i in chosen.tolist()]), labels[chosen]


def accuracy_per_window(detector: VideoClassifier, video: torch.Tensor, labels: torch.Tensor, windows: int,
                        frames: int, k: int) -> tuple[list[float], list[list[float]]]:
    """The detector's accuracy on each window's span of the uint8 rollout video: overall and per class."""
    overall, per_class = [], []
    classes = sorted(set(labels.tolist()))
    for index in range(windows):
        clip = video[:, :, window_span(index, frames, k)].float() / 255
        right = classify(detector, clip) == labels
        overall.append(right.float().mean().item())
        per_class.append([right[labels == c].float().mean().item() for c in classes])
    return overall, per_class


def prediction_from_real_frames(models: dict, classes: int, per_class: int, k: int, seed: int) -> dict:
    """Accuracy of one prediction from real frames at offset 0 and at offset T - k of longer held-out clips."""
    tokenizer, predictor, detector = models["tokenizer"], models["predictor"], models["detector"]
    frames, size = tokenizer.config.frame_num, tokenizer.config.input_size
    data = SyntheticVideos(SyntheticConfig(num_videos=classes * per_class * 2, seed=1, frames=2 * frames - k,
                                           size=size, num_classes=classes))
    items = [data[i] for i in range(len(data))]
    video = torch.stack([item["video"] for item in items]).to(tokenizer.device)
    labels = torch.tensor([item["label"] for item in items])
    rng = torch.Generator(tokenizer.device).manual_seed(seed)
    out = {"clips": len(items)}
    for offset in (0, frames - k):
        clip = video[:, :, offset : offset + frames]
        _, predicted = rollout(tokenizer, predictor, 1, condition_frames=k, video=clip, generator=rng)
        out[f"offset_{offset}"] = round((classify(detector, predicted.float() / 255) == labels).float().mean().item(), 4)
        out[f"real_offset_{offset}"] = round((classify(detector, clip) == labels).float().mean().item(), 4)
    return out


def run_start(start: str, models: dict, labels: torch.Tensor, real: torch.Tensor, args, k: int) -> dict:
    tokenizer, predictor = models["tokenizer"], models["predictor"]
    frames = tokenizer.config.frame_num
    rng = torch.Generator(tokenizer.device).manual_seed(args.seed)
    began = time.perf_counter()
    if start == "class":
        first_ids = models["generator"].generate(labels.to(tokenizer.device), cfg_scale=args.cfg_scale, generator=rng)
        begin = dict(first_ids=first_ids)
    else:
        begin = dict(video=real.to(tokenizer.device))
    parts = [window.frames for window in roll_forward(tokenizer, predictor, args.windows, condition_frames=k,
                                                      generator=rng, **begin)]
    seconds = time.perf_counter() - began
    video = torch.cat(parts, dim=2)
    overall, per_class = accuracy_per_window(models["detector"], video, labels, args.windows, frames, k)
    return {
        "start": start,
        "samples": len(labels),
        "video_frames": video.shape[2],
        "seconds": round(seconds, 3),
        "seconds_per_window": round(seconds / args.windows, 4),
        "accuracy_per_window": [round(a, 4) for a in overall],
        "accuracy_at": {str(w): round(overall[w - 1], 4) for w in REPORTED_WINDOWS if w <= args.windows},
        "accuracy_per_class_per_window": {CLASS_NAMES[c]: [round(row[i], 4) for row in per_class]
                                          for i, c in enumerate(sorted(set(labels.tolist())))},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, help="the demo's models folder (default: random tiny ones with --quick)")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--classes", type=int, default=4, help="the first C classes of the synthetic set")
    parser.add_argument("--condition-frames", type=int, default=None,
                        help=f"default: the predictor's recorded training value, else {DEFAULT_CONDITION_FRAMES}")
    parser.add_argument("--cfg-scale", type=float, default=1.25, help="of the class-conditional first window (demo)")
    parser.add_argument("--starts", nargs="+", choices=("class", "video"), default=["class", "video"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="3 windows, 2 classes x 1 sample (random models unless "
                        "--models)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    args = parser.parse_args(argv)
    if args.quick:
        args.windows, args.per_class, args.classes = 3, 1, 2
    elif args.models is None:
        parser.error("--models DIR (the demo's models folder) is required without --quick")
    device = torch.device(args.device)
    models = load_models(args.models, device)
    k = args.condition_frames
    if k is None:
        recorded = recorded_condition_frames(args.models / "frame-predictor") if args.models else None
        k = DEFAULT_CONDITION_FRAMES if recorded is None else recorded
    real, labels = held_out(models["tokenizer"], args.classes, args.per_class)
    with torch.no_grad():
        baseline = (classify(models["detector"], real) == labels).float().mean().item()
        results = [run_start(start, models, labels, real, args, k) for start in args.starts]
        diagnosis = prediction_from_real_frames(models, args.classes, args.per_class * 2, k, args.seed)
    record = {
        "benchmark": "rollout",
        "models": "random tiny (quick)" if args.models is None else "the demo's models",
        "windows": args.windows, "condition_frames": k, "frames_per_window": models["tokenizer"].config.frame_num,
        "new_frames_per_window": models["tokenizer"].config.frame_num - k,
        "classes": [CLASS_NAMES[c] for c in range(args.classes)], "per_class": args.per_class,
        "cfg_scale": args.cfg_scale, "seed": args.seed,
        "detector_accuracy_on_real_clips": round(baseline, 4),
        "results": results,
        "prediction_from_real_frames": diagnosis,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "machine": machine(device),
    }
    write_json_atomic(args.out, record)
    for result in results:
        at = ", ".join(f"{w}: {a:.2f}" for w, a in result["accuracy_at"].items())
        print(f"{result['start']} start, {result['samples']} samples x {args.windows} windows "
              f"({result['seconds']:.1f} s): accuracy per window {at}")
    later = models["tokenizer"].config.frame_num - k
    print(f"one prediction from real frames: at the clip start {diagnosis['offset_0']:.2f}, "
          f"{later} frames later {diagnosis[f'offset_{later}']:.2f}")
    print(f"detector accuracy on real clips: {baseline:.2f}; wrote {args.out}")
    return record


if __name__ == "__main__":
    main()

"""``larp train-budget`` (the learned length predictor) and ``larp evaluate-budget`` (the rate-quality curves).

``evaluate-budget`` is its own command rather than a task of ``larp evaluate``: those tasks are protocol runs
(sharded over processes, resumable from partial statistics, one result per protocol), while this one scores
one set of clips many times over (every budget, fixed and adaptive) and takes options of its own (budgets,
targets, a predictor).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from larp.cli.arguments import (
    add_device_option,
    add_dtype_option,
    add_set_option,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    probability,
)

logger = logging.getLogger(__name__)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 4,8,16; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 16,17.5; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return values


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train-budget",
        help="train a length predictor: the quality of each token budget per window, without decoding",
        description="Train a small head on a frozen nested-dropout tokenizer's encoder outputs that predicts, for "
        "each candidate prefix length, the quality decoding it would give (PSNR by default). Labels are measured by "
        "decoding every candidate of every training window; the report (OUT/report.json) gives its error on "
        "held-out windows and the quality lost against the exact search. Use the folder with "
        "`larp tokenize --predict OUT` or `larp evaluate-budget --predict OUT`.",
    )
    train.add_argument("--tokenizer", required=True, help="tokenizer folder or repo id (trained with nested dropout)")
    train.add_argument("-o", "--out", required=True, metavar="DIR", help="where the predictor and report.json go")
    train.add_argument("--data", default="synthetic",
                       help="'synthetic' (the built-in videos: training seed 0, held-out seed 1; default), or a "
                       "manifest csv / folder of videos (held out: --val-data, else its first --val-clips videos)")
    train.add_argument("--val-data", help="manifest csv or folder of held-out videos")
    train.add_argument("--root", help="base folder of the manifest's relative paths")
    train.add_argument("--clips", type=positive_int, default=2048, help="training windows (default 2048)")
    train.add_argument("--val-clips", type=positive_int, default=256, help="held-out windows (default 256)")
    train.add_argument("--metric", choices=("psnr", "mse", "lpips"), default="psnr",
                       help="quality predicted (default psnr, in dB; lpips needs the LPIPS weights)")
    train.add_argument("--steps", type=positive_int, help="optimizer steps (default 1500)")
    train.add_argument("--batch-size", type=positive_int, help="windows per step (default 128)")
    train.add_argument("--candidate-step", type=positive_int,
                       help="candidate lengths step, 2*step, ..., N (default N/16)")
    train.add_argument("--seed", type=nonnegative_int, default=0, help="seeds initialisation and batches")
    train.add_argument("--targets", type=_float_list, help="quality targets of the report, e.g. 16,17")
    train.add_argument("--means", type=_int_list, help="mean token budgets of the report, e.g. 4,8,16")
    add_set_option(train, "training (larp.training.budget_trainer.BudgetTrainConfig)", "lr=1e-3 depth=3")
    add_dtype_option(train, "precision of the tokenizer while measuring the labels")
    add_device_option(train)
    train.set_defaults(run=run_train_budget)

    evaluate = commands.add_parser(
        "evaluate-budget",
        help="rate-quality curves: mean tokens per window vs PSNR, SSIM, LPIPS, FVD, fixed vs adaptive",
        description="For one nested-dropout tokenizer and a set of clips, score reconstructions at each mean token "
        "budget K: every window at K tokens (fixed) and the PSNR-optimal allocation of K tokens per window on "
        "average (adaptive; with --predict, also the allocation from a length predictor's curves; with "
        "--perceptual-detector, the allocation of PSNR plus those networks' feature distance). Reports PSNR, "
        "SSIM, LPIPS (when its weights are found), the detector's Fréchet distance and class accuracy, and for "
        "--targets the mean tokens a per-window PSNR target needs vs the smallest fixed length whose mean PSNR "
        "reaches it. Writes a JSON record and one plot per metric (with matplotlib).",
    )
    evaluate.add_argument("--tokenizer", required=True, help="tokenizer folder or repo id (trained with nested dropout)")
    evaluate.add_argument("--data", default="synthetic",
                          help="'synthetic' (the held-out synthetic clips; default), a manifest csv or a folder")
    evaluate.add_argument("--root", help="base folder of the manifest's relative paths")
    evaluate.add_argument("--protocol", help="the protocol choosing the clips (default synthetic-recon for "
                          "synthetic data, ucf-recon otherwise; frames and size follow the tokenizer)")
    evaluate.add_argument("--num-samples", type=positive_int, default=256, help="clips scored (default 256)")
    evaluate.add_argument("--budgets", type=_int_list, help="mean tokens per window, e.g. 2,4,8,16,32 "
                          "(default: N/16, N/8, N/4, 3N/8, N/2, 3N/4, N)")
    evaluate.add_argument("--targets", type=_float_list, default=(), help="PSNR targets in dB, e.g. 15,16")
    evaluate.add_argument("--candidate-step", type=positive_int,
                          help="candidate lengths step (default N/16, or the --predict predictor's candidates)")
    evaluate.add_argument("--predict", metavar="DIR", help="a length predictor folder (larp train-budget): adds "
                          "the predicted allocation and its loss against the exact one")
    evaluate.add_argument("--min-fraction", type=probability, metavar="F",
                          help="also score the adaptive allocation with a floor (policy 'floored'): every window keeps "
                          "at least the largest candidate <= F x K tokens, e.g. 0.5")
    evaluate.add_argument("--perceptual-detector", metavar="DETECTOR", nargs="+",
                          help="also score the perceptual allocation (policy 'perceptual'): maximise PSNR plus these "
                          "networks' feature distance in dB, averaged over them (VideoClassifier folders, TorchScript "
                          ".pt files, ...; best other networks than --detector, which measures the Fréchet distance; "
                          "several independently trained ones are better than one)")
    evaluate.add_argument("--perceptual-weight", type=nonnegative_float, metavar="W",
                          help="dB of feature distance per dB of PSNR in the perceptual allocation (default "
                          "larp.budget.DEFAULT_FEATURE_WEIGHT)")
    evaluate.add_argument("--detector", help="a VideoClassifier folder, 'synthetic', 'i3d', a TorchScript .pt, or "
                          "'none' (default: the protocol's)")
    evaluate.add_argument("--trust-detector", action="store_true",
                          help="load a TorchScript detector that is not the pinned I3D (it runs its code)")
    evaluate.add_argument("--lpips-weights", help="LPIPS weight file (default: $LARP_LPIPS_WEIGHTS or the cache)")
    evaluate.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    evaluate.add_argument("--no-ssim", action="store_true", help="skip SSIM (the slowest metric on a CPU)")
    evaluate.add_argument("--batch-size", type=positive_int, default=64, help="clips decoded at once (default 64)")
    evaluate.add_argument("-o", "--output", metavar="FILE", default="eval/budget.json",
                          help="the result, JSON (default eval/budget.json); plots go beside it as FILE-STEM_METRIC.png")
    add_dtype_option(evaluate)
    add_device_option(evaluate)
    evaluate.set_defaults(run=run_evaluate_budget)


# ------------------------------------------------------------------------------------------ train-budget
def _budget_config(args: argparse.Namespace):
    from larp.config import config_from_dict, config_to_dict
    from larp.training.budget_trainer import BudgetTrainConfig
    from larp.training.recipe import parse_scalar

    fields = {"metric": args.metric, "seed": args.seed}
    for name in ("steps", "batch_size", "candidate_step"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    for item in args.settings:
        if "=" not in item:
            raise ValueError(f"--set {item!r} is not of the form KEY=VALUE (a BudgetTrainConfig field)")
        key, raw = item.split("=", 1)
        fields[key.strip()] = parse_scalar(raw)
    return config_from_dict(BudgetTrainConfig, {**config_to_dict(BudgetTrainConfig()), **fields})


def _training_windows(args: argparse.Namespace, tokenizer):
    config = tokenizer.config
    frames, size = config.frame_num, config.input_size
    if args.data == "synthetic":
        from larp.data.synthetic import SyntheticConfig, SyntheticVideos

        train = SyntheticVideos(SyntheticConfig(num_videos=args.clips, seed=0, frames=frames, size=size))
        held = SyntheticVideos(SyntheticConfig(num_videos=args.val_clips, seed=1, frames=frames, size=size))
    else:
        from larp.training.data import build_datasets
        from larp.training.recipe import DataConfig

        data = DataConfig(manifest=args.data, root=args.root, val_manifest=args.val_data, random_flip=False,
                          num_workers=0, val_videos=args.val_clips)
        train, held, _ = build_datasets(data, frames=frames, size=size)
    from larp.training.budget_trainer import windows_from

    return windows_from(train, args.clips, seed=args.seed), windows_from(held, args.val_clips, seed=args.seed + 1)


def run_train_budget(args: argparse.Namespace) -> int:
    from larp.cli.tokenizer_commands import load_tokenizer
    from larp.config import config_to_dict
    from larp.files import write_json_atomic
    from larp.training.budget_trainer import train_length_predictor
    from larp.training.token_cache import tokenizer_fingerprint

    config = _budget_config(args)
    tokenizer = load_tokenizer(args.tokenizer, args.device, args.dtype)
    from larp.budget import require_nested_dropout

    require_nested_dropout(tokenizer)
    train, held = _training_windows(args, tokenizer)
    logger.info("measuring labels on %d training and %d held-out windows, then %d steps", len(train), len(held),
                config.steps)
    model, report = train_length_predictor(tokenizer, train, held, config,
                                           tokenizer_id=tokenizer_fingerprint(tokenizer),
                                           targets=args.targets or (), means=args.means or (), precision=args.dtype,
                                           progress=not args.quiet)
    out = Path(args.out)
    model.save_pretrained(out)
    report = {"tokenizer": args.tokenizer, "data": args.data, "settings": config_to_dict(config), **report}
    write_json_atomic(out / "report.json", report)
    print(train_summary(report))
    print(f"predictor in {out} (report: {out / 'report.json'})")
    return 0


def train_summary(report: dict) -> str:
    """The lines ``larp train-budget`` prints: MAE and the loss against the exact search."""
    held, unit = report["held_out"], "dB" if report["report_units"] == "PSNR dB" else ""
    lines = [f"held-out MAE {held['mae']:.3f} {unit} over {held['windows']} windows x {len(held['candidates'])} "
             f"candidates (labels {report['label_seconds']:.0f} s, training {report['train_seconds']:.0f} s)"]
    for row in held["targets"]:
        lines.append(f"  target {row['target']:g}: met by {row['predicted_share_meeting']:.1%} predicted vs "
                     f"{row['exact_share_meeting']:.1%} exact, mean tokens {row['predicted_mean_tokens']:.2f} vs "
                     f"{row['exact_mean_tokens']:.2f}")
    for row in held["means"]:
        lines.append(f"  mean {row['mean_tokens']} tokens: PSNR {row['predicted_mean_quality']:.3f} predicted vs "
                     f"{row['exact_mean_quality']:.3f} exact allocation (loss {row['loss']:.3f} dB)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ evaluate-budget
def default_budgets(num_tokens: int) -> tuple[int, ...]:
    return tuple(sorted({max(1, num_tokens * k // 16) for k in (1, 2, 4, 6, 8, 12, 16)}))


def run_evaluate_budget(args: argparse.Namespace) -> int:
    import torch

    from larp.budget import DEFAULT_FEATURE_WEIGHT, candidate_lengths, require_nested_dropout
    from larp.cli.tokenizer_commands import load_tokenizer
    from larp.evaluation.budget import plot_rate_quality, rate_quality
    from larp.evaluation.clips import ClipSource, read_batch
    from larp.evaluation.protocols import resolve_protocol
    from larp.evaluation.runner import resolve_detector
    from larp.files import write_json_atomic
    from larp.version import __version__

    tokenizer = load_tokenizer(args.tokenizer, args.device, args.dtype)
    require_nested_dropout(tokenizer)
    config = tokenizer.config
    budgets = args.budgets or default_budgets(config.num_tokens)
    if max(budgets) > config.num_tokens:
        raise ValueError(f"--budgets {max(budgets)} is more than the tokenizer's {config.num_tokens} tokens per window")
    candidates = candidate_lengths(config.num_tokens, args.candidate_step)
    name = args.protocol or ("synthetic-recon" if args.data == "synthetic" else "ucf-recon")
    protocol, applied = resolve_protocol(name, {"num_samples": args.num_samples, "frames": config.frame_num,
                                                "size": config.input_size})
    source = ClipSource(args.data, protocol, root=args.root, progress=not args.quiet)
    videos, kept = read_batch(source, source.items)
    if videos is None:
        raise ValueError(f"no clip of {args.data} could be read: see the warnings above")
    labels = torch.tensor([source.label(item) for item in kept]) if source.labels_are_detector_classes else None
    detector = None
    if args.detector != "none":
        try:
            detector = resolve_detector(args.detector, protocol, tokenizer.device, not args.quiet,
                                        trust=args.trust_detector)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error} -- or pass --detector none to skip the Fréchet distance") from None
    if labels is not None and not hasattr(detector, "predict"):
        labels = None  # class accuracy needs a classifier detector
    lpips, lpips_note = None, "skipped (--no-lpips)" if args.no_lpips else None
    if not args.no_lpips:
        from larp.losses.perceptual import load_lpips

        try:
            lpips = load_lpips(args.lpips_weights, device=tokenizer.device)
        except FileNotFoundError as error:
            lpips_note = f"no LPIPS column: {str(error).splitlines()[0]}"
            print(lpips_note)
    perceptual = None
    if args.perceptual_detector:
        perceptual = [resolve_detector(name, protocol, tokenizer.device, not args.quiet, trust=args.trust_detector)
                      for name in args.perceptual_detector]
    predictor = None
    if args.predict:
        from larp.models.length_predictor import LengthPredictor

        from larp.training.token_cache import tokenizer_fingerprint

        predictor = LengthPredictor.from_pretrained(args.predict, device=tokenizer.device)
        if predictor.config.tokenizer and predictor.config.tokenizer != tokenizer_fingerprint(tokenizer):
            logger.warning("the length predictor %s was trained on another tokenizer (fingerprint %s...): its "
                           "curves describe that one", args.predict, predictor.config.tokenizer[:12])
    if predictor is not None and args.candidate_step is None:
        candidates = predictor.candidates  # the lengths it was trained to score
    result = rate_quality(tokenizer, videos, budgets=budgets, labels=labels, candidates=candidates,
                          targets=args.targets, detector=detector, lpips=lpips, predictor=predictor,
                          batch_size=args.batch_size, precision=args.dtype, score_ssim=not args.no_ssim,
                          min_fraction=args.min_fraction, feature_network=perceptual,
                          feature_weight=DEFAULT_FEATURE_WEIGHT if args.perceptual_weight is None
                          else args.perceptual_weight)
    out = Path(args.output)
    record = {"task": "budget", "protocol": protocol.to_dict(), "overrides": applied,
              "sources": {"tokenizer": args.tokenizer, "data": args.data, "predictor": args.predict},
              "detector": detector.describe() if detector is not None else None,
              "perceptual_detectors": [network.describe() for network in perceptual] if perceptual else None,
              "lpips": lpips_note or "scored",
              "versions": {"larp": __version__, "torch": torch.__version__}, "device": str(tokenizer.device),
              **result}
    try:
        plots = plot_rate_quality(out.parent, result, prefix=out.stem)
    except ImportError as error:
        plots = {}
        record["plots_missing"] = str(error)
        print(f"no plots: {error}")
    record["plots"] = plots
    write_json_atomic(out, record)
    print(evaluate_summary(record))
    print(f"recorded in {out}" + (f"; plots: {', '.join(plots.values())}" if plots else ""))
    return 0


def evaluate_summary(record: dict) -> str:
    """A table of the curves (one line per budget and policy) and the target comparison."""
    columns = [c for c in ("psnr", "ssim", "lpips", "fvd", "class_accuracy") if any(c in r for r in record["curves"])]
    lines = [f"{'policy':<10}{'budget':>7}{'tokens':>8}" + "".join(f"{c:>16}" for c in columns)]
    for row in record["curves"]:
        lines.append(f"{row['policy']:<10}{row['budget']:>7}{row['mean_tokens']:>8.2f}"
                     + "".join(f"{row[c]:>16.4f}" if c in row else f"{'':>16}" for c in columns))
    for row in record["targets"]:
        fixed = row["smallest_fixed_reaching"]
        lines.append(f"target {row['target_psnr']:g} dB: adaptive {row['adaptive_mean_tokens']:.2f} tokens on average "
                     f"({row['adaptive_share_meeting']:.1%} of windows meet it); smallest fixed length with that mean "
                     f"PSNR: {fixed if fixed is not None else 'none'}; smallest adaptive mean budget with that mean PSNR: "
                     f"{row['smallest_adaptive_budget_reaching'] if row['smallest_adaptive_budget_reaching'] else 'none'}")
    if "predictor" in record:
        p = record["predictor"]
        lines.append(f"predictor: MAE {p['mae']:.3f} dB; " + "; ".join(
            f"mean {r['mean_tokens']}: {r['predicted_mean_quality']:.3f} vs exact {r['exact_mean_quality']:.3f} dB"
            for r in p["means"]))
    return "\n".join(lines)

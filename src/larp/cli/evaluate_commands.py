"""``larp evaluate reconstruction|generation|prediction``: the paper's protocols (or the synthetic ones), by name.

Runs under torchrun too: each process scores a disjoint set of batches and the statistics are summed, so
the result equals a one-process run. A run that is stopped resumes from its partial statistics when
started again with the same settings.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from larp.cli.arguments import add_device_option, add_set_option, nonnegative_int, positive_int
from larp.training.recipe import parse_scalar

logger = logging.getLogger(__name__)

DEFAULT_PROTOCOL = {"reconstruction": "ucf-recon", "generation": "ucf-gen", "prediction": "k600-fp"}


def register(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="FVD, PSNR, SSIM, LPIPS, class accuracy under a named protocol",
        description="Evaluate a tokenizer (reconstruction) or a generator (generation, prediction) under a named "
        "protocol: ucf-recon, ucf-gen, k600-fp (the paper's; they need --data and the I3D weights) or "
        "synthetic-recon, synthetic-gen, synthetic-fp (offline, on the built-in synthetic data, scored by the "
        "synthetic-data detector). Every override of the protocol is recorded in the result.",
    )
    evaluate.add_argument("task", choices=sorted(DEFAULT_PROTOCOL), help="what to evaluate")
    evaluate.add_argument("--protocol", help="protocol name (default: ucf-recon / ucf-gen / k600-fp by task)")
    evaluate.add_argument("--data", help="manifest csv, folder of videos, or 'synthetic' (default for synthetic-*)")
    evaluate.add_argument("--root", help="base folder of the manifest's relative paths")
    evaluate.add_argument("--tokenizer", required=True, help="tokenizer folder or HuggingFace repo id")
    evaluate.add_argument("--generator", help="generator folder or repo id (generation and prediction)")
    evaluate.add_argument("--detector", help="'i3d', an I3D TorchScript .pt, a VideoClassifier folder, 'synthetic', "
                          "or 'none' to skip the FVD (default: the protocol's)")
    evaluate.add_argument("--trust-detector", action="store_true",
                          help="load a TorchScript detector file that is not the pinned StyleGAN-V I3D (loading one "
                          "runs its code: only for files you made or checked); the result records "
                          "detector_trusted_by_user with the file's sha256")
    evaluate.add_argument("--lpips-weights", help="LPIPS weight file (default: $LARP_LPIPS_WEIGHTS or the cache)")
    evaluate.add_argument("--no-lpips", action="store_true", help="skip LPIPS even when the protocol reports it")
    evaluate.add_argument("--num-samples", type=positive_int, help="override the protocol's number of clips")
    evaluate.add_argument("--seed", type=nonnegative_int, help="override the protocol's seed")
    evaluate.add_argument("--batch-size", type=positive_int, help="override the protocol's batch size")
    # precision is a protocol field (precision, generator_precision), overridden here like any other
    add_set_option(evaluate, "protocol", "cfg_scale=1.5 precision=bf16")
    evaluate.add_argument("-o", "--output", metavar="FILE",
                          help="the result record, JSON (default eval/<protocol>-<task>.json)")
    evaluate.add_argument("--work-dir", help="partial statistics for resuming (default: FILE.partial beside --output)")
    add_device_option(evaluate)
    evaluate.set_defaults(run=run_evaluate)


def protocol_overrides(args: argparse.Namespace) -> dict:
    overrides = {}
    for item in args.settings:
        if "=" not in item:
            raise ValueError(f"--set {item!r} is not of the form KEY=VALUE (a protocol field and its value)")
        key, raw = item.split("=", 1)
        overrides[key.strip()] = parse_scalar(raw)
    for name in ("num_samples", "seed", "batch_size"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.detector is not None and args.detector != "none":
        overrides["detector"] = args.detector
    return overrides


def run_evaluate(args: argparse.Namespace) -> int:
    from larp.cli.tokenizer_commands import load_tokenizer
    from larp.evaluation.protocols import resolve_protocol
    from larp.evaluation.runner import ClipSource, Models, evaluate, resolve_detector, resolve_precisions, summary_line
    from larp.files import write_json_atomic
    from larp.training import distributed as dist

    name = args.protocol or DEFAULT_PROTOCOL[args.task]
    protocol, applied = resolve_protocol(name, protocol_overrides(args))
    if protocol.task != args.task:
        raise ValueError(f"protocol {name} is a {protocol.task} protocol, not {args.task}")
    data = args.data or ("synthetic" if protocol.detector == "synthetic" or name.startswith("synthetic") else None)
    if data is None:
        raise ValueError(f"protocol {name} needs --data: the {protocol.dataset} manifest csv or folder")
    if args.task != "reconstruction" and not args.generator:
        raise ValueError(f"{args.task} needs --generator")

    info = dist.init_distributed(args.device)
    try:
        progress = not args.quiet and info.is_main
        resolve_precisions(args.task, protocol, info.device)  # a precision this device cannot run fails first
        tokenizer = load_tokenizer(args.tokenizer, str(info.device), protocol.precision)
        _check_tokenizer(tokenizer, protocol)
        models = Models(tokenizer=tokenizer, generator=_load_generator(args, tokenizer, info.device))
        if args.detector != "none":
            try:
                models.detector = resolve_detector(protocol.detector, protocol, info.device, progress,
                                                   trust=args.trust_detector)
            except FileNotFoundError as error:
                raise FileNotFoundError(f"{error} -- or pass --detector none to skip the FVD") from None
        if "lpips" in protocol.metrics and args.task == "reconstruction" and not args.no_lpips:
            from larp.losses.perceptual import load_lpips

            try:
                models.lpips = load_lpips(args.lpips_weights, device=info.device)
            except FileNotFoundError as error:
                raise FileNotFoundError(f"{error} -- or pass --no-lpips to skip LPIPS") from None
        source = ClipSource(data, protocol, root=args.root, progress=progress)
        out = Path(args.output or Path("eval") / f"{protocol.name}-{args.task}.json")
        sources = {"data": data, "tokenizer": args.tokenizer, "generator": args.generator,
                   "lpips": models.lpips is not None}
        record = evaluate(args.task, protocol, models, source, overrides=applied, sources=sources,
                          work_dir=args.work_dir or out.with_suffix(".partial"), info=info, progress=progress)
        if record is not None:
            write_json_atomic(out, record)
            print(summary_line(record))
            print(f"recorded in {out}")
        dist.barrier(info)
    finally:
        dist.cleanup(info)
    return 0


def _check_tokenizer(tokenizer, protocol) -> None:
    config = tokenizer.config
    if config.input_size != protocol.size:
        raise ValueError(f"the tokenizer takes {config.input_size}x{config.input_size} clips but protocol "
                         f"{protocol.name} scores {protocol.size}x{protocol.size}: pass --set size={config.input_size}")
    tokenizer.check_num_frames(protocol.frames)


def _load_generator(args: argparse.Namespace, tokenizer, device: torch.device):
    if not args.generator:
        return None
    from larp.models.generator import LARPGenerator, check_matches_tokenizer

    generator = LARPGenerator.from_pretrained(args.generator, device=device)
    check_matches_tokenizer(generator.config, tokenizer.config)
    g = generator.config
    if g.frame_prediction != (args.task == "prediction"):
        kind = "frame-prediction" if g.frame_prediction else "class-conditional"
        raise ValueError(f"{args.task} needs a {'frame-prediction' if args.task == 'prediction' else 'class-conditional'} "
                         f"generator; {args.generator} is {kind}")
    return generator

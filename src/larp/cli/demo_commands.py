"""``larp demo``: train, sample, evaluate and report on the built-in synthetic data (see larp.demo)."""

from __future__ import annotations

import argparse

from larp.cli.arguments import add_device_option


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="the whole of LARP on built-in synthetic videos: train, generate, evaluate, write report.html",
        description="Trains a small LARP tokenizer (with the AR prior and nested token dropout), a class-conditional "
        "generator and a frame predictor on the built-in synthetic videos, samples every class, evaluates "
        "(PSNR/SSIM, PSNR per token budget, Frechet distance and class accuracy with the synthetic-data detector) "
        "and writes OUT/report.html, OUT/metrics.json and the models (OUT/models/, loadable with from_pretrained). "
        "About 9 minutes on a 2-core CPU; a second run reuses the stages the first one finished.",
    )
    demo.add_argument("-o", "--out", default="larp-demo", metavar="DIR", help="the demo folder (default: ./larp-demo)")
    demo.add_argument("--quick", action="store_true",
                      help="check the mechanics in about 20 s (tiny models, a few steps: the numbers mean nothing)")
    demo.add_argument("--fresh", action="store_true", help="start over: forget the stages an earlier run finished")
    demo.add_argument("--llm", action="store_true",
                      help="then train a small Llama (transformers) on captions + the demo's video tokens: "
                      "text-to-video and captioning, scored against the captions (OUT/llm/; about 6 more minutes, "
                      "reused when done; needs pip install \"larp[llm]\")")
    add_device_option(demo)
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from larp.demo import run_demo as demo

    demo(args.out, quick=args.quick, fresh=args.fresh, device=args.device, progress=not args.quiet, llm=args.llm)
    return 0

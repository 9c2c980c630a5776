"""``larp experiment``: multi-run studies (see larp.experiments). ``prior-ablation``: issue 15, docs/ablation.md."""

from __future__ import annotations

import argparse

from larp.cli.arguments import add_device_option, positive_int


# The names of larp.experiments.prior_ablation.VARIANTS / DEFAULT_VARIANTS / PLANS, here so that building the parser
# imports no trainer (tests/test_prior_ablation.py checks that they agree).
VARIANTS = ("no-prior", "prior", "prior-no-ss", "prior-det-vq", "prior-lr-x1")
DEFAULT_VARIANTS = ("no-prior", "prior", "prior-no-ss", "prior-det-vq")
PLANS = ("full", "small", "quick")


def register(commands: argparse._SubParsersAction) -> None:
    experiment = commands.add_parser("experiment", help="multi-run experiments (the prior ablation)",
                                     description="Experiments that train and evaluate several runs and report "
                                     "mean and spread over seeds.")
    kinds = experiment.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    ablation = kinds.add_parser(
        "prior-ablation",
        help="tokenizers with and without the AR prior (and its parts), each with the same generator recipe",
        description="Trains, on the built-in synthetic data, a tokenizer per variant and seed (no prior; prior; prior "
        "without scheduled sampling; prior with deterministic VQ; optionally the x1 prior learning rate), the same "
        "class-conditional generator on each one's tokens, and evaluates reconstruction (PSNR, SSIM, detector "
        "Frechet distance, codebook use), prefixes, generation (Frechet distance, class accuracy) and the "
        "generator's held-out NLL per token and per position. Finished runs are kept and skipped by the next "
        "invocation. Writes OUT/report.md, OUT/report.json and OUT/plots/ (docs/ablation.md).",
    )
    ablation.add_argument("-o", "--out", required=True, metavar="DIR", help="the experiment's folder")
    ablation.add_argument("--plan", choices=PLANS, default="full",
                          help="full: the demo's recipes (1,600 tokenizer steps of 32 clips; about 6 minutes a run "
                          "on an idle 2-core CPU); small: a quarter of the steps at half the batch (every "
                          "variant at the floor: docs/ablation.md); quick: the mechanics in seconds")
    ablation.add_argument("--quick", action="store_const", const="quick", dest="plan", help="the same as --plan quick")
    ablation.add_argument("--seeds", type=positive_int, default=3, metavar="N", help="seeds per variant (default 3)")
    ablation.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(DEFAULT_VARIANTS),
                          metavar="NAME", help=f"variants to run, of {', '.join(VARIANTS)} "
                          f"(default: {' '.join(DEFAULT_VARIANTS)})")
    ablation.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                          help="runs trained at a time, in separate processes sharing the CPU threads (default 1)")
    add_device_option(ablation)
    ablation.set_defaults(run=run_prior_ablation)


def run_prior_ablation(args: argparse.Namespace) -> int:
    from larp.experiments.prior_ablation import run_prior_ablation as run

    echo = (lambda _line: None) if args.quiet else print
    report = run(args.out, plan=args.plan, seeds=args.seeds, variants=args.variants, device=args.device,
                 jobs=args.jobs, progress=False, echo=echo)
    print(f"{sum(len(row['seeds']) for row in report['table'].values())} finished runs of "
          f"{len(report['table'])} variants: {args.out}/report.md")
    return 0

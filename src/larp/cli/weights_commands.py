"""``larp weights``: convert pretrained feature-network weights offline, and show where they are looked for."""

from __future__ import annotations

import argparse
import os

from larp import weights
from larp.evaluation import detectors
from larp.losses import perceptual


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "weights",
        help="convert pretrained feature-network weights (LPIPS) and show where they are looked for",
        description="Weights of the pretrained feature networks (LPIPS-VGG16, the FVD's I3D) are never bundled: they "
        f"come from a path, an environment variable ({perceptual.WEIGHTS_ENV}, {detectors.I3D_WEIGHTS_ENV}) or the "
        "cache, or are downloaded and checked against a pinned sha256 when a network exists. These commands "
        "convert the original LPIPS files offline and show the lookup.",
    )
    what = parser.add_subparsers(dest="weights_command", metavar="WHAT", required=True)

    lpips = what.add_parser(
        "lpips",
        help="convert torchvision's vgg16-397923af.pth and lpips' v0.1 vgg.pth into one safetensors file",
        description=f"Sources: {perceptual.VGG16_URL} and {perceptual.LPIPS_VGG_URL}.",
    )
    lpips.add_argument("--vgg16", required=True, metavar="PATH", help="torchvision VGG16 weights (vgg16-397923af.pth)")
    lpips.add_argument(
        "--lpips", required=True, metavar="PATH", help="lpips v0.1 linear heads (lpips/weights/v0.1/vgg.pth)"
    )
    lpips.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="FILE",
        help=f"output file (default: the cache, {perceptual.lpips_cache_path()})",
    )
    lpips.set_defaults(run=run_convert_lpips)

    where = what.add_parser("where", help="show where each weight file is looked for and whether it is there")
    where.set_defaults(run=run_where)


def run_convert_lpips(args: argparse.Namespace) -> int:
    out = perceptual.convert_lpips_weights(args.vgg16, args.lpips, args.output)
    print(f"wrote {out}")
    if args.output is not None and os.path.abspath(out) != os.path.abspath(perceptual.lpips_cache_path()):
        print(f"not the cache file: pass this path to load_lpips, or set {perceptual.WEIGHTS_ENV}={out}")
    return 0


def _print_lookup(spec: weights.WeightFile, in_code: str) -> None:
    print(f"{spec.what}, looked for in this order:")
    print(f"  1. a path given {in_code}")
    for number, (label, path, present) in enumerate(spec.locations(), start=2):
        state = "present" if present else "missing"
        print(f"  {number}. {label}" + (f": {path} ({state})" if path is not None else ""))


def run_where(args: argparse.Namespace) -> int:
    note = f"; off: {weights.OFFLINE_ENV} is set" if weights.offline() else ""
    _print_lookup(perceptual.LPIPS_WEIGHTS, "in code (load_lpips(path)) or by --lpips-weights")
    print(f"  4. download with pinned sha256, then convert into the cache (needs a network{note}):")
    print(f"     {perceptual.VGG16_URL}  sha256 {perceptual.VGG16_SHA256}")
    print(f"     {perceptual.LPIPS_VGG_URL}  sha256 {perceptual.LPIPS_VGG_SHA256}")
    print(f"  offline: download both elsewhere, then `{perceptual.convert_command()}`")
    _print_lookup(detectors.I3D_WEIGHTS, "in code (load_i3d(path)) or by --detector FILE.pt")
    print(f"  4. download with pinned sha256 into the cache (needs a network{note}):")
    print(f"     {detectors.I3D_URL}  sha256 {detectors.I3D_SHA256}")
    print("  a file with another sha256 is loaded only with --trust-detector (loading TorchScript runs its code)")
    return 0

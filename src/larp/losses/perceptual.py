"""LPIPS (Zhang et al. 2018) with the VGG16 trunk and the "v0.1" linear heads, built in the repo.

Numerically this is ``lpips.LPIPS(net='vgg')(x, y, normalize=True)`` of the ``lpips`` package, which is what
LARP uses as its perceptual loss and as its LPIPS metric (LARP.md C.2, E): the two inputs are scaled, run
through the VGG16 ``features`` trunk, and at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 the features
are unit-normalised over channels, their squared difference is weighted by a learned 1x1 conv (no bias),
averaged over space, and the five layer values are summed.

Neither torchvision nor the ``lpips`` package is used (see DESIGN.md): the weights come from one
safetensors file in this library's own layout, found by the library's one weight resolver
(:mod:`larp.weights`, via ``resolve_lpips_weights``) in this order:

1. the path given to ``load_lpips(path)``;
2. the environment variable ``LARP_LPIPS_WEIGHTS``;
3. the cache file ``<cache>/lpips_vgg16.safetensors``, where ``<cache>`` is ``$LARP_CACHE``, else
   ``$XDG_CACHE_HOME/larp``, else ``~/.cache/larp``;
4. when a network exists (and ``LARP_OFFLINE`` is not set), the two original files are downloaded,
   checked against pinned sha256 digests, converted, and written to the cache file.

Weight file layout (``convert_lpips_weights`` writes it; it is exactly ``LPIPS().state_dict()``):

- ``features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight`` (c_out, c_in, 3, 3) and ``.bias`` (c_out,):
  the 13 convolutions of torchvision's ``vgg16().features``, same indices and values;
- ``lins.{0..4}.weight`` (1, c, 1, 1) with c = 64, 128, 256, 512, 512: the lpips ``lin{k}.model.1.weight``;
- metadata: ``format`` = ``larp-lpips-vgg16``, ``lpips_version`` = ``0.1``, and the sha256 and source URL of
  both original files (``vgg16_sha256``, ``lpips_sha256``, ``vgg16_source``, ``lpips_source``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from larp.files import write_atomic
from larp.hub import state_dict_problems
from larp.weights import WeightFile, file_sha256
from larp.weights import download as download_verified
from larp.weights import resolve as resolve_weights

__all__ = [
    "LPIPS",
    "LPIPS_WEIGHTS",
    "WEIGHTS_ENV",
    "convert_lpips_weights",
    "download_lpips_weights",
    "load_lpips",
    "lpips_cache_path",
    "lpips_weight_locations",
    "resolve_lpips_weights",
]

logger = logging.getLogger(__name__)

WEIGHTS_ENV = "LARP_LPIPS_WEIGHTS"
CACHE_FILE_NAME = "lpips_vgg16.safetensors"
WEIGHTS_FORMAT = "larp-lpips-vgg16"

# torchvision's ImageNet VGG16 (VGG16_Weights.IMAGENET1K_V1). torchvision names its files after the first
# 8 hex digits of the sha256; the full digest is pinned in many public projects, e.g. the VGG16_SHA256
# constants and sha256sum checks of NVIDIA 3DGRUT tooling and of several public evaluation scripts
# ("vgg16": ("vgg16-397923af.pth", "397923af8e79...5bf0")), all agreeing, file size 553,433,881 bytes.
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_SHA256 = "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"
# The lpips v0.1 linear heads (7,289 bytes). The digest is pinned by public projects that fetch this file
# from the PerceptualSimilarity repository (revision 082bb24f84c091ea94de2867d34c4544f68e0963) and by ones that
# check the copy bundled in the lpips==0.1.4 wheel; taming-transformers' heibox copy has the same digest.
LPIPS_VGG_URL = "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/vgg.pth"
LPIPS_VGG_SHA256 = "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"

# torchvision's vgg16 "D" configuration: numbers are 3x3 conv widths (each followed by a ReLU), "M" a 2x2
# max-pool. The final max-pool (torchvision index 30) is left out: LPIPS stops at relu5_3 (index 29).
_VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# torchvision ``features`` indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: the ends of the LPIPS slices
# 0-3, 4-8, 9-15, 16-22, 23-29.
TAP_INDICES: tuple[int, ...] = (3, 8, 15, 22, 29)
TAP_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
# lpips ScalingLayer: ImageNet mean/std expressed for inputs in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10  # lpips normalize_tensor's eps, added to the norm (not under the sqrt)


def _vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features[:30]``: module indices 0..29 match its state-dict keys one to one."""
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(item)
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS distance with the VGG16 trunk and v0.1 linear heads; frozen, always in eval mode.

    Build it with ``load_lpips`` to get the pretrained weights; ``LPIPS()`` alone has random weights (for
    tests). Parameters never require grad, but gradients flow to the inputs, so it serves as a training loss.

    Attributes:
        features: VGG16 conv trunk, torchvision ``features`` indices 0..29.
        lins: the five 1x1 conv heads (c_k -> 1, no bias); the lpips package's dropout before them is the
            identity in eval mode, so it is left out.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in TAP_CHANNELS)
        # Not persistent: constants of the method, not weights, so the state dict equals the file layout.
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Stay in eval mode whatever a parent module asks: the loss network is frozen (LARP.md C.2)."""
        return super().train(False)

    def trunk(self, images: torch.Tensor) -> list[torch.Tensor]:
        """VGG16 activations at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.

        Args:
            images: (n, 3, h, w) already scaled by the ScalingLayer.

        Returns:
            Five tensors (n, c_k, h / 2^k, w / 2^k) with c_k = 64, 128, 256, 512, 512.
        """
        taps = []
        h = images
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in TAP_INDICES:
                taps.append(h)
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """LPIPS distance between two image batches.

        Args:
            x: (n, 3, h, w) images, in [0, 1] when ``normalize`` (the default, as LARP calls it), else in
                [-1, 1].
            y: (n, 3, h, w) images in the same range.
            normalize: map [0, 1] to [-1, 1] first (the lpips package's ``normalize=True``).

        Returns:
            (n,) distances, float32 (the lpips package returns the same values shaped (n, 1, 1, 1)).
        """
        if x.ndim != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise ValueError(
                f"LPIPS expects two (n, 3, h, w) batches of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        n = x.shape[0]
        # One trunk pass over both batches: half the kernel launches of two passes, same per-image math.
        images = torch.cat([x, y])
        if normalize:
            images = 2 * images - 1
        images = (images - self.shift) / self.scale
        taps = self.trunk(images)
        distance = images.new_zeros(n, dtype=torch.float32)
        # fp32 from here even under autocast: the normalised features of near-equal images differ by less
        # than bf16 resolves, so in bf16 the squared difference would be mostly rounding.
        with torch.autocast(images.device.type, enabled=False):
            for feature, lin in zip(taps, self.lins):
                feature = feature.float()
                feature = feature / (feature.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)
                diff = (feature[:n] - feature[n:]).pow(2)
                distance = distance + F.conv2d(diff, lin.weight.float()).mean(dim=(1, 2, 3))
        return distance

    def forward_video(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        normalize: bool = True,
        reduction: Literal["mean", "none"] = "mean",
    ) -> torch.Tensor:
        """Per-frame LPIPS of two videos, frames flattened into the batch as LARP does (LARP.md C.2, E).

        Args:
            x: (b, 3, t, h, w) video, in [0, 1] when ``normalize``.
            y: (b, 3, t, h, w) video in the same range.
            normalize: as in ``forward``.
            reduction: ``"mean"`` for the mean over all b*t frames (LARP's loss and metric), ``"none"`` for
                the per-frame distances.

        Returns:
            () scalar for ``"mean"``, else (b, t) distances.
        """
        if x.ndim != 5 or x.shape[1] != 3 or x.shape != y.shape:
            raise ValueError(
                "LPIPS video expects two (b, 3, t, h, w) videos of the same shape, "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        b, c, t, h, w = x.shape
        frames_x = x.transpose(1, 2).reshape(b * t, c, h, w)
        frames_y = y.transpose(1, 2).reshape(b * t, c, h, w)
        distance = self(frames_x, frames_y, normalize=normalize).view(b, t)
        if reduction == "mean":
            return distance.mean()
        if reduction == "none":
            return distance
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


# ---------------------------------------------------------------------------------------------------------
# Where the weights are looked for (the library's one resolver, larp.weights)


def convert_command(out: str | os.PathLike | None = None) -> str:
    """The shell command that converts the two original files offline (for messages and docs)."""
    command = "larp weights lpips --vgg16 vgg16-397923af.pth --lpips vgg.pth"
    return command if out is None else f"{command} -o {out}"


LPIPS_WEIGHTS = WeightFile(
    what="LPIPS (VGG16) weights",
    env=WEIGHTS_ENV,
    file_name=CACHE_FILE_NAME,
    how_to_get=(
        f"To get them, download {VGG16_URL} (sha256 {VGG16_SHA256}) and {LPIPS_VGG_URL} "
        f"(sha256 {LPIPS_VGG_SHA256}) on a machine with a network, then convert them with "
        f"`{convert_command()}` (writes the cache file; add -o PATH to write elsewhere)."
    ),
)


def lpips_cache_path() -> Path:
    """Where converted (or downloaded) LPIPS weights are kept: ``<cache>/lpips_vgg16.safetensors``."""
    return LPIPS_WEIGHTS.cache_path()


def resolve_lpips_weights(path: str | os.PathLike | None = None, *, download: bool | None = None) -> Path:
    """Find the LPIPS weight file as :func:`larp.weights.resolve` describes; the download fetches the two
    original files, checks their pinned sha256 digests and converts them (:func:`download_lpips_weights`).

    Args:
        path: explicit weight file; when given it must exist (no fallback, so a typo is not hidden).
        download: allow the download; ``None`` (default) means yes unless ``$LARP_OFFLINE`` is set.

    Returns:
        Path of a safetensors file in this module's layout.

    Raises:
        FileNotFoundError: no file was found and none could be downloaded; the message gives both URLs and
            the conversion command.
        DigestMismatchError: a download did not match its pinned sha256.
    """
    return resolve_weights(LPIPS_WEIGHTS, path, fetch=download_lpips_weights, download=download)


def lpips_weight_locations() -> list[tuple[str, Path | None, bool]]:
    """The places ``resolve_lpips_weights`` looks, in order, for ``larp weights where``.

    Returns:
        (description, path or None when not applicable, present) per place.
    """
    return LPIPS_WEIGHTS.locations()


# ---------------------------------------------------------------------------------------------------------
# Loading, converting, downloading


def load_lpips(
    path: str | os.PathLike | None = None,
    *,
    device: torch.device | str | None = None,
    download: bool | None = None,
) -> LPIPS:
    """The pretrained LPIPS-VGG16 network, frozen and in eval mode.

    Args:
        path: weight file; when None it is found as ``resolve_lpips_weights`` describes.
        device: where to put the module (default CPU).
        download: see ``resolve_lpips_weights``.

    Raises:
        FileNotFoundError: no weights (the message says how to get them).
        ValueError: the file is not an LPIPS weight file of this layout (missing, extra or misshapen keys).
    """
    weights = resolve_lpips_weights(path, download=download)
    model = LPIPS()
    expected = model.state_dict()
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"'{weights}' is not a readable safetensors file: {error}") from error
    _check_keys(state, expected, weights, hint=f"convert the original files with `{convert_command()}`")
    model.load_state_dict(state, strict=True)
    logger.info("LPIPS-VGG16 weights from %s", weights)
    return model.to(device) if device is not None else model


def _check_keys(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    source: str | os.PathLike,
    *,
    hint: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Raise a ValueError naming every missing, unexpected or misshapen key of ``state``."""
    problems = state_dict_problems(dict(state), dict(expected), ignore_prefixes=ignore_prefixes)
    if problems:
        raise ValueError(f"'{source}' does not have the expected weights ({'; '.join(problems)}); {hint}")


def _load_pth(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file '{path}' does not exist")
    try:
        # weights_only: a .pth is a pickle; never execute code from a downloaded file.
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises several types for a bad file; one clear message for all
        raise ValueError(f"cannot read {what} file '{path}' as a PyTorch state dict: {error}") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{what} file '{path}' is not a flat state dict of tensors")
    return dict(state)


def convert_lpips_weights(
    vgg16_pth: str | os.PathLike,
    lpips_vgg_pth: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
) -> Path:
    """Convert torchvision's ``vgg16-397923af.pth`` and lpips' ``v0.1/vgg.pth`` into one safetensors file.

    Both files are read with ``torch.load(weights_only=True)``. Keys are checked strictly: every VGG16
    ``features.N.{weight,bias}`` and every ``lin{k}.model.1.weight`` must be present with torchvision's /
    lpips' shapes; torchvision's ``classifier.*`` keys are dropped; anything else is an error. A source whose
    sha256 differs from the pinned digest is converted with a warning (and its digest is recorded).

    Args:
        vgg16_pth: torchvision VGG16 state dict (``https://download.pytorch.org/models/vgg16-397923af.pth``).
        lpips_vgg_pth: lpips v0.1 linear heads (``lpips/weights/v0.1/vgg.pth`` of PerceptualSimilarity).
        out_path: output file; default ``lpips_cache_path()``.

    Returns:
        The path written (atomically: a temporary name, then a rename).

    Raises:
        FileNotFoundError: a source file does not exist.
        ValueError: a source is not a state dict, or has missing, unexpected or misshapen keys.
    """
    vgg16_pth, lpips_vgg_pth = Path(vgg16_pth).expanduser(), Path(lpips_vgg_pth).expanduser()
    out = Path(out_path).expanduser() if out_path is not None else lpips_cache_path()
    expected = LPIPS().state_dict()

    vgg = _load_pth(vgg16_pth, "VGG16")
    features = {k: v for k, v in expected.items() if k.startswith("features.")}
    _check_keys(
        vgg,
        features,
        vgg16_pth,
        hint=f"expected torchvision's vgg16 state dict ({VGG16_URL})",
        ignore_prefixes=("classifier.",),
    )
    heads = _load_pth(lpips_vgg_pth, "LPIPS")
    lins = {f"lin{k}.model.1.weight": expected[f"lins.{k}.weight"] for k in range(len(TAP_CHANNELS))}
    _check_keys(heads, lins, lpips_vgg_pth, hint=f"expected the lpips v0.1 vgg.pth ({LPIPS_VGG_URL})")

    state = {key: vgg[key].float().contiguous() for key in features}
    for k in range(len(TAP_CHANNELS)):
        state[f"lins.{k}.weight"] = heads[f"lin{k}.model.1.weight"].float().contiguous()
    digests = {"vgg16": file_sha256(vgg16_pth), "lpips": file_sha256(lpips_vgg_pth)}
    for name, pinned in (("vgg16", VGG16_SHA256), ("lpips", LPIPS_VGG_SHA256)):
        digest = digests[name]
        if digest != pinned:
            logger.warning("%s source has sha256 %s, not the published %s: converting it anyway", name, digest, pinned)
    metadata = {
        "format": WEIGHTS_FORMAT,
        "lpips_version": "0.1",
        "vgg16_sha256": digests["vgg16"],
        "lpips_sha256": digests["lpips"],
        "vgg16_source": VGG16_URL,
        "lpips_source": LPIPS_VGG_URL,
    }
    # atomic: a crash never leaves a half file in the cache
    write_atomic(out, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    logger.info("wrote LPIPS-VGG16 weights to %s", out)
    return out


def download_lpips_weights(out_path: str | os.PathLike | None = None) -> Path:
    """Download the two original files, verify their pinned sha256 digests, and convert them.

    The originals (528 MB and 7 kB) are kept only in a temporary folder next to the output; the converted file
    holds just the VGG16 conv trunk and the heads (about 59 MB).

    Args:
        out_path: output file; default ``lpips_cache_path()``.

    Returns:
        The converted file.

    Raises:
        urllib.error.URLError, TimeoutError, ConnectionError: no network (``resolve_lpips_weights`` turns
            these into a FileNotFoundError with instructions).
        larp.weights.DigestMismatchError: a downloaded file does not match its pinned digest.
    """
    out = Path(out_path).expanduser() if out_path is not None else lpips_cache_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".lpips-download-") as folder:
        vgg16 = Path(folder) / "vgg16-397923af.pth"
        heads = Path(folder) / "vgg.pth"
        # The small file first: with no network it fails fast, before anything large is attempted.
        download_verified(LPIPS_VGG_URL, heads, sha256=LPIPS_VGG_SHA256)
        download_verified(VGG16_URL, vgg16, sha256=VGG16_SHA256)
        return convert_lpips_weights(vgg16, heads, out)

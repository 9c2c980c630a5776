"""Video feature extractors ("detectors") for FVD, behind one small interface.

Every detector takes videos (b, 3, t, h, w) float in [0, 1], does its own range conversion and resizing,
and returns (b, feature_dim) float64 features on the CPU, ready for :class:`larp.evaluation.fvd.FeatureStats`.
Each has a ``name`` and a ``sha256`` that identify it exactly; record both (``describe()``) with every result,
because an FVD is only comparable to another FVD computed with the same detector.

* :class:`I3DDetector`: the StyleGAN-V TorchScript I3D (``i3d_torchscript.pt``, Kinetics-400), the detector
  LARP uses (LARP.md E.1). Called as ``i3d((video - 0.5) * 2, rescale=False, resize=True,
  return_features=True)`` on BCTHW input in [-1, 1]; it resizes to 224x224 itself and returns the 400
  pre-softmax logits as features.
* :class:`ClassifierDetector`: the small :class:`~larp.evaluation.video_classifier.VideoClassifier`, the
  detector for data without I3D weights (the synthetic set); it also predicts classes for class accuracy.

Where the I3D file is found (:func:`resolve_i3d_weights`, the library's one resolver :mod:`larp.weights`):
the path given, then ``$LARP_I3D_WEIGHTS``, then ``<cache>/i3d_torchscript.pt``, then (unless ``LARP_OFFLINE``
is set) a download from the URL StyleGAN-V uses, verified against the pinned sha256 before it is kept.

Loading a TorchScript file runs the code it contains, so :func:`load_i3d` checks the file's sha256 *before*
``torch.jit.load``: the pinned StyleGAN-V I3D (:data:`I3D_SHA256`) loads; any other ``.pt`` (a stand-in, a
re-export, a file of unknown origin) is refused unless the user trusts it explicitly (``trust=True``,
``larp evaluate --trust-detector``), and every result made with it records ``detector_trusted_by_user``
together with the file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from larp.config import config_to_dict
from larp.evaluation.video_classifier import VideoClassifier
from larp.models.layers import check_unit_range
from larp.weights import WeightFile, file_sha256
from larp.weights import download as download_verified
from larp.weights import resolve as resolve_weights

__all__ = [
    "I3D_URL",
    "I3D_SHA256",
    "I3D_WEIGHTS",
    "UntrustedDetectorError",
    "I3D_WEIGHTS_ENV",
    "I3D_FILE_NAME",
    "I3D_FEATURE_DIM",
    "I3D_MIN_FRAMES",
    "FeatureDetector",
    "I3DDetector",
    "ClassifierDetector",
    "resolve_i3d_weights",
    "i3d_cache_path",
    "download_i3d_weights",
    "load_i3d",
    "load_detector",
    "detector_features",
    "state_dict_sha256",
]

logger = logging.getLogger(__name__)

I3D_WEIGHTS_ENV = "LARP_I3D_WEIGHTS"
I3D_FILE_NAME = "i3d_torchscript.pt"
# The URL StyleGAN-V's FVD metric downloads the detector from (metrics/frechet_video_distance.py); the
# same file is checked into the official LARP repo as utils/fvd/i3d_torchscript.pt (LARP.md E.1).
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"
# The sha256 and size of that file. Not measured here (no network): it is the digest pinned, all agreeing, by
# several independent public projects that check the StyleGAN-V i3d_torchscript.pt before loading it (FVD
# evaluation scripts and download scripts fetching it from the Dropbox URL above or a Hugging Face mirror,
# each listing 51,235,320 bytes). A file with any other digest is not loaded without an explicit opt-in.
I3D_SHA256 = "bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2"
I3D_SIZE = 51_235_320
I3D_FEATURE_DIM = 400  # the Kinetics-400 logits, taken before the softmax
# The I3D's temporal pooling needs about 10 frames; the official trainer checks T >= 10 (the rFVD
# evaluator even T >= 12), and shorter clips fail deep inside the TorchScript with an opaque error.
I3D_MIN_FRAMES = 10
# The I3D's keyword arguments as LARP calls it: the caller maps [0, 1] to [-1, 1], so no rescaling inside;
# the TorchScript resizes to 224x224; the 400-d logits are the features (LARP.md E.1).
I3D_CALL_KWARGS = {"rescale": False, "resize": True, "return_features": True}


# ---------------------------------------------------------------------------------------------- interface
class FeatureDetector(nn.Module):
    """Common interface of FVD feature extractors; frozen and always in eval mode.

    Subclasses set the attributes below and implement :meth:`_extract`; :meth:`features` validates the
    input, runs ``_extract`` without gradients and checks its output.

    Attributes:
        kind: the family, e.g. ``"i3d"`` or ``"video-classifier"``.
        name: what the detector is, e.g. ``"i3d:/path/i3d_torchscript.pt"``.
        sha256: hex digest identifying the exact weights (of the file, or of the state dict).
        feature_dim: width d of the features.
        min_frames: the fewest frames a clip may have.
        provenance: how this detector came to be, for the result record (who built it: e.g.
            ``{"trained_now": True, "path": ...}`` for a detector trained by this run).
    """

    kind: str
    name: str
    sha256: str
    feature_dim: int
    min_frames: int
    provenance: dict[str, Any]

    def train(self, mode: bool = True) -> FeatureDetector:
        """Stay in eval mode whatever a parent module asks: a detector is a fixed measuring instrument."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """Where the detector's weights are (CPU for a detector without tensors)."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def _check_video(self, video: torch.Tensor) -> None:
        if not isinstance(video, torch.Tensor):
            raise ValueError(f"{self.name}: expected a video tensor, got {type(video).__name__}")
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(
                f"{self.name}: expected a video of shape (batch, 3, frames, height, width), "
                f"got shape {tuple(video.shape)}"
            )
        if not video.is_floating_point():
            raise ValueError(f"{self.name}: expected a float video with values in [0, 1], got dtype {video.dtype}")
        if video.shape[0] == 0 or min(video.shape[3:]) == 0:
            raise ValueError(f"{self.name}: expected a non-empty video batch, got shape {tuple(video.shape)}")
        if video.shape[2] < self.min_frames:
            raise ValueError(
                f"{self.name}: expected clips of at least {self.min_frames} frames, got {video.shape[2]} "
                f"(shape {tuple(video.shape)})"
            )
        check_unit_range(video)

    def _extract(self, video: torch.Tensor) -> torch.Tensor:
        """Raw features (b, feature_dim) of a validated video (b, 3, t, h, w) in [0, 1] on ``self.device``."""
        raise NotImplementedError

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """Features of a batch of clips.

        Args:
            video: (b, 3, t, h, w) float in [0, 1], t >= ``min_frames``, on any device (moved to the
                detector's).

        Returns:
            (b, feature_dim) float64 on the CPU (float64 because the Fréchet distance takes a matrix square
            root of covariances, where float32 loses digits).
        """
        self._check_video(video)
        with torch.no_grad():
            out = self._extract(video.to(self.device))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (video.shape[0], self.feature_dim):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"{self.name}: expected features of shape ({video.shape[0]}, {self.feature_dim}), got {shape}"
            )
        return out.detach().to(device="cpu", dtype=torch.float64)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`features`."""
        return self.features(video)

    def metadata(self) -> dict[str, str]:
        """What identifies the detector, for result records and ``FeatureStats.metadata``."""
        return {
            "detector": self.name,
            "detector_sha256": self.sha256,
            "detector_feature_dim": str(self.feature_dim),
            "detector_min_frames": str(self.min_frames),
        }

    def describe(self) -> dict[str, Any]:
        """What a result record says about the detector: kind, name, sha256 and its provenance."""
        return {"kind": self.kind, "name": self.name, "sha256": self.sha256, **self.provenance}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, sha256={self.sha256[:12]}..., feature_dim={self.feature_dim}"


# ---------------------------------------------------------------------------------------------------- I3D
class I3DDetector(FeatureDetector):
    """The StyleGAN-V TorchScript I3D (or any TorchScript module with the same call signature).

    Build with :func:`load_i3d`. The module is called as
    ``module(x, rescale=False, resize=True, return_features=True)`` with ``x = (video - 0.5) * 2`` in
    [-1, 1], BCTHW, float32.
    """

    def __init__(
        self,
        module: torch.jit.ScriptModule | nn.Module,
        *,
        path: str | os.PathLike | None = None,
        sha256: str | None = None,
        feature_dim: int = I3D_FEATURE_DIM,
        min_frames: int = I3D_MIN_FRAMES,
    ):
        """
        Args:
            module: the loaded TorchScript I3D.
            path: the file it was loaded from (names the detector; its sha256 is computed when ``sha256``
                is not given).
            sha256: hex digest of the file, when already known.
            feature_dim: width of the features the module returns (400 for the Kinetics-400 I3D).
            min_frames: the fewest frames a clip may have.
        """
        super().__init__()
        if sha256 is None:
            if path is None:
                raise ValueError("I3DDetector needs the weight file's path or its sha256 to identify the detector")
            sha256 = file_sha256(path)
        self.module = module
        self.kind = "i3d"
        self.path = Path(path) if path is not None else None
        self.name = f"i3d:{self.path}" if self.path is not None else "i3d:in-memory"
        self.sha256 = sha256
        self.feature_dim = int(feature_dim)
        self.min_frames = int(min_frames)
        self.provenance = {}
        self.eval()

    @property
    def trusted_by_user(self) -> bool:
        """Whether the file is not the pinned I3D and was loaded only because the user trusted it."""
        return bool(self.provenance.get("detector_trusted_by_user", False))

    def _extract(self, video: torch.Tensor) -> torch.Tensor:
        # float32 whatever the caller's precision: the TorchScript's weights are float32 and it does not
        # cast its input itself.
        x = (video.float() - 0.5) * 2
        return self.module(x, **I3D_CALL_KWARGS)


I3D_WEIGHTS = WeightFile(
    what=f"I3D weights ({I3D_FILE_NAME})",
    env=I3D_WEIGHTS_ENV,
    file_name=I3D_FILE_NAME,
    how_to_get=(
        f"To get them, download {I3D_URL} (the StyleGAN-V TorchScript I3D, {I3D_SIZE:,} bytes, sha256 "
        f"{I3D_SHA256}; the official LARP repo also ships it as utils/fvd/{I3D_FILE_NAME}) on a machine with "
        "a network."
    ),
)


def i3d_cache_path() -> Path:
    """Where a downloaded I3D is kept: ``larp.weights.cache_dir() / "i3d_torchscript.pt"``."""
    return I3D_WEIGHTS.cache_path()


def resolve_i3d_weights(path: str | os.PathLike | None = None, *, download: bool | None = None) -> Path:
    """Find the I3D TorchScript file as :func:`larp.weights.resolve` describes (explicit path, then
    ``$LARP_I3D_WEIGHTS``, then the cache, then a download checked against :data:`I3D_SHA256`).

    Finding a file does not make it safe to load: :func:`load_i3d` checks its digest first.

    Args:
        path: explicit file; when given it must exist (no fallback, so a typo is not hidden).
        download: allow fetching :data:`I3D_URL` when nothing is found locally. ``None`` (default) means
            yes unless the environment variable ``LARP_OFFLINE`` is set to a non-empty value other than ``0``.

    Raises:
        FileNotFoundError: no file was found and none could be downloaded; the message says where it
            looked, the URL to get the file from, and where to put it.
        larp.weights.DigestMismatchError: the download is not the pinned file (nothing is written).
    """
    return resolve_weights(I3D_WEIGHTS, path, fetch=download_i3d_weights, download=download)


def download_i3d_weights(out_path: str | os.PathLike | None = None, *, timeout: float = 60.0) -> Path:
    """Download :data:`I3D_URL` to ``out_path`` (default the cache file), verified against :data:`I3D_SHA256`.

    Streamed to a temporary file beside the target and renamed only once complete with the pinned digest,
    so a cut download, an HTML error page or a substituted file never lands in the cache.

    Raises:
        urllib.error.URLError, TimeoutError, ConnectionError: no network.
        larp.weights.DigestMismatchError: the download is not the pinned file.
    """
    out = Path(out_path).expanduser() if out_path is not None else i3d_cache_path()
    return download_verified(I3D_URL, out, sha256=I3D_SHA256, timeout=timeout)


class UntrustedDetectorError(ValueError):
    """A TorchScript detector file that is not the pinned I3D, and that the user did not choose to trust."""


def _untrusted_message(path: Path, sha256: str) -> str:
    return (
        f"refusing to load '{path}': its sha256 {sha256} is not the pinned StyleGAN-V {I3D_FILE_NAME} "
        f"({I3D_SHA256}), and loading a TorchScript file runs the code inside it. If you made or checked this "
        "file yourself, pass --trust-detector (trust=True in Python); the result then records "
        "detector_trusted_by_user with this digest"
    )


def load_i3d(
    path: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    *,
    download: bool | None = None,
    trust: bool = False,
) -> I3DDetector:
    """The TorchScript I3D as a :class:`I3DDetector`, frozen and in eval mode.

    ``torch.jit.load`` executes the code a TorchScript archive contains, so the file's sha256 is checked
    before it is loaded: the pinned StyleGAN-V I3D (:data:`I3D_SHA256`) loads; any other file is refused
    unless ``trust`` is given, and then the detector says so (``trusted_by_user``), for the result record.

    Args:
        path: the ``.pt`` file; when None it is found as :func:`resolve_i3d_weights` describes.
        device: where to load it (``torch.jit.load(..., map_location=device)``).
        download: see :func:`resolve_i3d_weights`.
        trust: load a file that is not the pinned I3D (a stand-in, a re-export); the user vouches for it.

    Raises:
        FileNotFoundError: no weights (the message says how to get them).
        UntrustedDetectorError: the file is not the pinned I3D and ``trust`` is False (nothing was loaded).
        ValueError: the file is not a loadable TorchScript module.
    """
    weights = resolve_i3d_weights(path, download=download)
    sha256 = file_sha256(weights)
    known = sha256 == I3D_SHA256
    if not known and not trust:
        raise UntrustedDetectorError(_untrusted_message(weights, sha256))
    if not known:
        logger.warning("loading the untrusted detector file %s (sha256 %s) because it was trusted explicitly",
                       weights, sha256)
    try:
        with warnings.catch_warnings():
            # torch warns that TorchScript is deprecated; the published I3D exists only in that format.
            warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=DeprecationWarning)
            module = torch.jit.load(str(weights), map_location=device)
    except Exception as error:  # torch raises RuntimeError and others for a bad archive; one clear message
        raise ValueError(
            f"'{weights}' is not a loadable TorchScript module (expected the StyleGAN-V {I3D_FILE_NAME}): {error}"
        ) from error
    module.eval()
    detector = I3DDetector(module, path=weights, sha256=sha256)
    detector.provenance = {"pinned": known, "detector_trusted_by_user": not known}
    logger.info("I3D detector %s, sha256 %s%s", weights, sha256, "" if known else " (trusted by the user)")
    return detector


# ----------------------------------------------------------------------------------------- classifier
def state_dict_sha256(model: nn.Module, extra: str = "") -> str:
    """Hex sha256 over a module's state dict: per key (sorted) its name, dtype, shape and raw bytes.

    Args:
        model: the module.
        extra: text hashed first (e.g. the config), for settings that change the function but not the
            tensors.
    """
    digest = hashlib.sha256(extra.encode())
    for key, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"\0{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        # Reinterpret as bytes (works for every dtype, bf16 included, unlike .numpy()).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ClassifierDetector(FeatureDetector):
    """A :class:`VideoClassifier` as a detector: its pooled features for FVD, its argmax for class accuracy."""

    def __init__(self, classifier: VideoClassifier, *, source: str | os.PathLike | None = None):
        """
        Args:
            classifier: the trained classifier (any device).
            source: the folder it was loaded from, which names the detector; None means ``"in-memory"``.
        """
        super().__init__()
        if not isinstance(classifier, VideoClassifier):
            raise ValueError(f"ClassifierDetector wraps a VideoClassifier, got {type(classifier).__name__}")
        self.classifier = classifier
        self.kind = "video-classifier"
        self.name = f"video-classifier:{source if source is not None else 'in-memory'}"
        self.provenance = {}
        # The config goes into the digest too: norm_groups changes the function without changing any
        # tensor's shape.
        config = json.dumps(config_to_dict(classifier.config), sort_keys=True)
        self.sha256 = state_dict_sha256(classifier, extra=config)
        self.feature_dim = classifier.config.feature_dim
        # Global pooling and zero-padded frame differences make any clip length work, one frame included.
        self.min_frames = 1
        self.eval()

    @property
    def num_classes(self) -> int:
        return self.classifier.config.num_classes

    def _extract(self, video: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(video)

    def predict(self, video: torch.Tensor) -> torch.Tensor:
        """Predicted class of each clip.

        Args:
            video: (b, 3, t, h, w) float in [0, 1].

        Returns:
            (b,) int64 class ids on the CPU.
        """
        self._check_video(video)
        with torch.no_grad():
            logits = self.classifier(video.to(self.device))
        return logits.argmax(dim=1).cpu()


# ------------------------------------------------------------------------------------------- dispatch
def load_detector(
    spec: str | os.PathLike, device: torch.device | str = "cpu", *, trust: bool = False
) -> FeatureDetector:
    """A detector from a short description.

    Args:
        spec: ``"i3d"`` (the I3D, found as :func:`resolve_i3d_weights` describes); a path to a ``.pt``
            TorchScript file with the I3D's call signature; or a folder written by
            ``VideoClassifier.save_pretrained`` (safetensors: loading it runs no code).
        device: where to put it.
        trust: load a TorchScript file that is not the pinned I3D (see :func:`load_i3d`).

    Raises:
        FileNotFoundError: the file or folder does not exist, or the I3D weights are missing.
        UntrustedDetectorError: a TorchScript file that is not the pinned I3D, without ``trust``.
        ValueError: ``spec`` is an existing file that is not a ``.pt`` file, or the file/folder does not hold
            what it should.
    """
    if str(spec) == "i3d":
        return load_i3d(None, device, trust=trust)
    path = Path(spec).expanduser()
    if path.is_dir():
        # Local folders only (VideoClassifier.from_pretrained would also try the HF hub for a bare name).
        classifier = VideoClassifier.from_pretrained(path, device=device)
        return ClassifierDetector(classifier, source=path)
    if path.suffix == ".pt":
        return load_i3d(path, device, trust=trust)
    expected = "'i3d', a TorchScript .pt file, or a folder saved by VideoClassifier.save_pretrained"
    if path.is_file():
        raise ValueError(f"detector '{spec}' is a file without the .pt suffix; expected {expected}")
    raise FileNotFoundError(f"detector '{spec}' not found; expected {expected}")


def detector_features(
    detector: FeatureDetector,
    videos: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int = 32,
) -> torch.Tensor:
    """Features of many clips, in batches.

    Args:
        detector: any :class:`FeatureDetector`.
        videos: an (n, 3, t, h, w) tensor, split into batches of ``batch_size``; or an iterable of
            (b, 3, t, h, w) batches, each run as it comes (``batch_size`` is then unused).

    Returns:
        (n, feature_dim) float64 on the CPU, in input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if isinstance(videos, torch.Tensor):
        if videos.ndim != 5:
            raise ValueError(f"expected videos of shape (n, 3, t, h, w), got {tuple(videos.shape)}")
        tensor = videos
        batches: Iterable[torch.Tensor] = (tensor[i : i + batch_size] for i in range(0, tensor.shape[0], batch_size))
    else:
        batches = videos
    parts = [detector.features(batch) for batch in batches]
    return torch.cat(parts) if parts else torch.empty(0, detector.feature_dim, dtype=torch.float64)

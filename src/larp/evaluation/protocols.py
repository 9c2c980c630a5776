"""The paper's evaluation protocols as typed records, and the deterministic choice of clips they score.

Three protocols (LARP.md E.2-E.4), each an :class:`EvalProtocol` in :data:`PROTOCOLS`:

* ``ucf-recon`` (rFVD, PSNR, LPIPS, MSE; E.2): one 16-frame clip per UCF-101 split-1 *train* video (all
  9,537), resized to 128; the tokenizer encodes with deterministic (argmax) VQ under fp16 autocast and
  decodes; the rFVD compares the reconstructions with their own input clips. **Deviation:** the official
  evaluator picks each clip's start with the unseeded ``np.random``, so its rFVD varies from run to run;
  here the start is drawn from a generator seeded by ``(seed, video index)``, so a run is repeatable and
  does not depend on the number of processes.
* ``ucf-gen`` (class-conditional gFVD; E.3): all non-overlapping 16-frame chunks ``[16k, 16k+16)`` of every
  UCF train video, then ``random.Random(42).sample(range(len(chunks)), 10000)``, exactly as the official
  ``sample.py``. One video per chosen clip is generated with CFG 1.25, conditioned on that clip's label, so
  the generated class histogram is the clip-weighted one; FVD of 10k generated vs the 10k real clips.
* ``synthetic-recon`` / ``synthetic-gen`` / ``synthetic-fp``: the same three tasks on the built-in synthetic
  data at 32x32, scored offline by the synthetic-data detector (no I3D weights needed).
* ``k600-fp`` (frame prediction; E.4): the same chunking of Kinetics-600 val, 50,000 chunks with seed 42;
  condition on the first 5 frames (padded to 16 by repeating frame 5), generate, decode all 16 frames (the
  5 conditioning frames are re-synthesised, not pasted), resize generated and real clips to 64x64 and
  compute the FVD. Official quirk kept as the default: the condition is encoded with *stochastic* VQ
  (``condition_tokens_stochastic=True``), because the official code never switches VQ to deterministic there.

Clips are chosen by :func:`select_clips` from the frame counts of the videos, identically in every
process; :func:`shard` then gives each process its disjoint part. The reference values in
``EvalProtocol.reference`` are the official numbers for the unmodified protocol: once overrides change a
protocol (:func:`resolve_protocol` returns which), they are no longer a like-for-like comparison.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from larp.config import config_from_dict, config_to_dict
from larp.precision import PRECISIONS

__all__ = [
    "EvalProtocol",
    "PROTOCOLS",
    "OVERRIDABLE_FIELDS",
    "resolve_protocol",
    "select_clips",
    "chunk_starts",
    "shard",
]

T = TypeVar("T")

Task = Literal["reconstruction", "generation", "prediction"]
ClipSelection = Literal["one-per-video", "all-chunks"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # = larp.precision.PRECISIONS, resolved per device there

_TASKS = ("reconstruction", "generation", "prediction")
_CLIP_SELECTIONS = ("one-per-video", "all-chunks")
_PRECISIONS = PRECISIONS
_I3D_MIN_FRAMES = 10  # = detectors.I3D_MIN_FRAMES; copied so protocols need not import the model code


@dataclass(frozen=True)
class EvalProtocol:
    """Everything that defines one evaluation, so that a result can say exactly how it was obtained.

    Fields that do not concern a protocol's task keep their defaults and are ignored (for example
    ``cfg_scale`` for reconstruction).
    """

    name: str
    task: Task
    dataset: str  # what the clips come from, in words (the reader takes the actual files)
    frames: int = 16  # consecutive frames per clip, at the video's native frame rate
    size: int = 128  # resize the shorter side to this (bilinear, antialias), then centre-crop a square; no flip
    clip_selection: ClipSelection = "one-per-video"
    num_samples: int | None = None  # clips scored; None = every candidate clip
    seed: int = 42  # seeds the clip choice (select_clips); the official choice of 10k/50k clips uses 42
    batch_size: int = 32  # clips per step (results do not depend on it, up to floating point)
    # Tokenizer: autocast precision of encode/decode (resolved by larp.precision: fp16 needs CUDA, auto is bf16
    # on CUDA and fp32 elsewhere), and whether scored clips are encoded with argmax VQ.
    precision: Precision = "fp16"
    deterministic_tokens: bool = True  # reconstruction: encode with argmax VQ (the official --det)
    # Generator (generation and prediction tasks).
    generator_precision: Precision = "bf16"  # official sample.py casts the whole AR model to bf16
    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    labels_from_clips: bool = False  # generation: condition on the labels of the chosen real clips
    # Prediction: frames given, encoded with sampled (stochastic) VQ tokens as the official code does,
    # and whether the given frames are pasted over the re-synthesised ones before scoring (official: no).
    condition_frames: int = 0
    condition_tokens_stochastic: bool = False
    paste_condition_frames: bool = False
    # FVD: the detector ("i3d", or anything larp.evaluation.detectors.load_detector accepts), and the size
    # both real and generated clips are resized to before it (None = as decoded; k600-fp uses 64x64).
    detector: str = "i3d"
    fvd_size: int | None = None
    metrics: tuple[str, ...] = ("fvd",)
    # The official numbers for this protocol (metric -> value) and where they come from. Not part of
    # hashing: a dict is unhashable.
    reference: dict[str, float] = field(default_factory=dict, hash=False)
    reference_source: str = ""

    def __post_init__(self):
        problems = []
        if not self.name:
            problems.append("name must not be empty")
        if self.task not in _TASKS:
            problems.append(f"task must be one of {list(_TASKS)}, got {self.task!r}")
        if self.clip_selection not in _CLIP_SELECTIONS:
            problems.append(f"clip_selection must be one of {list(_CLIP_SELECTIONS)}, got {self.clip_selection!r}")
        for name in ("precision", "generator_precision"):
            if getattr(self, name) not in _PRECISIONS:
                problems.append(f"{name} must be one of {list(_PRECISIONS)}, got {getattr(self, name)!r}")
        if self.frames < 1 or self.size < 1 or self.batch_size < 1:
            problems.append(
                f"frames, size and batch_size must be positive, got {self.frames}, {self.size}, {self.batch_size}"
            )
        if self.num_samples is not None and self.num_samples < 1:
            problems.append(f"num_samples must be positive or None (all clips), got {self.num_samples}")
        if self.fvd_size is not None and self.fvd_size < 1:
            problems.append(f"fvd_size must be positive or None, got {self.fvd_size}")
        if self.cfg_scale <= 0 or self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            problems.append(
                "expected cfg_scale > 0, temperature >= 0, top_k >= 0 and 0 < top_p <= 1, got "
                f"{self.cfg_scale}, {self.temperature}, {self.top_k}, {self.top_p}"
            )
        if self.task == "prediction":
            if not 1 <= self.condition_frames < self.frames:
                problems.append(
                    f"prediction needs 1 <= condition_frames < frames ({self.frames}), got {self.condition_frames}"
                )
            if self.cfg_scale != 1.0:
                # The frame-prediction generator has no unconditional path (LARP.md D.3, D.4).
                problems.append(
                    f"prediction has no classifier-free guidance: cfg_scale must be 1.0, got {self.cfg_scale}"
                )
        elif self.condition_frames != 0:
            problems.append(f"condition_frames is for the prediction task only, got {self.condition_frames}")
        if not self.detector:
            problems.append("detector must not be empty")
        elif self.detector == "i3d" and self.frames < _I3D_MIN_FRAMES:
            problems.append(
                f"the I3D detector needs clips of at least {_I3D_MIN_FRAMES} frames, got frames={self.frames}"
            )
        if not self.metrics:
            problems.append("metrics must not be empty")
        if problems:
            raise ValueError(f"invalid EvalProtocol {self.name!r}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The protocol as a JSON-ready dict, to record next to every result."""
        return config_to_dict(self)


# What the synthetic protocols share: 512 held-out 32x32 clips, fp32, the synthetic-data detector.
_SYNTHETIC = dict(
    dataset="built-in synthetic moving shapes, held-out set (seed 1)",
    size=32,
    num_samples=512,
    batch_size=64,
    precision="fp32",
    generator_precision="fp32",
    detector="synthetic",
)

PROTOCOLS: dict[str, EvalProtocol] = {
    # LARP.md E.2; reference: the comment at the end of the official eval_larp_tokenizer.py.
    "ucf-recon": EvalProtocol(
        name="ucf-recon",
        task="reconstruction",
        dataset="UCF-101 split-1 train (ucf101_train.csv, 9,537 videos)",
        clip_selection="one-per-video",
        num_samples=None,
        batch_size=32,
        precision="fp16",
        deterministic_tokens=True,
        metrics=("fvd", "psnr", "lpips", "mse"),
        reference={"fvd": 19.533, "psnr": 28.703, "lpips": 0.07546, "mse": 0.0017696},
        reference_source="official eval_larp_tokenizer.py reference output (README / Table 1: rFVD 20)",
    ),
    # LARP.md E.3; reference: README / Table 1, LARP-L-Long tokenizer + 632M AR.
    "ucf-gen": EvalProtocol(
        name="ucf-gen",
        task="generation",
        dataset="UCF-101 split-1 train (ucf101_train.csv), all non-overlapping 16-frame chunks",
        clip_selection="all-chunks",
        num_samples=10_000,
        batch_size=64,
        precision="fp16",
        generator_precision="bf16",
        cfg_scale=1.25,
        labels_from_clips=True,
        reference={"fvd": 57.0},
        reference_source="README / Table 1 (LARP-L-Long-AR, 632M)",
    ),
    # LARP.md E.4; reference: README / Table 1, LARP-L-Long tokenizer + 632M AR-FP.
    "k600-fp": EvalProtocol(
        name="k600-fp",
        task="prediction",
        dataset="Kinetics-600 val (k600_val.csv, 29,739 videos), all non-overlapping 16-frame chunks",
        clip_selection="all-chunks",
        num_samples=50_000,
        batch_size=64,
        precision="fp32",
        generator_precision="bf16",
        condition_frames=5,
        condition_tokens_stochastic=True,
        paste_condition_frames=False,
        fvd_size=64,
        reference={"fvd": 5.1},
        reference_source="README / Table 1 (LARP-L-Long-AR-FP, 632M)",
    ),
    # The built-in synthetic data (larp.data.synthetic), scored offline with the synthetic-data detector: a
    # small video classifier trained on the synthetic training set, whose argmax also gives the class
    # accuracy of class-conditional samples. Clips: the held-out set (seed 1), one 16-frame clip per video.
    "synthetic-recon": EvalProtocol(
        name="synthetic-recon",
        task="reconstruction",
        metrics=("fvd", "psnr", "ssim", "class_accuracy"),
        **_SYNTHETIC,
    ),
    "synthetic-gen": EvalProtocol(
        name="synthetic-gen",
        task="generation",
        cfg_scale=1.25,
        labels_from_clips=True,
        metrics=("fvd", "class_accuracy"),
        **_SYNTHETIC,
    ),
    "synthetic-fp": EvalProtocol(
        name="synthetic-fp",
        task="prediction",
        condition_frames=5,
        metrics=("fvd", "psnr", "class_accuracy"),
        **_SYNTHETIC,
    ),
}

# What defines a protocol's identity and its official numbers cannot be overridden.
_FIXED_FIELDS = ("name", "task", "reference", "reference_source")
OVERRIDABLE_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(EvalProtocol) if f.name not in _FIXED_FIELDS
)


def resolve_protocol(
    name: str, overrides: Mapping[str, Any] | None = None
) -> tuple[EvalProtocol, dict[str, Any]]:
    """A named protocol with some fields changed, strictly.

    Args:
        name: one of :data:`PROTOCOLS`.
        overrides: field -> new value (e.g. ``{"num_samples": 512, "seed": 0}``); fields in
            :data:`OVERRIDABLE_FIELDS`, values of the field's type (an int is accepted for a float, a list for
            a tuple).

    Returns:
        ``(protocol, applied)``: the protocol with the overrides applied, and the overrides that actually
        changed a value (type-converted), to record with the result. An empty ``applied`` means the
        protocol is the paper's, and its ``reference`` values are comparable.

    Raises:
        ValueError: unknown protocol, unknown or fixed field, wrong type, or an invalid combination; the
            message lists the valid names.
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}; valid protocols are {sorted(PROTOCOLS)}")
    base = PROTOCOLS[name]
    overrides = dict(overrides or {})
    bad = sorted(k for k in overrides if k not in OVERRIDABLE_FIELDS)
    if bad:
        raise ValueError(
            f"protocol {name!r}: cannot override {bad}; valid fields are {sorted(OVERRIDABLE_FIELDS)}"
            f" ({', '.join(_FIXED_FIELDS)} are fixed)"
        )
    # Type checking and conversion by the strict config reader, over the whole record; the base values
    # pass unchanged, so any error is about an override.
    merged = {**base.to_dict(), **overrides}
    protocol = config_from_dict(EvalProtocol, merged, where=f"protocol {name!r}")
    applied = {k: getattr(protocol, k) for k in overrides if getattr(protocol, k) != getattr(base, k)}
    return protocol, applied


# ------------------------------------------------------------------------------------------ clip choice
def chunk_starts(frame_count: int, frames: int) -> list[int]:
    """Start frames of all non-overlapping chunks ``[frames*k, frames*k + frames)`` of a video (may be empty)."""
    return list(range(0, frame_count - frames + 1, frames)) if frame_count >= frames else []


def _video_rng(seed: int, index: int) -> random.Random:
    """A generator for one video, keyed by (seed, video index) only: independent of processing order.

    The key is hashed (sha256) rather than combined arithmetically, so nearby seeds and indices give
    unrelated streams; it does not depend on Python's per-process string hashing.
    """
    key = hashlib.sha256(f"larp-clip-start/{seed}/{index}".encode()).digest()
    return random.Random(int.from_bytes(key[:8], "big"))


def select_clips(frame_counts: Sequence[int], protocol: EvalProtocol) -> list[tuple[int, int]]:
    """The clips a protocol scores, as (video index, start frame), the same in every process.

    * ``"all-chunks"`` (official ``use_all_frames=True``): every chunk ``[frames*k, frames*k + frames)`` of
      every video with at least ``frames`` frames, in video order; shorter videos give none.
    * ``"one-per-video"``: one clip per video, its start drawn uniformly from ``[0, count - frames]`` by a
      generator keyed by ``(seed, video index)``; a video shorter than ``frames`` starts at 0 (the reader
      pads it).

    Then, when ``num_samples`` is set, ``random.Random(seed).sample(range(len(candidates)), num_samples)``
    picks them, in that sampled order, exactly as the official ``sample.py``; with ``num_samples=None``
    all candidates are kept, in order.

    Args:
        frame_counts: number of frames of each video, in dataset order.
        protocol: supplies ``clip_selection``, ``frames``, ``num_samples`` and ``seed``.

    Raises:
        ValueError: a negative count (or an empty video for one-per-video), no candidate clip at all, or
            more ``num_samples`` than candidates.
    """
    counts = [int(c) for c in frame_counts]
    frames = protocol.frames
    if any(c < 0 for c in counts):
        raise ValueError(f"frame counts must be non-negative, got {min(counts)}")
    if protocol.clip_selection == "all-chunks":
        candidates = [(i, start) for i, count in enumerate(counts) for start in chunk_starts(count, frames)]
    elif protocol.clip_selection == "one-per-video":
        empty = [i for i, count in enumerate(counts) if count == 0]
        if empty:
            raise ValueError(f"one-per-video needs at least one frame per video; videos {empty[:10]} have none")
        candidates = [
            (i, _video_rng(protocol.seed, i).randrange(count - frames + 1) if count > frames else 0)
            for i, count in enumerate(counts)
        ]
    else:
        raise ValueError(f"clip_selection must be one of {list(_CLIP_SELECTIONS)}, got {protocol.clip_selection!r}")
    if not candidates:
        raise ValueError(
            f"protocol {protocol.name!r} finds no clip: {len(counts)} videos, none with at least {frames} frames"
        )
    if protocol.num_samples is None:
        return candidates
    if protocol.num_samples > len(candidates):
        raise ValueError(
            f"protocol {protocol.name!r} asks for num_samples={protocol.num_samples} clips but the data has only "
            f"{len(candidates)} ({protocol.clip_selection} of {len(counts)} videos); "
            f"set num_samples to at most {len(candidates)}, or to None for all"
        )
    chosen = random.Random(protocol.seed).sample(range(len(candidates)), protocol.num_samples)
    return [candidates[k] for k in chosen]


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The part of ``items`` that process ``rank`` of ``world_size`` handles: ``items[rank::world_size]``.

    Strided, not contiguous: item i goes to rank ``i % world_size``, so the parts differ in size by at most
    one, and each rank gets a similar mix of a (randomly ordered) selection. The parts are disjoint and
    together hold every item exactly once; FVD statistics merge exactly by summing, so the order of the
    parts does not matter.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
    return list(items[rank::world_size])

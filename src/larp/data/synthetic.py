"""A seeded synthetic video dataset: one shape moving in one of several directions.

This is the library's default data: training, sampling, evaluation and the demo run on a
fresh machine without any download. Every clip shows a single square or disc (anti-aliased
edge, random colour) over a background, and its *class is the motion*:

=====  ==============  =====================================================
label  name            motion
=====  ==============  =====================================================
0      ``right``       translation along +x
1      ``left``        translation along -x
2      ``down``        translation along +y (image rows grow downwards)
3      ``up``          translation along -y
4      ``down-right``  diagonal translation along (+x, +y), same path speed
5      ``up-left``     diagonal translation along (-x, -y), same path speed
6      ``grow``        static centre; the diameter grows at ``speed / 2`` px/frame
7      ``shrink``      static centre; the diameter shrinks at ``speed / 2`` px/frame
=====  ==============  =====================================================

The defaults (16 frames of 32x32, 4 classes, 12-16 px objects, 0.6-1.2 px/frame, black
background) are what made small CPU training learn the motion (see
``notes/small-scale-training.md``): smaller objects and busy backgrounds made the codebook
collapse before the model found the object.

Captions: :meth:`SyntheticVideos.attributes` describes clips without rendering them: the colour name
(:data:`COLOUR_NAMES`, from the object's hue), the shape, the motion and a caption naming the three in one
of four phrasings (:data:`CAPTION_TEMPLATES`); :func:`parse_caption` reads them back. Describing a clip
changes nothing in its pixels or label.

Determinism: item ``i`` depends only on ``(seed, i)``. Its random parameters come from a
counter-based generator (the SplitMix64 finaliser applied to ``seed`` and ``i``), so a clip is
the same whichever worker renders it, in whatever order and batch (and its parameters are the
same on any machine; the global RNG is never used).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "BACKGROUNDS",
    "CAPTION_TEMPLATES",
    "CLASS_NAMES",
    "COLOUR_NAMES",
    "MIRROR_LABELS",
    "MOTION_PHRASES",
    "SHAPES",
    "SyntheticConfig",
    "SyntheticVideos",
    "caption",
    "colour_name",
    "parse_caption",
]

#: Names of the motion classes, indexed by label (see the module docstring).
CLASS_NAMES: tuple[str, ...] = ("right", "left", "down", "up", "down-right", "up-left", "grow", "shrink")
#: The label of each class's mirror image under a horizontal flip (right <-> left); None where the
#: mirrored motion is not a class (down-right flips to down-left).
MIRROR_LABELS: tuple[int | None, ...] = (1, 0, 2, 3, None, None, 6, 7)
#: Shapes an object can take.
SHAPES: tuple[str, ...] = ("square", "circle")
#: Background kinds: ``black``; ``gradient`` (a static linear ramp between two dark random
#: colours, random direction); ``noise`` (a static, smooth random texture with features of
#: about 4 px, values in [0, 0.5]).
BACKGROUNDS: tuple[str, ...] = ("black", "gradient", "noise")

#: Colour names of the captions, by hue: each covers 60 degrees centred on its hue (red 0, yellow 60, ...).
COLOUR_NAMES: tuple[str, ...] = ("red", "yellow", "green", "cyan", "blue", "magenta")
#: How a caption says each motion class (indexed like :data:`CLASS_NAMES`).
MOTION_PHRASES: tuple[str, ...] = ("moving right", "moving left", "moving down", "moving up",
                                   "moving down and right", "moving up and left", "growing", "shrinking")
#: The phrasings of a caption; clip ``i`` uses ``CAPTION_TEMPLATES[(i // num_classes) % 4]``.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape} {motion}",
    "the {colour} {shape} is {motion}",
    "{motion} , a {colour} {shape}",
    "there is a {shape} , {colour} and {motion}",
)

_SQRT_HALF = math.sqrt(0.5)
# Per class: (x velocity, y velocity, diameter growth), in units of the sampled speed.
_MOTION = np.array(
    [
        [1.0, 0.0, 0.0],
        [-1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, -1.0, 0.0],
        [_SQRT_HALF, _SQRT_HALF, 0.0],
        [-_SQRT_HALF, -_SQRT_HALF, 0.0],
        [0.0, 0.0, 0.5],
        [0.0, 0.0, -0.5],
    ],
    dtype=np.float64,
)
# Smallest diameter a shrinking object may reach (px): below this it would vanish.
_MIN_DIAMETER = 2.0
# Features of the "noise" background are about this many pixels wide.
_NOISE_CELL = 4
# Uniforms drawn per item for the scalar parameters (see _item_parameters).
_NUM_SCALARS = 16
# Clips rendered together in get_batch.
_RENDER_CHUNK = 32
# Counter offset of the noise-texture uniforms within an item's stream.
_NOISE_OFFSET = 1 << 20


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of :class:`SyntheticVideos`; every field is part of what a clip looks like.

    Attributes:
        num_videos: Length of the dataset (number of distinct clips).
        frames: Frames per clip.
        size: Side of the square frames in pixels.
        num_classes: Number of motion classes, 1 to 8; the first ``num_classes`` entries of
            :data:`CLASS_NAMES`.
        object_size: ``(min, max)`` object diameter / side in pixels, sampled uniformly. For
            ``grow``/``shrink`` this is the diameter at the middle frame. Not scaled with
            ``size`` automatically; see :meth:`scaled`.
        speed: ``(min, max)`` speed in pixels per frame, sampled uniformly (path speed for
            translations; ``grow``/``shrink`` change the diameter at ``speed / 2`` px/frame).
            The speed of a clip is lowered when needed so that the whole object stays inside
            the frame for the whole clip (with the defaults, only for the largest, fastest
            objects: a 16 px object can travel 16 px in a 32 px frame).
        shapes: Shapes to choose from, uniformly; a subset of :data:`SHAPES`.
        background: One of :data:`BACKGROUNDS`.
        soft_edge: Width in pixels of the linear ramp that anti-aliases the object's edge;
            1.0 approximates pixel-area coverage, larger values blur the edge, 0 gives a hard
            (aliased) edge.
        seed: Seed of the dataset; clip ``i`` depends only on ``(seed, i)``.
    """

    num_videos: int = 4096
    frames: int = 16
    size: int = 32
    num_classes: int = 4
    object_size: tuple[float, float] = (12.0, 16.0)
    speed: tuple[float, float] = (0.6, 1.2)
    shapes: tuple[str, ...] = SHAPES
    background: str = "black"
    soft_edge: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        # tuples, not lists, so that the config stays hashable (lists come from YAML / JSON)
        for name in ("object_size", "speed", "shapes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name, minimum in (("num_videos", 1), ("frames", 1), ("size", 1), ("num_classes", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"SyntheticConfig.{name} must be an int >= {minimum}, got {value!r}")
        if self.num_classes > len(CLASS_NAMES):
            raise ValueError(f"SyntheticConfig.num_classes must be at most {len(CLASS_NAMES)}, got {self.num_classes}")
        for name in ("object_size", "speed"):
            pair = getattr(self, name)
            if len(pair) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in pair):
                raise ValueError(f"SyntheticConfig.{name} must be two finite numbers (min, max), got {pair!r}")
            if pair[0] > pair[1]:
                raise ValueError(f"SyntheticConfig.{name} must be (min, max) with min <= max, got {pair!r}")
        if self.object_size[0] < 1 or self.object_size[1] > self.size:
            raise ValueError(
                f"SyntheticConfig.object_size must lie in [1, size={self.size}] pixels, got {self.object_size!r}"
            )
        if self.speed[0] < 0:
            raise ValueError(f"SyntheticConfig.speed must be >= 0, got {self.speed!r}")
        if not self.shapes or any(s not in SHAPES for s in self.shapes):
            raise ValueError(f"SyntheticConfig.shapes must be a non-empty subset of {SHAPES}, got {self.shapes!r}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"SyntheticConfig.background must be one of {BACKGROUNDS}, got {self.background!r}")
        if not (isinstance(self.soft_edge, (int, float)) and 0 <= self.soft_edge < math.inf):
            raise ValueError(f"SyntheticConfig.soft_edge must be a finite number >= 0, got {self.soft_edge!r}")

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the classes in use, indexed by label."""
        return CLASS_NAMES[: self.num_classes]

    def scaled(self, size: int) -> SyntheticConfig:
        """The same difficulty at another resolution: ``object_size`` and ``speed`` scale with ``size``.

        Example: the default config scaled to 128 px has 48-64 px objects moving 2.4-4.8 px/frame.
        """
        factor = size / self.size
        return replace(
            self,
            size=size,
            object_size=(self.object_size[0] * factor, self.object_size[1] * factor),
            speed=(self.speed[0] * factor, self.speed[1] * factor),
        )


# ---------------------------------------------------------------- counter-based randomness


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective, well-mixing hash of uint64 values (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniforms(seed: int, indices: np.ndarray, offset: int, count: int) -> np.ndarray:
    """Uniforms in [0, 1) for stream positions ``offset .. offset + count - 1`` of each item.

    Args:
        seed: Dataset seed.
        indices: ``(b,)`` item indices (non-negative).
        offset: First position in each item's stream.
        count: Number of values per item.

    Returns:
        ``(b, count)`` float64 array; entry ``[j, k]`` depends only on ``(seed, indices[j], offset + k)``.
    """
    with np.errstate(over="ignore"):
        key = _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        item = _mix64(indices.astype(np.uint64) ^ key)  # one 64-bit stream key per item
        counter = np.arange(offset, offset + count, dtype=np.uint64)
        z = _mix64(item[:, None] + (counter[None, :] + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# ------------------------------------------------------------------------------ dataset


class SyntheticVideos(Dataset):
    """Seeded moving-shape clips, rendered on the fly (see the module docstring for the classes).

    Labels are balanced: item ``i`` has label ``i % num_classes``. Rendering is vectorised over
    a batch (:meth:`get_batch`; the DataLoader uses it through ``__getitems__``), thousands of
    32x32 clips per second on one CPU core.

    Args:
        config: The dataset's knobs; keyword arguments override its fields, e.g.
            ``SyntheticVideos(num_videos=256, seed=3)``.

    Example:
        >>> data = SyntheticVideos(SyntheticConfig(num_videos=8))
        >>> item = data[5]
        >>> item["video"].shape, item["label"]
        (torch.Size([3, 16, 32, 32]), 1)
    """

    def __init__(self, config: SyntheticConfig | None = None, **overrides) -> None:
        config = config or SyntheticConfig()
        self.config = replace(config, **overrides) if overrides else config

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    @property
    def mirror_labels(self) -> tuple[int, ...] | None:
        """Label of each class after a horizontal flip, or None when a class in use has no mirror class."""
        mirrors = MIRROR_LABELS[: self.config.num_classes]
        return None if None in mirrors else mirrors  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.config.num_videos

    def label(self, index: int) -> int:
        """Label of item ``index`` (without rendering it)."""
        return self._check_indices([index])[0].item() % self.config.num_classes

    def __getitem__(self, index: int) -> dict:
        """Clip ``index``.

        Returns:
            ``{"video": (3, t, s, s) float32 in [0, 1], "label": int, "index": int}``.
        """
        batch = self.get_batch([index])
        return {"video": batch["video"][0], "label": int(batch["label"][0]), "index": int(batch["index"][0])}

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        # Used by DataLoader's fetcher instead of one __getitem__ per index: one vectorised
        # render per batch. The result is exactly what __getitem__ gives item by item.
        batch = self.get_batch(indices)
        return [
            {"video": video, "label": int(label), "index": int(index)}
            for video, label, index in zip(batch["video"], batch["label"], batch["index"])
        ]

    def _check_indices(self, indices: Sequence[int] | torch.Tensor) -> np.ndarray:
        array = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else list(indices), dtype=np.int64)
        if array.ndim != 1:
            raise ValueError(f"indices must be a 1-D sequence of ints, got shape {array.shape}")
        n = len(self)
        bad = (array < -n) | (array >= n)
        if bad.any():
            raise IndexError(f"index {int(array[bad][0])} out of range for SyntheticVideos of length {n}")
        return np.where(array < 0, array + n, array)  # negative indices count from the end, like lists

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        """Render several clips at once.

        Args:
            indices: ``b`` item indices.

        Returns:
            ``{"video": (b, 3, t, s, s) float32 in [0, 1], "label": (b,) int64, "index": (b,) int64}``.
        """
        idx = self._check_indices(indices)
        cfg = self.config
        labels = idx % cfg.num_classes
        if len(idx) == 0:
            empty = torch.zeros(0, 3, cfg.frames, cfg.size, cfg.size)
            return {"video": empty, "label": torch.from_numpy(labels), "index": torch.from_numpy(idx)}
        video = torch.empty(len(idx), 3, cfg.frames, cfg.size, cfg.size)
        # Chunks keep the float intermediates cache-sized (about 2x faster for big batches).
        for lo in range(0, len(idx), _RENDER_CHUNK):
            part = slice(lo, lo + _RENDER_CHUNK)
            params = self._item_parameters(idx[part], labels[part])
            alpha = self._render_alpha(params)  # (c, 1, t, s, s)
            background = self._render_background(idx[part], params)  # (c, 3, 1, s, s)
            colour = params["colour"][:, :, None, None, None]  # (c, 3, 1, 1, 1)
            torch.lerp(background, colour, alpha, out=video[part])  # convex combination: stays in [0, 1]
        return {"video": video, "label": torch.from_numpy(labels), "index": torch.from_numpy(idx)}

    def attributes(self, indices: Sequence[int] | torch.Tensor) -> list[dict]:
        """What each clip shows, without rendering it: ``{"index", "label", "motion" (the class name),
        "colour" (a :data:`COLOUR_NAMES` entry, from the object's hue), "hue" (in [0, 1)), "shape",
        "caption"}``. The caption names the colour, the shape and the motion in one of the
        :data:`CAPTION_TEMPLATES` (clip ``i`` uses phrasing ``(i // num_classes) % 4``)."""
        idx = self._check_indices(indices)
        cfg = self.config
        u = _uniforms(cfg.seed, idx, 0, 2)  # the same draws as _item_parameters: shape, hue
        shape = np.minimum((u[:, 0] * len(cfg.shapes)).astype(np.int64), len(cfg.shapes) - 1)
        found = []
        for i, index in enumerate(idx.tolist()):
            label = index % cfg.num_classes
            item = {"index": index, "label": label, "motion": CLASS_NAMES[label], "colour": colour_name(u[i, 1]),
                    "hue": float(u[i, 1]), "shape": cfg.shapes[shape[i]]}
            item["caption"] = caption(item, (index // cfg.num_classes) % len(CAPTION_TEMPLATES))
            found.append(item)
        return found

    # -------------------------------------------------------------------- parameters

    def _item_parameters(self, idx: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
        """Per-item shape, colour, size, speed, start and background parameters.

        Computed in float64 numpy: for the few values per clip, numpy's per-call overhead is a
        fraction of torch's, which matters when clips are rendered one at a time.
        """
        cfg = self.config
        u = _uniforms(cfg.seed, idx, 0, _NUM_SCALARS)  # (b, 16)
        motion = _MOTION[labels]  # (b, 3): vx, vy, growth per unit speed
        span = cfg.frames - 1

        shape = np.minimum((u[:, 0] * len(cfg.shapes)).astype(np.int64), len(cfg.shapes) - 1)
        is_circle = np.array([s == "circle" for s in cfg.shapes])[shape]
        colour = _hsv_to_rgb(u[:, 1], 0.6 + 0.4 * u[:, 2], 0.75 + 0.25 * u[:, 3])  # vivid: visible on black
        diameter = cfg.object_size[0] + (cfg.object_size[1] - cfg.object_size[0]) * u[:, 4]
        speed = cfg.speed[0] + (cfg.speed[1] - cfg.speed[0]) * u[:, 5]

        # Lower the speed where the object would leave the frame (or vanish when shrinking):
        # a translation moves the object |v| * span px along each axis, and grow/shrink move
        # the diameter |growth| * speed * span / 2 px either side of its middle value.
        if span > 0:
            with np.errstate(divide="ignore"):
                room = cfg.size - diameter
                for axis in (0, 1):
                    speed = np.minimum(speed, room / (np.abs(motion[:, axis]) * span))
                growth = np.abs(motion[:, 2]) * span
                speed = np.minimum(speed, 2 * room / growth)
                speed = np.minimum(speed, 2 * np.maximum(diameter - _MIN_DIAMETER, 0) / growth)

        # Start so that the whole path stays in frame: the lowest coordinate the centre
        # reaches is uniform among those that keep the object inside in every frame.
        max_radius = (diameter + np.abs(motion[:, 2]) * speed * span / 2) / 2
        velocity = motion[:, :2] * speed[:, None]  # (b, 2) px/frame
        travel = np.abs(velocity) * span
        lowest = max_radius[:, None] + np.maximum(cfg.size - 2 * max_radius[:, None] - travel, 0) * u[:, 6:8]
        start = np.where(velocity < 0, lowest + travel, lowest)  # (b, 2) centre (x, y) at frame 0, px
        return {
            "is_circle": torch.from_numpy(is_circle),
            "colour": torch.from_numpy(colour).float(),
            "diameter": torch.from_numpy(diameter),
            "growth": torch.from_numpy(motion[:, 2] * speed),
            "start": torch.from_numpy(start),
            "velocity": torch.from_numpy(velocity),
            "background": torch.from_numpy(u[:, 8:15]),
        }

    # --------------------------------------------------------------------- rendering

    def _render_alpha(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Object coverage ``(b, 1, t, s, s)`` in [0, 1], anti-aliased by a linear edge ramp."""
        cfg = self.config
        t = torch.arange(cfg.frames, dtype=torch.float64)
        centre = p["start"][:, None, :] + p["velocity"][:, None, :] * t[None, :, None]  # (b, t, 2)
        middle = (cfg.frames - 1) / 2
        radius = (p["diameter"][:, None] + p["growth"][:, None] * (t[None, :] - middle)) / 2  # (b, t)
        radius = radius.clamp_min(_MIN_DIAMETER / 2).float()[:, :, None, None]
        grid = torch.arange(cfg.size, dtype=torch.float32) + 0.5  # pixel centres; the frame spans [0, size]
        dx = grid[None, None, None, :] - centre[:, :, None, None, 0].float()  # (b, t, 1, s)
        dy = grid[None, None, :, None] - centre[:, :, None, None, 1].float()  # (b, t, s, 1)

        def coverage(inside: torch.Tensor) -> torch.Tensor:
            # inside: signed distance to the edge (px, > 0 inside). A ramp of width soft_edge
            # centred on the edge; for soft_edge = 1 this is the exact pixel-area coverage of
            # a straight edge, and of a square it is exact (product of the two 1-D coverages).
            if cfg.soft_edge == 0:
                return (inside >= 0).float()
            return (inside / cfg.soft_edge + 0.5).clamp_(0.0, 1.0)

        alpha = coverage(radius - dx.abs()) * coverage(radius - dy.abs())  # squares: separable
        circles = p["is_circle"]
        if circles.any():
            distance = torch.sqrt(dx[circles] ** 2 + dy[circles] ** 2)
            alpha[circles] = coverage(radius[circles] - distance)
        return alpha[:, None]

    def _render_background(self, idx: np.ndarray, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Static background ``(b, 3, 1, s, s)`` in [0, 1]."""
        cfg = self.config
        b, s = len(idx), cfg.size
        if cfg.background == "black":
            return torch.zeros(b, 3, 1, 1, 1)
        if cfg.background == "gradient":
            u = p["background"].float()
            low, high = 0.5 * u[:, 0:3], 0.5 * u[:, 3:6]  # dark, so the vivid object stands out
            angle = 2 * math.pi * u[:, 6]
            grid = (torch.arange(s, dtype=torch.float32) + 0.5) / s - 0.5
            ramp = torch.cos(angle)[:, None, None] * grid[None, None, :] + torch.sin(angle)[:, None, None] * grid[
                None, :, None
            ]  # (b, s, s), within [-0.71, 0.71]
            ramp = (ramp / math.sqrt(2) + 0.5).clamp(0, 1)
            image = low[:, :, None, None] + (high - low)[:, :, None, None] * ramp[:, None]
            return image[:, :, None]
        cells = max(2, math.ceil(s / _NOISE_CELL))
        u = torch.from_numpy(_uniforms(cfg.seed, idx, _NOISE_OFFSET, 3 * cells * cells)).float()
        coarse = 0.5 * u.view(b, 3, cells, cells)
        image = F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
        return image[:, :, None]


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in [0, 1], (b,) each -> RGB (b, 3) in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0])[None, :] + 6 * h[:, None]) % 6
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def colour_name(hue: float) -> str:
    """The :data:`COLOUR_NAMES` entry of a hue in [0, 1) (60-degree bins centred on red, yellow, ...)."""
    return COLOUR_NAMES[int(math.floor(float(hue) * 6 + 0.5)) % 6]


def caption(attributes: dict, phrasing: int = 0) -> str:
    """A caption naming ``attributes["colour"]``, ``["shape"]`` and ``["motion"]`` (a class name) in
    :data:`CAPTION_TEMPLATES` ``[phrasing]``."""
    motion = MOTION_PHRASES[CLASS_NAMES.index(attributes["motion"])]
    template = CAPTION_TEMPLATES[phrasing % len(CAPTION_TEMPLATES)]
    return template.format(colour=attributes["colour"], shape=attributes["shape"], motion=motion)


def parse_caption(text: str) -> dict:
    """The attributes a caption names: ``{"colour", "shape", "motion"}``, each None when it names none or
    several (a phrase inside a longer one found is not counted: "moving down and right" is not "moving down")."""
    words = " " + " ".join(text.lower().replace(",", " , ").split()) + " "

    def one(options: Sequence[str], phrases: Sequence[str]) -> str | None:
        hits = {o: p for o, p in zip(options, phrases) if f" {p} " in words}
        # a phrase inside a longer one that was found is not a hit of its own
        kept = [o for o, p in hits.items() if not any(p != q and f" {p} " in f" {q} " for q in hits.values())]
        return kept[0] if len(kept) == 1 else None

    return {"colour": one(COLOUR_NAMES, COLOUR_NAMES), "shape": one(SHAPES, SHAPES),
            "motion": one(CLASS_NAMES, MOTION_PHRASES)}

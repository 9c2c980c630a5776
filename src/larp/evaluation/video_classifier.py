"""A small 3D-conv video classifier: the detector for data without I3D weights.

FVD needs a video feature extractor; the standard one (I3D on Kinetics) neither ships with this library
nor means much on toy data. Instead a small classifier is trained on the dataset itself (the built-in
synthetic moving-shapes set by default). Its pooled features give a Fréchet distance, and its predictions
give the class accuracy of class-conditional samples and of tokenizer reconstructions: if it cannot tell
the motion class of a reconstruction, the tokens do not carry the motion.

Legend: b = batch, c = channels (3), t/h/w = frames/height/width, F = feature_dim, K = num_classes.

    video (b,c,t,h,w) in [0,1] --> 2x-1 --> [frames; frame differences] (b,2c,t,h,w)
      --> stem Conv3d (stride 1,2,2) --> stages Conv3d (stride 2) ...
      --> global average pool (b, C) --> Linear --> features (b, F) --> ReLU + Linear --> logits (b, K)

Every stage is Conv3d + GroupNorm + ReLU. GroupNorm, not BatchNorm, so that a clip's prediction does not
depend on the batch it is scored in, and train and eval modes compute the same function. Global pooling
makes the net accept any t, h, w.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from larp.hub import PretrainedMixin
from larp.models.layers import check_unit_range
from larp.training.distributed import DistInfo
from larp.training.loop import Cadence, Trainer

__all__ = [
    "VIDEO_CLASSIFIER_PRESETS",
    "VideoClassifier",
    "VideoClassifierConfig",
    "accuracy",
    "classify",
    "extract_features",
    "predict_logits",
    "train_video_classifier",
]


@dataclass(frozen=True)
class VideoClassifierConfig:
    """Architecture of a :class:`VideoClassifier`. Defaults: 4 motion classes on 16 frames of 32x32.

    ``frames`` and ``input_size`` record the clip size the classifier is meant for (trained on); the
    network itself accepts any size, because it pools globally.
    """

    num_classes: int = 4
    in_channels: int = 3
    width: int = 16  # channels of the stem; stage i has width * 2**i
    num_stages: int = 3  # stem + (num_stages - 1) stride-2 stages
    feature_dim: int = 64
    frames: int = 16
    input_size: int = 32
    norm_groups: int = 4
    # Feed frame differences x[t+1] - x[t] to the stem next to the frames. Motion is what the classes
    # differ by; with the differences given, a few-step training run gets there without a long plateau.
    frame_differences: bool = True

    def __post_init__(self):
        problems = []
        if min(self.num_classes, self.in_channels, self.width, self.num_stages, self.feature_dim) < 1:
            problems.append("num_classes, in_channels, width, num_stages and feature_dim must be positive")
        if self.num_classes < 2:
            problems.append(f"num_classes must be at least 2, got {self.num_classes}")
        if self.norm_groups < 1 or self.width % self.norm_groups:
            problems.append(f"width {self.width} is not divisible by norm_groups {self.norm_groups}")
        if self.frames < 1 or self.input_size < 1:
            problems.append("frames and input_size must be positive")
        if problems:
            raise ValueError("invalid VideoClassifierConfig: " + "; ".join(problems))

    @property
    def channels(self) -> tuple[int, ...]:
        """Output channels of each stage."""
        return tuple(self.width * 2**i for i in range(self.num_stages))


VIDEO_CLASSIFIER_PRESETS: dict[str, VideoClassifierConfig] = {
    # The built-in synthetic dataset: 4 motion directions, 16 frames of 32x32 (~70k parameters).
    "synthetic-32": VideoClassifierConfig(),
    # Same task, wider; for 64x64 clips.
    "synthetic-64": VideoClassifierConfig(width=32, num_stages=4, feature_dim=128, input_size=64),
}


class ConvBlock(nn.Module):
    """Conv3d (kernel 3, padding 1) + GroupNorm + ReLU: (b, c_in, t, h, w) -> (b, c_out, t/s, h/s, w/s)."""

    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int, int], groups: int):
        super().__init__()
        # No conv bias: GroupNorm's shift makes it redundant.
        self.conv = nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm = nn.GroupNorm(groups, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class VideoClassifier(PretrainedMixin, nn.Module):
    """Small 3D-conv video classifier. Videos are float (b, c, t, h, w) in [0, 1], any t, h, w.

    Build with ``VideoClassifier(VideoClassifierConfig(...))``, ``from_preset("synthetic-32")``,
    ``from_pretrained(folder)`` or :func:`train_video_classifier`. ``source`` says where the weights came
    from (a folder, or the training call), so evaluation results can name the detector.
    """

    config_class = VideoClassifierConfig
    presets = VIDEO_CLASSIFIER_PRESETS

    def __init__(self, config: VideoClassifierConfig | None = None):
        super().__init__()
        config = config or VideoClassifierConfig()
        self.config = config
        self.source: str = "untrained"
        groups = config.norm_groups
        blocks = []
        c_in = config.in_channels * (2 if config.frame_differences else 1)
        for i, c_out in enumerate(config.channels):
            # The stem keeps every frame: motion of ~1 px/frame is only visible between neighbouring
            # frames, so time is downsampled only after the first layer has looked at it.
            stride = (1, 2, 2) if i == 0 else (2, 2, 2)
            blocks.append(ConvBlock(c_in, c_out, stride, groups))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.feature_proj = nn.Linear(c_in, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                # Unit-gain init for both linear layers: two stacked small-std (0.02) layers shrink the
                # trunk's gradient ~2500x and cause a long plateau before anything is learned.
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def _check_video(self, video: torch.Tensor) -> torch.Tensor:
        c = self.config
        if not isinstance(video, torch.Tensor):
            raise ValueError(f"expected a video tensor, got {type(video).__name__}")
        if video.ndim != 5 or video.shape[1] != c.in_channels:
            raise ValueError(
                f"expected a video of shape (batch, {c.in_channels}, frames, height, width), "
                f"got shape {tuple(video.shape)}"
            )
        if not video.is_floating_point():
            raise ValueError(f"expected a float video with values in [0, 1], got dtype {video.dtype}")
        if video.shape[0] == 0 or min(video.shape[2:]) == 0:
            raise ValueError(f"expected a non-empty video batch, got shape {tuple(video.shape)}")
        check_unit_range(video)
        return video.to(device=self.device, dtype=self.dtype)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """Pooled features for the Fréchet distance.

        Args:
            video: (b, c, t, h, w) float in [0, 1].

        Returns:
            (b, feature_dim) features (before the head's ReLU, so no dimension is dead by construction).
        """
        x = self._check_video(video) * 2 - 1  # centre the input: black background -> -1
        if self.config.frame_differences:
            # (b, c, t, h, w) -> (b, 2c, t, h, w); the last frame's difference is 0 (keeps t, works for t=1).
            diff = F.pad(x[:, :, 1:] - x[:, :, :-1], (0, 0, 0, 0, 0, 1))
            x = torch.cat([x, diff], dim=1)
        x = self.blocks(x).mean(dim=(2, 3, 4))  # (b, C)
        return self.feature_proj(x)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Args:
            video: (b, c, t, h, w) float in [0, 1].

        Returns:
            (b, num_classes) logits.
        """
        return self.head(F.relu(self.features(video)))


# ---------------------------------------------------------------------------------------------- inference
def _batched(model: VideoClassifier, videos: torch.Tensor, batch_size: int, fn) -> list[torch.Tensor]:
    if not isinstance(videos, torch.Tensor) or videos.ndim != 5:
        shape = tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise ValueError(f"expected videos of shape (n, c, t, h, w), got {shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [fn(videos[i : i + batch_size]).cpu() for i in range(0, videos.shape[0], batch_size)]
    finally:
        model.train(was_training)


def predict_logits(model: VideoClassifier, videos: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits of many clips, in batches.

    Args:
        videos: (n, c, t, h, w) float in [0, 1], on any device (batches are moved to the model's).

    Returns:
        (n, num_classes) float32 logits on the CPU.
    """
    parts = _batched(model, videos, batch_size, lambda v: model(v).float())
    return torch.cat(parts) if parts else torch.empty(0, model.config.num_classes)


def classify(model: VideoClassifier, videos: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Predicted class of each clip.

    Args:
        videos: (n, c, t, h, w) float in [0, 1].

    Returns:
        (n,) int64 class ids on the CPU.
    """
    return predict_logits(model, videos, batch_size).argmax(dim=1)


def accuracy(
    model: VideoClassifier, videos: torch.Tensor, labels: torch.Tensor | Iterable[int], batch_size: int = 64
) -> float:
    """Fraction of clips whose predicted class equals the label.

    Args:
        videos: (n, c, t, h, w) float in [0, 1].
        labels: (n,) class ids.

    Returns:
        accuracy in [0, 1].
    """
    labels = torch.as_tensor(labels if isinstance(labels, torch.Tensor) else list(labels)).long().cpu()
    if labels.ndim != 1 or labels.shape[0] != videos.shape[0]:
        raise ValueError(f"expected labels of shape ({videos.shape[0]},), got {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return (classify(model, videos, batch_size) == labels).double().mean().item()


def extract_features(model: VideoClassifier, videos: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Features of many clips, for a Fréchet distance.

    Args:
        videos: (n, c, t, h, w) float in [0, 1].

    Returns:
        (n, feature_dim) float64 on the CPU (float64 because the Fréchet distance takes a matrix square
        root of covariances, where float32 loses digits).
    """
    parts = _batched(model, videos, batch_size, lambda v: model.features(v).double())
    return torch.cat(parts) if parts else torch.empty(0, model.config.feature_dim, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------- training
def _as_item(item: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset item or batch -> (videos (b,c,t,h,w), labels (b,)). Single clips get a batch dim."""
    if isinstance(item, Mapping):
        if "video" not in item or "label" not in item:
            raise ValueError(f"expected items with 'video' and 'label', got keys {sorted(item)}")
        video, label = item["video"], item["label"]
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        video, label = item
    else:
        raise ValueError(
            f"expected dict items {{'video', 'label'}} or (video, label) pairs, got {type(item).__name__}"
        )
    video = torch.as_tensor(video)
    label = torch.as_tensor(label).long()
    if video.ndim == 4:
        video, label = video[None], label.reshape(1)
    if video.ndim != 5 or label.ndim != 1 or label.shape[0] != video.shape[0]:
        raise ValueError(
            f"expected a clip (c,t,h,w) with a label, or a batch (b,c,t,h,w) with labels (b,); "
            f"got video {tuple(video.shape)} and label {tuple(label.shape)}"
        )
    return video, label


def _is_map_dataset(data: Any) -> bool:
    """A random-access collection of single clips (a torch Dataset, or a list of clip dicts)."""
    if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")) or isinstance(data, (Mapping, torch.Tensor)):
        return False
    if len(data) == 0:
        raise ValueError("the training data is empty")
    first = data[0]
    video = None
    if isinstance(first, Mapping):
        video = first.get("video")
    elif isinstance(first, (tuple, list)) and first:
        video = first[0]
    return isinstance(video, torch.Tensor) and video.ndim == 4


def _batch_stream(
    data: Any, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (videos, labels) batches from any supported data source.

    * a (videos, labels) pair of tensors, or a map-style dataset of single clips: random batches of
      ``batch_size``, drawn with ``generator`` (so training is seeded even for a fixed dataset);
    * an iterable of clips or of batches: read in order and re-batched to ``batch_size``; re-iterated
      when exhausted (a one-shot iterator that runs dry is an error).
    """
    is_pair = isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(x, torch.Tensor) for x in data)
    if is_pair and data[0].ndim == 5:
        all_videos, all_labels = data[0], torch.as_tensor(data[1]).long()
        n = all_videos.shape[0]
        if all_labels.shape != (n,) or n == 0:
            raise ValueError(
                f"expected videos (n,c,t,h,w) and labels (n,), "
                f"got {tuple(all_videos.shape)} and {tuple(all_labels.shape)}"
            )
        while True:
            # A fresh permutation per epoch: every clip once before any repeats.
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                index = order[start : start + batch_size]
                yield all_videos[index], all_labels[index]
    if _is_map_dataset(data):
        n = len(data)
        while True:
            # A fresh permutation per epoch: every clip once before any repeats.
            order = torch.randperm(n, generator=generator).tolist()
            for start in range(0, n, batch_size):
                index = order[start : start + batch_size]
                # __getitems__ (the torch batched-fetch protocol) lets a dataset render a batch at once.
                items = data.__getitems__(index) if hasattr(data, "__getitems__") else [data[i] for i in index]
                chunk = [_as_item(item) for item in items]
                yield torch.cat([c[0] for c in chunk]), torch.cat([c[1] for c in chunk])
    if not isinstance(data, Iterable):
        raise ValueError(
            f"cannot train on a {type(data).__name__}: expected a Dataset, an iterable of batches or (videos, labels)"
        )
    videos: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    pending = 0
    while True:
        produced = False
        for item in data:
            produced = True
            video, label = _as_item(item)
            videos.append(video)
            labels.append(label)
            pending += video.shape[0]
            while pending >= batch_size:
                all_v, all_l = torch.cat(videos), torch.cat(labels)
                yield all_v[:batch_size], all_l[:batch_size]
                videos, labels = [all_v[batch_size:]], [all_l[batch_size:]]
                pending -= batch_size
        if not produced:
            raise ValueError("the training data ran out (an exhausted iterator?) before training finished")


def augment(videos: torch.Tensor, generator: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """Label-preserving augmentation of a batch of motion clips.

    Only transformations that keep the direction of motion: a random spatial shift (the same for all
    frames of a clip), a random colour-channel permutation and gain, and on some clips a slight spatial
    blur and noise so that blurry reconstructions are not out of distribution. Deliberately *no*
    horizontal/vertical flips or time reversal: they swap left/right, up/down.

    Args:
        videos: (b, c, t, h, w) float in [0, 1].
        generator: CPU generator all randomness is drawn from.

    Returns:
        (b, c, t, h, w) augmented videos, clamped to [0, 1].
    """
    b, c, t, h, w = videos.shape
    device = videos.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator).to(device)

    # Shift by padding with the edge value (black for black backgrounds) and cropping at random offsets.
    if max_shift > 0:
        padded = F.pad(videos.flatten(1, 2), (max_shift,) * 4, mode="replicate").unflatten(1, (c, t))
        offsets = torch.randint(2 * max_shift + 1, (b, 2), generator=generator).tolist()
        videos = torch.stack([padded[i, :, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
    # Colour: permute channels and scale brightness per channel.
    perm = torch.argsort(torch.rand(b, c, generator=generator), dim=1).to(device)
    videos = torch.gather(videos, 1, perm[:, :, None, None, None].expand_as(videos))
    videos = videos * (0.7 + 0.6 * rand(b, c, 1, 1, 1))
    # Blur a third of the clips (3x3 box, spatial only, so motion is untouched).
    blur = (rand(b, 1, 1, 1, 1) < 1 / 3).to(videos.dtype)
    blurred = F.avg_pool3d(F.pad(videos, (1, 1, 1, 1, 0, 0), mode="replicate"), (1, 3, 3), stride=1)
    videos = blur * blurred + (1 - blur) * videos
    videos = videos + 0.03 * rand(b, 1, 1, 1, 1) * torch.randn(videos.shape, generator=generator).to(device)
    return videos.clamp(0, 1)


def cosine_lr(step: int, steps: int, warmup: int) -> float:
    """Learning-rate factor: linear warmup over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_video_classifier(
    data: Any,
    *,
    config: VideoClassifierConfig | None = None,
    steps: int = 150,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
    augmentation: bool = True,
    progress: bool = False,
) -> VideoClassifier:
    """Train a :class:`VideoClassifier` on labelled clips (AdamW, warmup + cosine, augmentation).

    Deterministic for a given seed, data order and device (on the CPU with a fixed number of threads):
    initialisation, batch sampling and augmentation all draw from generators seeded by ``seed``, and the
    global RNG is left as it was.

    Args:
        data: one of: a map-style dataset of clips (items ``{"video": (c,t,h,w), "label": int}``, e.g.
            ``larp.data.synthetic.SyntheticVideos``), sampled at random; an iterable of such clips or of
            batches (``{"video": (b,c,t,h,w), "label": (b,)}``), read in order and re-iterated as needed;
            or a ``(videos (n,c,t,h,w), labels (n,))`` pair of tensors. Videos are float in [0, 1].
        config: the architecture (default: the "synthetic-32" preset, 4 classes).
        steps: optimiser steps.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        batch_size: clips per step.
        seed: seeds initialisation, sampling and augmentation.
        device: where to train.
        augmentation: apply :func:`augment` (shift, colour, blur, noise; never flips).
        progress: show a tqdm bar with the loss.

    Returns:
        The trained model in eval mode, with ``source`` describing the training run.

    Raises:
        ValueError: bad data (shapes, labels outside [0, num_classes)) or arguments.
    """
    config = config or VIDEO_CLASSIFIER_PRESETS["synthetic-32"]
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps, batch_size and lr must be positive, got {steps}, {batch_size}, {lr}")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    # Initialise under a forked global RNG: seeded, without disturbing the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VideoClassifier(config)
    model.to(device).train()
    # No weight decay on norms and biases (standard; decaying GroupNorm gains only hurts).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    warmup = max(1, min(20, steps // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, steps, warmup))
    task = _ClassifierTask(model, optimizer, scheduler, _batch_stream(data, batch_size, generator), generator,
                           augmentation=augmentation, batch_size=batch_size)
    # the shared loop without a run folder: stepping and the progress bar; nothing written, no global RNG drawn
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=device)
    Trainer(task, Cadence(steps, log_every=10), info, progress=progress).fit()
    model.source = f"train_video_classifier(steps={steps}, lr={lr:g}, batch_size={batch_size}, seed={seed})"
    return model.eval()


class _ClassifierTask:
    """The classifier's training step for :class:`larp.training.loop.Trainer` (AdamW, warmup + cosine,
    augmentation); it has no validation, samples or export."""

    name, unit = "video classifier", "clips"
    progress_keys = ("loss",)
    export_dir = None

    def __init__(self, model: VideoClassifier, optimizer: torch.optim.Optimizer, scheduler, batches: Iterator,
                 generator: torch.Generator, *, augmentation: bool, batch_size: int):
        self.model, self.optimizer, self.scheduler, self.batches = model, optimizer, scheduler, batches
        self.generator, self.augmentation, self.items_per_step = generator, augmentation, batch_size

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        videos, labels = next(self.batches)
        num_classes = self.model.config.num_classes
        if labels.min() < 0 or labels.max() >= num_classes:  # labels are still on the CPU: no device sync
            raise ValueError(
                f"labels must be in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]"
            )
        videos = videos.to(device=self.model.device, dtype=torch.float32)
        labels = labels.to(self.model.device)
        if self.augmentation:
            videos = augment(videos, self.generator)
        loss = F.cross_entropy(self.model(videos), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss.detach()}

    def evaluate(self, step: int) -> dict[str, float]:
        return {}

    def write_samples(self, step: int) -> None:
        pass

    def export(self) -> None:
        pass

    def weights(self) -> dict[str, Any]:
        return {"classifier": self.model}

    def training_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "scheduler": self.scheduler}

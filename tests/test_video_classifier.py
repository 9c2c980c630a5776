"""The small video classifier (the detector without I3D weights): learning, saving, features, seeding."""

from __future__ import annotations

import pytest
import torch

from larp.evaluation.video_classifier import (
    VIDEO_CLASSIFIER_PRESETS,
    VideoClassifier,
    VideoClassifierConfig,
    accuracy,
    augment,
    classify,
    extract_features,
    predict_logits,
    train_video_classifier,
)

# (dx, dy) per class: right, left, down, up (image rows grow downwards).
DIRECTIONS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])


def moving_squares(n: int, seed: int, frames: int = 16, size: int = 32, static: bool = False):
    """Clips of one random-colour square (10-14 px) on black moving 0.6-1.2 px/frame; label = direction.

    Returns:
        videos (n, 3, frames, size, size) float in [0, 1], labels (n,) int64.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(4, (n,), generator=g)
    side = torch.randint(10, 15, (n,), generator=g).float()
    speed = torch.zeros(n) if static else 0.6 + 0.6 * torch.rand(n, generator=g)
    colour = 0.3 + 0.7 * torch.rand(n, 3, generator=g)
    velocity = DIRECTIONS[labels] * speed[:, None]  # (n, 2)
    span = frames - 1
    # Start where the whole path stays inside the frame.
    low = (-velocity * span).clamp_min(0)
    high = size - side[:, None] - (velocity * span).clamp_min(0)
    start = low + (high - low) * torch.rand(n, 2, generator=g)
    t = torch.arange(frames).float()
    pos = start[:, None, :] + velocity[:, None, :] * t[None, :, None]  # (n, t, 2) top-left corner
    grid = torch.arange(size).float()

    def coverage(lo: torch.Tensor) -> torch.Tensor:  # (n, t) -> (n, t, size): anti-aliased 1-D extent
        g_ = grid[None, None, :]
        return (g_ - lo[..., None] + 0.5).clamp(0, 1) * (lo[..., None] + side[:, None, None] - g_ + 0.5).clamp(0, 1)

    alpha = coverage(pos[..., 1])[:, :, :, None] * coverage(pos[..., 0])[:, :, None, :]  # (n, t, h, w)
    return colour[:, :, None, None, None] * alpha[:, None], labels


def tiny_config() -> VideoClassifierConfig:
    return VideoClassifierConfig(width=8, feature_dim=16)


@pytest.fixture(scope="module")
def trained() -> VideoClassifier:
    videos, labels = moving_squares(1024, seed=0)
    return train_video_classifier((videos, labels), steps=100, lr=2e-3, batch_size=32, seed=0)


def test_learns_motion_classes(trained):
    videos, labels = moving_squares(256, seed=1)
    assert accuracy(trained, videos, labels) >= 0.95
    predicted = classify(trained, videos, batch_size=50)
    assert predicted.dtype == torch.int64 and predicted.shape == (256,)
    assert not trained.training
    assert trained.source.startswith("train_video_classifier(")


def test_blurred_clips_keep_their_class(trained):
    # Reconstructions are blurry; the detector must still read their motion.
    videos, labels = moving_squares(128, seed=2)
    blurred = torch.nn.functional.avg_pool3d(
        torch.nn.functional.pad(videos, (1, 1, 1, 1, 0, 0), mode="replicate"), (1, 3, 3), stride=1
    )
    assert accuracy(trained, blurred, labels) >= 0.9


def test_save_load_round_trip(tmp_path, trained):
    videos, _ = moving_squares(8, seed=3)
    folder = trained.save_pretrained(tmp_path / "detector")
    loaded = VideoClassifier.from_pretrained(folder)
    assert loaded.config == trained.config
    assert loaded.source == str(folder)
    assert not loaded.training
    assert torch.equal(predict_logits(loaded, videos), predict_logits(trained, videos))
    with pytest.raises(ValueError, match="LARPTokenizer"):
        import larp

        larp.LARPTokenizer.from_pretrained(folder)


def test_features_shape_dtype_and_any_size():
    model = VideoClassifier(tiny_config()).eval()
    videos = torch.rand(5, 3, 7, 20, 24)
    features = extract_features(model, videos, batch_size=2)
    assert features.shape == (5, 16) and features.dtype == torch.float64
    with torch.no_grad():
        assert torch.allclose(features, model.features(videos).double(), atol=1e-5)
        # a clip's result does not depend on its batch (GroupNorm, not BatchNorm)
        assert torch.allclose(model(videos[:1]), model(videos)[:1], atol=1e-5)
        assert model(torch.rand(2, 3, 1, 9, 9)).shape == (2, 4)  # a single tiny frame still works


def test_rejects_bad_videos():
    model = VideoClassifier(tiny_config())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(torch.rand(1, 3, 4, 8, 8) * 255)
    with pytest.raises(ValueError, match="shape"):
        model(torch.rand(3, 4, 8, 8))
    with pytest.raises(ValueError, match="labels must be in"):
        videos, labels = moving_squares(8, seed=0)
        train_video_classifier((videos, labels + 2), config=tiny_config(), steps=1)


def test_seeded_training_is_reproducible():
    videos, labels = moving_squares(64, seed=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # multi-threaded reductions may sum in another order
    try:
        state = torch.random.get_rng_state()
        runs = [
            train_video_classifier((videos, labels), config=tiny_config(), steps=4, batch_size=8, seed=seed)
            for seed in (7, 7, 8)
        ]
        assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    finally:
        torch.set_num_threads(threads)
    a, b, c = (run.state_dict() for run in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_data_sources_clips_batches_and_pairs():
    videos, labels = moving_squares(24, seed=5)
    clips = [{"video": v, "label": int(l)} for v, l in zip(videos, labels)]
    batches = [{"video": videos[i : i + 6], "label": labels[i : i + 6]} for i in range(0, 24, 6)]
    for data in (clips, iter(clips), batches, (videos, labels)):
        model = train_video_classifier(data, config=tiny_config(), steps=2, batch_size=8, seed=0)
        assert isinstance(model, VideoClassifier)
    # A one-shot iterator that runs dry before the last step is an error, not a silent short run.
    with pytest.raises(ValueError, match="ran out"):
        train_video_classifier(iter(clips), config=tiny_config(), steps=10, batch_size=8)


def test_augmentation_keeps_the_direction_of_motion():
    videos, labels = moving_squares(64, seed=6)
    augmented = augment(videos, torch.Generator().manual_seed(0))
    assert augmented.shape == videos.shape and 0 <= augmented.min() and augmented.max() <= 1

    def centroid_velocity(v: torch.Tensor) -> torch.Tensor:  # (n, 2) mean (dx, dy) per frame
        mass = v.sum(1)  # (n, t, h, w)
        grid = torch.arange(v.shape[-1]).float()
        total = mass.sum((2, 3)).clamp_min(1e-6)
        x = (mass.sum(2) * grid).sum(-1) / total
        y = (mass.sum(3) * grid).sum(-1) / total
        return torch.stack([x[:, -1] - x[:, 0], y[:, -1] - y[:, 0]], 1)

    moved = centroid_velocity(augmented)
    expected = DIRECTIONS[labels]
    # The motion's sign along its axis is unchanged (no flips or time reversal).
    assert ((moved * expected).sum(1) > 0).all()


def test_presets_and_config_validation():
    assert "synthetic-32" in VIDEO_CLASSIFIER_PRESETS
    model = VideoClassifier.from_preset("synthetic-32")
    assert model.config.num_classes == 4 and model.num_parameters() < 200_000
    with pytest.raises(ValueError, match="norm_groups"):
        VideoClassifierConfig(width=6)

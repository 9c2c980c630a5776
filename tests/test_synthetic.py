"""larp.data.synthetic: the seeded moving-shapes dataset (CPU, no files)."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.data import DataLoader

from larp.data.synthetic import BACKGROUNDS, CLASS_NAMES, SyntheticConfig, SyntheticVideos

# Unit direction of the centre of mass per translation class, (x, y) with y pointing down.
DIRECTIONS = {0: (1, 0), 1: (-1, 0), 2: (0, 1), 3: (0, -1), 4: (1, 1), 5: (-1, -1)}


def centre_of_mass(video: torch.Tensor) -> torch.Tensor:
    """(b, 3, t, s, s) clips on a black background -> (b, t, 2) intensity-weighted centres (x, y) in px."""
    mass = video.sum(1)  # (b, t, s, s)
    grid = torch.arange(video.shape[-1], dtype=torch.float32) + 0.5
    total = mass.sum((-1, -2))
    x = (mass.sum(-2) * grid).sum(-1) / total
    y = (mass.sum(-1) * grid).sum(-1) / total
    return torch.stack([x, y], dim=-1)


def test_shapes_range_and_dtype():
    data = SyntheticVideos(num_videos=10)
    item = data[3]
    assert set(item) == {"video", "label", "index"}
    assert item["video"].shape == (3, 16, 32, 32) and item["video"].dtype == torch.float32
    assert isinstance(item["label"], int) and item["label"] == 3 and item["index"] == 3
    assert len(data) == 10
    for background in BACKGROUNDS:
        batch = SyntheticVideos(num_videos=64, background=background, num_classes=8).get_batch(range(64))
        assert batch["video"].shape == (64, 3, 16, 32, 32)
        assert batch["video"].min() >= 0 and batch["video"].max() <= 1
        assert torch.isfinite(batch["video"]).all()
    other = SyntheticVideos(frames=8, size=20, object_size=(5, 8), num_videos=4)[0]["video"]
    assert other.shape == (3, 8, 20, 20)


def test_deterministic_in_seed_and_index_regardless_of_order():
    data = SyntheticVideos(num_videos=100, num_classes=8, background="noise", seed=7)
    single = torch.stack([data[i]["video"] for i in (42, 3, 99)])
    batch = data.get_batch([99, 42, 3, 42])["video"]
    assert torch.equal(batch[1], single[0]) and torch.equal(batch[0], single[2]) and torch.equal(batch[3], single[0])
    # a fresh object with the same config gives the same bits (no hidden state)
    again = SyntheticVideos(num_videos=100, num_classes=8, background="noise", seed=7)
    assert torch.equal(again[42]["video"], single[0])
    # the global RNG plays no part
    torch.manual_seed(123)
    assert torch.equal(data[3]["video"], single[1])
    # negative indices count from the end
    assert torch.equal(data[-1]["video"], single[2]) and data[-1]["index"] == 99
    with pytest.raises(IndexError):
        data[100]


def test_same_items_through_dataloader_workers():
    data = SyntheticVideos(num_videos=24, num_classes=4, seed=5)
    loader = DataLoader(data, batch_size=8, num_workers=2, shuffle=False)
    got = torch.cat([batch["video"] for batch in loader])
    assert torch.equal(got, data.get_batch(range(24))["video"])


def test_seeds_and_items_differ():
    a = SyntheticVideos(num_videos=16, seed=0).get_batch(range(16))["video"]
    b = SyntheticVideos(num_videos=16, seed=1).get_batch(range(16))["video"]
    assert ((a - b).flatten(1).abs().amax(1) > 0).all()  # another seed changes every clip
    assert len(torch.unique(a.flatten(1), dim=0)) == 16  # and the clips of one seed all differ


def test_labels_balanced():
    for num_classes in (4, 8, 3):
        data = SyntheticVideos(num_videos=num_classes * 10, num_classes=num_classes, size=8, object_size=(3, 4))
        labels = data.get_batch(range(len(data)))["label"]
        assert torch.equal(torch.bincount(labels), torch.full((num_classes,), 10))
        assert [data.label(i) for i in range(len(data))] == labels.tolist()
    assert SyntheticVideos(num_classes=8).class_names == CLASS_NAMES


@pytest.mark.parametrize("shape", ["square", "circle"])
def test_objects_move_in_labelled_direction(shape):
    data = SyntheticVideos(num_videos=160, num_classes=8, shapes=(shape,), seed=11)
    batch = data.get_batch(range(160))
    com = centre_of_mass(batch["video"])  # (b, t, 2)
    step = (com[:, 1:] - com[:, :-1]).mean(1)  # mean displacement per frame (x, y), px
    mass = batch["video"].sum((1, 3, 4))  # (b, t) total intensity per frame
    labels = batch["label"]
    for label, name in enumerate(CLASS_NAMES):
        chosen = labels == label
        assert chosen.sum() == 20
        if label in DIRECTIONS:
            expected = torch.tensor(DIRECTIONS[label], dtype=torch.float32)
            speed = step[chosen].norm(dim=1)
            assert ((speed >= 0.55) & (speed <= 1.25)).all(), (name, speed)  # 0.6-1.2 px/frame, capped at the edge
            cosine = step[chosen] @ expected / (speed * expected.norm())
            assert (cosine > 0.999).all(), (name, step[chosen])
            # the whole object stays in frame: its mass never drops at the borders
            spread = (mass[chosen].amax(1) - mass[chosen].amin(1)) / mass[chosen].amax(1)
            assert (spread < 0.03).all(), (name, spread)
        else:  # grow / shrink: the centre stays put and the area changes monotonically
            assert step[chosen].abs().max() < 0.05
            change = mass[chosen, 1:] - mass[chosen, :-1]
            assert (change > 0).all() if name == "grow" else (change < 0).all()


def test_objects_size_and_edges():
    hard = SyntheticVideos(num_videos=8, shapes=("square",), soft_edge=0.0).get_batch(range(8))["video"]
    soft = SyntheticVideos(num_videos=8, shapes=("square",)).get_batch(range(8))["video"]
    # hard edges: values are exactly background or object colour; soft edges add intermediate values
    assert len(torch.unique(hard[0, 0, 0])) <= 2 and len(torch.unique(soft[0, 0, 0])) > 2
    config = SyntheticConfig()
    area = (soft.amax(1) > 0).float().sum((-1, -2))  # covered pixels per frame
    assert area.min() >= (config.object_size[0] - 1) ** 2 and area.max() <= (config.object_size[1] + 2) ** 2


def test_config_validation_and_scaling():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticConfig(num_classes=9)
    with pytest.raises(ValueError, match="object_size"):
        SyntheticConfig(size=16, object_size=(12, 20))
    with pytest.raises(ValueError, match="background"):
        SyntheticConfig(background="white")
    with pytest.raises(ValueError, match="shapes"):
        SyntheticConfig(shapes=("triangle",))
    with pytest.raises(ValueError, match="speed"):
        SyntheticConfig(speed=(1.0, 0.5))
    big = SyntheticConfig().scaled(128)
    assert big.size == 128 and big.object_size == (48.0, 64.0) and big.speed == pytest.approx((2.4, 4.8))
    assert SyntheticConfig(object_size=[10, 12]).object_size == (10, 12)  # lists from YAML become tuples
    clip = SyntheticVideos(big, num_videos=2)[1]["video"]
    assert clip.shape == (3, 16, 128, 128)


def test_generation_speed():
    """Prints the throughput for up to 1000 clips (no assertion: shared CI machines vary; time-capped)."""
    data = SyntheticVideos(num_videos=100_000, num_classes=8)
    data.get_batch(range(32))  # warm-up

    def rate(render, total: int, per_call: int, budget: float = 1.5) -> float:
        done, start = 0, time.perf_counter()
        while done < total and time.perf_counter() - start < budget:
            render(done)
            done += per_call
        return done / (time.perf_counter() - start)

    batched = rate(lambda i: data.__getitems__(list(range(i, i + 32))), 1024, 32)
    single = rate(lambda i: data[i], 1000, 1)
    print(
        f"\nsynthetic 16x32x32 clips ({torch.get_num_threads()} threads): "
        f"{batched:.0f}/s in batches of 32, {single:.0f}/s one by one"
    )


def test_captions_name_what_the_clip_shows():
    """The captioned variant: the colour name is the hue of the rendered object, the shape fills its box
    like a square (1) or a disc (pi/4), the motion is the label; captions parse back to the attributes."""
    from larp.data.synthetic import CAPTION_TEMPLATES, COLOUR_NAMES, caption, colour_name, parse_caption

    data = SyntheticVideos(num_videos=96, num_classes=8, seed=4)
    before = data.get_batch(range(96))["video"].clone()
    items = data.attributes(range(96))
    assert torch.equal(data.get_batch(range(96))["video"], before)  # describing a clip renders nothing new
    for item, clip in zip(items, before):
        assert item["label"] == item["index"] % 8 and item["motion"] == CLASS_NAMES[item["label"]]
        middle = clip[:, 8]
        mask = middle.max(dim=0).values > 0.5
        rgb = middle[:, mask].mean(dim=1)
        high, low = rgb.max(), rgb.min()
        r, g, b = rgb.tolist()
        hue = ((g - b) / (high - low) % 6 if high == r else (b - r) / (high - low) + 2 if high == g
               else (r - g) / (high - low) + 4) / 6
        assert colour_name(float(hue)) == item["colour"], item
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        fill = mask.sum() / ((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
        assert (fill > 0.89) == (item["shape"] == "square"), (item, float(fill))
        assert item["caption"] == caption(item, (item["index"] // 8) % len(CAPTION_TEMPLATES))
        assert parse_caption(item["caption"]) == {k: item[k] for k in ("colour", "shape", "motion")}
    assert {colour_name(h / 12) for h in range(12)} == set(COLOUR_NAMES)
    assert colour_name(0.99) == "red" and colour_name(1 / 12 + 0.001) == "yellow"
    assert parse_caption("a red blue square moving down and right") == {"colour": None, "shape": "square",
                                                                        "motion": "down-right"}

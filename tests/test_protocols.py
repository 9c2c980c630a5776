"""Evaluation protocols: the paper's settings, strict overrides, deterministic clip choice and sharding."""

from __future__ import annotations

import random

import pytest

from larp.evaluation.protocols import PROTOCOLS, EvalProtocol, resolve_protocol, select_clips, shard


def test_paper_protocols():
    recon, gen, fp = PROTOCOLS["ucf-recon"], PROTOCOLS["ucf-gen"], PROTOCOLS["k600-fp"]
    assert set(PROTOCOLS) == {"ucf-recon", "ucf-gen", "k600-fp", "synthetic-recon", "synthetic-gen", "synthetic-fp"}
    assert {p.task for name, p in PROTOCOLS.items() if name.startswith("synthetic")} == {
        "reconstruction", "generation", "prediction"}
    assert all(PROTOCOLS[name].detector == "synthetic" and PROTOCOLS[name].size == 32
               for name in PROTOCOLS if name.startswith("synthetic"))
    for protocol in (recon, gen, fp):
        assert protocol.frames == 16 and protocol.size == 128 and protocol.detector == "i3d"
    assert recon.task == "reconstruction" and recon.clip_selection == "one-per-video"
    assert recon.num_samples is None and recon.deterministic_tokens and recon.precision == "fp16"
    assert recon.reference == {"fvd": 19.533, "psnr": 28.703, "lpips": 0.07546, "mse": 0.0017696}
    assert gen.task == "generation" and gen.clip_selection == "all-chunks"
    assert (gen.num_samples, gen.seed, gen.cfg_scale, gen.labels_from_clips) == (10_000, 42, 1.25, True)
    assert gen.reference["fvd"] == 57
    assert fp.task == "prediction" and fp.clip_selection == "all-chunks"
    assert (fp.num_samples, fp.seed, fp.condition_frames, fp.fvd_size) == (50_000, 42, 5, 64)
    assert fp.precision == "fp32" and fp.condition_tokens_stochastic and not fp.paste_condition_frames
    assert fp.reference["fvd"] == 5.1
    assert recon.to_dict()["reference"]["psnr"] == 28.703
    hash(gen)  # frozen and hashable despite the reference dict


def test_resolve_protocol_records_overrides():
    protocol, applied = resolve_protocol("ucf-gen", {"num_samples": 64, "seed": 42, "cfg_scale": 2})
    assert protocol.num_samples == 64 and protocol.cfg_scale == 2.0 and isinstance(protocol.cfg_scale, float)
    assert applied == {"num_samples": 64, "cfg_scale": 2.0}  # seed 42 is the default: nothing changed
    assert PROTOCOLS["ucf-gen"].num_samples == 10_000  # the registry is untouched
    same, none = resolve_protocol("k600-fp", {})
    assert same == PROTOCOLS["k600-fp"] and none == {}
    _, applied = resolve_protocol("k600-fp", {"fvd_size": None, "metrics": ["fvd", "psnr"]})
    assert applied == {"fvd_size": None, "metrics": ("fvd", "psnr")}
    # precisions are larp.precision's names, "auto" included (resolved per device when the run starts)
    _, applied = resolve_protocol("ucf-recon", {"precision": "auto", "generator_precision": "fp32"})
    assert applied == {"precision": "auto", "generator_precision": "fp32"}


def test_resolve_protocol_rejects_bad_input():
    with pytest.raises(ValueError, match=r"valid protocols are \['k600-fp', 'synthetic-fp', 'synthetic-gen', 'synthetic-recon', 'ucf-gen', 'ucf-recon'\]"):
        resolve_protocol("ucf-rfvd", {})
    with pytest.raises(ValueError, match="valid fields are .*num_samples"):
        resolve_protocol("ucf-gen", {"num_sample": 5})
    with pytest.raises(ValueError, match="cannot override"):
        resolve_protocol("ucf-gen", {"reference": {"fvd": 1.0}})
    with pytest.raises(ValueError, match="expected an integer"):
        resolve_protocol("ucf-gen", {"seed": "42"})
    with pytest.raises(ValueError, match="expected an integer"):
        resolve_protocol("ucf-gen", {"num_samples": 2.5})
    with pytest.raises(ValueError, match="expected one of"):
        resolve_protocol("ucf-recon", {"precision": "fp8"})
    with pytest.raises(ValueError, match="cfg_scale must be 1.0"):
        resolve_protocol("k600-fp", {"cfg_scale": 1.25})
    with pytest.raises(ValueError, match="at least 10 frames"):
        resolve_protocol("ucf-recon", {"frames": 8})
    with pytest.raises(ValueError, match="condition_frames"):
        EvalProtocol(name="x", task="prediction", dataset="d", condition_frames=16)


def _protocol(**fields) -> EvalProtocol:
    return EvalProtocol(name="test", task="generation", dataset="hand-made", **fields)


def test_all_chunks_on_hand_made_counts():
    protocol = _protocol(clip_selection="all-chunks")
    assert select_clips([16, 40, 5], protocol) == [(0, 0), (1, 0), (1, 16)]
    assert select_clips([15, 48], protocol) == [(1, 0), (1, 16), (1, 32)]
    # num_samples: the official draw, Random(seed).sample over the chunk indices, in sampled order.
    chunks = select_clips([100, 37, 64], protocol)
    picked = select_clips([100, 37, 64], _protocol(clip_selection="all-chunks", num_samples=4, seed=3))
    assert picked == [chunks[k] for k in random.Random(3).sample(range(len(chunks)), 4)]
    with pytest.raises(ValueError, match="only 3"):
        select_clips([16, 40, 5], _protocol(clip_selection="all-chunks", num_samples=4))
    with pytest.raises(ValueError, match="no clip"):
        select_clips([3, 5], protocol)


def test_one_per_video_is_seeded_and_order_independent():
    counts = [16, 40, 5, 200, 97, 33, 1000, 17]
    a = select_clips(counts, _protocol(seed=7))
    assert a == select_clips(counts, _protocol(seed=7))
    assert a != select_clips(counts, _protocol(seed=8))
    assert [video for video, _ in a] == list(range(len(counts)))
    for (_, start), count in zip(a, counts):
        assert 0 <= start <= max(0, count - 16)
    assert a[0][1] == 0 and a[2][1] == 0  # exactly 16 frames, and too short (the reader pads)
    # A video's start depends on (seed, index) only, not on the other videos.
    assert select_clips(counts[:4], _protocol(seed=7)) == a[:4]
    with pytest.raises(ValueError, match="have none"):
        select_clips([16, 0], _protocol())


def test_shard_covers_everything_once():
    items = select_clips([100, 37, 64, 250], _protocol(clip_selection="all-chunks"))
    for world_size in (1, 2, 3):
        parts = [shard(items, rank, world_size) for rank in range(world_size)]
        assert sorted(x for part in parts for x in part) == sorted(items)
        assert sum(len(part) for part in parts) == len(items)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="rank"):
        shard(items, 3, 3)
    with pytest.raises(ValueError, match="world_size"):
        shard(items, 0, 0)

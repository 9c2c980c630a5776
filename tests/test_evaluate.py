"""``larp evaluate`` and the evaluation runner: records, resuming, two processes, failures, the synthetic detector,
the refusal of unchecked detector files, torn caches, and every reported number against an independent replay."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import larp
from larp.cli.main import main
from larp.data.video_io import condition_clip, write_video
from larp.evaluation.clips import plan_batches
from larp.evaluation.detectors import ClassifierDetector
from larp.evaluation.fvd import frechet_distance
from larp.evaluation.image_metrics import codebook_usage, psnr
from larp.evaluation.protocols import resolve_protocol
from larp.evaluation.runner import ClipSource, Models, evaluate, synthetic_detector
from larp.evaluation.video_classifier import VideoClassifier, VideoClassifierConfig, extract_features
from larp.precision import autocast
from larp.seeding import derive_seed
from tests.conftest import perturb_

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


class ProjectionI3D(nn.Module):
    """A stand-in with the I3D's call signature: a fixed random projection of the pooled clip to 400 features."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.randn(3 * 4 * 4 * 4, 400, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = True,
                return_features: bool = True) -> torch.Tensor:
        return F.adaptive_avg_pool3d(x, (4, 4, 4)).flatten(1) @ self.weight


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("LARP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LARP_OFFLINE", "1")
    monkeypatch.delenv("LARP_I3D_WEIGHTS", raising=False)
    monkeypatch.delenv("LARP_LPIPS_WEIGHTS", raising=False)
    return tmp_path


@pytest.fixture
def standin(env):
    path = env / "i3d_standin.pt"
    torch.jit.save(torch.jit.script(ProjectionI3D()), str(path))
    return path


@pytest.fixture
def videos(env):
    folder = env / "videos"
    for label, name in enumerate(("a", "b")):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            clip = torch.rand(3, 20, 40, 40, generator=torch.Generator().manual_seed(10 * label + i))
            write_video(folder / name / f"{i}.mp4", clip, fps=8)
    return folder


def _clips(source: ClipSource) -> tuple[torch.Tensor, torch.Tensor]:
    """All clips of a source (n, 3, t, h, w) and their labels (n,), in the source's order."""
    return torch.stack([source.read(item) for item in source.items]), torch.tensor([source.label(i) for i in source.items])


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().transpose(1, 2), ids, reduction="none").mean(1)


def test_reconstruction_cli_records_metrics_fvd_and_overrides(env, standin, videos, tiny_tokenizer, capsys, caplog):
    tokenizer = tiny_tokenizer.save_pretrained(env / "tok")
    out = env / "result.json"
    args = ["evaluate", "reconstruction", "--protocol", "ucf-recon", "--data", str(videos), "--tokenizer", str(tokenizer),
            "--detector", str(standin), "--trust-detector", "--no-lpips", "--set", "size=32", "precision=bf16",
            "--batch-size", "4", "-o", str(out)]
    assert main(args) == 0
    line = capsys.readouterr().out
    assert line.startswith("ucf-recon: FVD") and "PSNR" in line and "SSIM" in line and "6 clips" in line
    assert "trusted by the user" in line
    record = json.loads(out.read_text())
    assert record["detector"] == {"kind": "i3d", "name": f"i3d:{standin}", "pinned": False,
                                  "sha256": hashlib.sha256(standin.read_bytes()).hexdigest(),
                                  "detector_trusted_by_user": True}
    assert "lpips" not in record["results"] and record["sources"]["lpips"] is False
    assert record["overrides"] == {"size": 32, "precision": "bf16", "batch_size": 4, "detector": str(standin)}
    assert not record["comparable_to_reference"] and record["protocol"]["size"] == 32
    assert record["counts"] == {"clips": 6, "skipped": 0, "selected": 6, "real_feature_clips": 6}
    assert record["effective_precision"] == {"tokenizer": "bf16", "generator": None}
    # the numbers, recomputed independently: argmax VQ under bf16 autocast, clip by clip
    protocol, _ = resolve_protocol("ucf-recon", {"size": 32})
    real, _ = _clips(ClipSource(str(videos), protocol))
    with torch.no_grad(), autocast("bf16", "cpu"):  # in the run's batches of 4: same kernels, same ids
        ids = torch.cat([tiny_tokenizer.encode(batch, stochastic=False) for batch in real.split(4)])
        fake = torch.cat([tiny_tokenizer.decode(i, num_frames=16, clamp=True).float() for i in ids.split(4)])
    usage, perplexity = codebook_usage(ids, tiny_tokenizer.config.quantizer.codebook_size)
    results = record["results"]
    assert results["psnr"] == pytest.approx(psnr(real, fake).mean().item(), rel=1e-4)
    assert results["mse"] == pytest.approx((fake - real).pow(2).mean().item(), rel=1e-4)
    assert (results["codebook_usage"], results["codebook_perplexity"]) == pytest.approx((usage, perplexity), rel=1e-6)
    # the real statistics are cached: a second run reads them, with the same value; a torn frame-count cache
    # is counted again (with a warning naming it), not fatal
    assert list((env / "cache" / "fvd-stats").glob("ucf-recon-*.safetensors"))
    (counts,) = (env / "cache" / "frame-counts").glob("*.json")
    counts.write_text("[20, 20, 2")
    caplog.set_level("WARNING")
    assert main(args + ["--output", str(env / "again.json")]) == 0
    assert f"ignoring the unreadable frame-count cache {counts}" in caplog.text
    assert json.loads((env / "again.json").read_text())["results"]["fvd"] == pytest.approx(results["fvd"])


def test_unknown_detector_file_is_refused_before_it_runs(env, standin, videos, tiny_tokenizer, capsys, monkeypatch):
    def forbidden(*args, **kwargs):
        pytest.fail("torch.jit.load ran on a detector file nobody vouched for")

    monkeypatch.setattr(torch.jit, "load", forbidden)
    out = env / "result.json"
    args = ["evaluate", "reconstruction", "--data", str(videos), "--tokenizer",
            str(tiny_tokenizer.save_pretrained(env / "tok")), "--set", "size=32", "precision=fp32", "--no-lpips",
            "--detector", str(standin), "-o", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert hashlib.sha256(standin.read_bytes()).hexdigest() in err and "--trust-detector" in err
    monkeypatch.setenv("LARP_I3D_WEIGHTS", str(standin))  # the same file through the environment
    assert main(args[:-4] + ["-o", str(out)]) == 1
    assert "--trust-detector" in capsys.readouterr().err and not out.exists()


def test_precision_follows_the_one_rule(env, videos, tiny_tokenizer, capsys):
    """ucf-recon asks for fp16, which a CPU cannot run: refused with the override to use, not silently bf16."""
    args = ["evaluate", "reconstruction", "--data", str(videos), "--tokenizer",
            str(tiny_tokenizer.save_pretrained(env / "tok")), "--detector", "none", "--no-lpips", "--set", "size=32"]
    assert main(args + ["-o", str(env / "r.json")]) == 1
    err = capsys.readouterr().err
    assert "precision=fp16" in err and "--set precision=bf16" in err and not (env / "r.json").exists()
    assert main(args + ["precision=auto", "-o", str(env / "r.json")]) == 0
    assert json.loads((env / "r.json").read_text())["effective_precision"]["tokenizer"] == "fp32"


def test_missing_weights_fail_clearly(env, videos, tiny_tokenizer, capsys):
    tokenizer = str(tiny_tokenizer.save_pretrained(env / "tok"))
    base = ["evaluate", "reconstruction", "--data", str(videos), "--tokenizer", tokenizer, "--set", "size=32",
            "precision=fp32"]
    assert main(base + ["--no-lpips"]) == 1
    err = capsys.readouterr().err
    assert "LARP_I3D_WEIGHTS" in err and "--detector none" in err
    assert main(base + ["--detector", "none"]) == 1
    err = capsys.readouterr().err
    assert "LARP_LPIPS_WEIGHTS" in err and "--no-lpips" in err
    assert main(base + ["--detector", "none", "--no-lpips", "-o", str(env / "r.json")]) == 0
    assert "no FVD" in capsys.readouterr().out
    assert main(["evaluate", "reconstruction", "--tokenizer", tokenizer]) == 1
    assert "needs --data" in capsys.readouterr().err
    assert main(["evaluate", "generation", "--protocol", "ucf-recon", "--data", str(videos), "--tokenizer", tokenizer]) == 1
    assert "reconstruction protocol" in capsys.readouterr().err


def _generation_setup(tmp_path):
    torch.manual_seed(0)
    tokenizer = perturb_(larp.LARPTokenizer.from_preset("larp-tiny"), seed=1).eval()
    generator = perturb_(larp.LARPGenerator.from_preset("ar-tiny"), seed=2).eval()
    classifier = VideoClassifier(VideoClassifierConfig(num_classes=4, width=4, num_stages=2, norm_groups=2, feature_dim=8))
    protocol, applied = resolve_protocol("synthetic-gen", {"num_samples": 12, "batch_size": 4})
    models = Models(tokenizer=tokenizer, generator=generator, detector=ClassifierDetector(classifier))
    return protocol, applied, models


def _run(protocol, applied, models, work_dir, **kwargs):
    return evaluate("generation", protocol, models, ClipSource("synthetic", protocol), overrides=applied,
                    sources={"data": "synthetic"}, work_dir=work_dir, progress=False, **kwargs)


def _replay_generation(protocol, models) -> dict[str, float]:
    """The generation protocol's numbers computed again from the models' public methods: batch k of the
    clips, sampled with a generator seeded by derive_seed(protocol.seed, k) (the runner's documented rule)."""
    real, labels = _clips(ClipSource("synthetic", protocol))
    tokenizer, generator, detector = models.tokenizer, models.generator, models.detector
    nll_sampled, nll_real, correct, fake = [], [], [], []
    with torch.no_grad():
        for k, (clips, cond) in enumerate(zip(real.split(protocol.batch_size), labels.split(protocol.batch_size))):
            rng = torch.Generator().manual_seed(derive_seed(protocol.seed, k))
            ids = generator.generate(cond, cfg_scale=protocol.cfg_scale, temperature=protocol.temperature,
                                     top_k=protocol.top_k, top_p=protocol.top_p, generator=rng)
            nll_sampled.append(_nll(generator(ids, cond), ids))
            real_ids = tokenizer.encode(clips, stochastic=False)
            nll_real.append(_nll(generator(real_ids, cond), real_ids))
            fake.append(tokenizer.decode(ids, num_frames=protocol.frames, clamp=True))
            correct.append((detector.predict(fake[-1]) == cond).float())
    fvd = frechet_distance(detector.features(real), detector.features(torch.cat(fake)))
    return {"nll_sampled": torch.cat(nll_sampled).mean().item(), "nll_real": torch.cat(nll_real).mean().item(),
            "class_accuracy": torch.cat(correct).mean().item(), "fvd": fvd}


def test_generation_numbers_match_a_replay_and_resume_to_the_same_result(env):
    protocol, applied, models = _generation_setup(env)
    full = _run(protocol, applied, models, env / "full")
    assert full["counts"]["clips"] == 12 and full["results"]["chance_accuracy"] == 0.25
    expected = _replay_generation(protocol, models)
    assert {k: full["results"][k] for k in expected} == pytest.approx(expected, rel=1e-5)
    assert full["effective_precision"] == {"tokenizer": "fp32", "generator": "fp32"}
    assert _run(protocol, applied, models, env / "cut", stop_after=2) is None  # "killed" after 2 of 3 batches
    resumed = _run(protocol, applied, models, env / "cut")
    assert resumed["results"] == pytest.approx(full["results"], rel=1e-9)


def test_torn_statistics_are_ignored_with_a_warning(env, caplog):
    protocol, applied, models = _generation_setup(env)
    full = _run(protocol, applied, models, env / "full")
    (cached,) = (env / "cache" / "fvd-stats").glob("*.safetensors")
    cached.write_bytes(cached.read_bytes()[:100])  # torn, as by a kill in a non-atomic write
    assert _run(protocol, applied, models, env / "cut", stop_after=1) is None
    (partial,) = (env / "cut").glob("partial-*.pt")
    partial.write_bytes(partial.read_bytes()[:50])
    caplog.set_level("WARNING")
    again = _run(protocol, applied, models, env / "cut")
    assert f"ignoring the unreadable feature-statistics cache {cached}" in caplog.text
    assert f"ignoring the unreadable partial statistics {partial}" in caplog.text
    assert again["results"] == pytest.approx(full["results"], rel=1e-9)
    assert again["counts"]["real_feature_clips"] == 12  # recomputed, and the cache rewritten whole
    assert _run(protocol, applied, models, env / "third")["results"] == pytest.approx(full["results"], rel=1e-9)


def test_batches_are_shared_out_by_strides():
    items = [(i, 0) for i in range(10)]
    plans = [plan_batches(items, 3, rank, 2) for rank in range(2)]
    assert plans[0].batches == plans[1].batches and len(plans[0].batches) == 4
    assert (plans[0].mine, plans[1].mine) == ([0, 2], [1, 3])
    assert plans[0].clips(plans[0].mine) == 6 and plans[1].clips(plans[1].mine) == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_process_run(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LARP_CACHE=os.path.join(root, "cache"), LARP_OFFLINE="1")
    torch.set_num_threads(1)
    from larp.training import distributed as dist

    info = dist.init_distributed("cpu")
    try:
        protocol, applied, models = _generation_setup(root)
        record = _run(protocol, applied, models, os.path.join(root, "ddp"), info=info)
        if rank == 0:
            with open(os.path.join(root, "ddp.json"), "w") as f:
                json.dump(record, f)
    finally:
        dist.cleanup(info)


def test_two_gloo_processes_equal_one(env):
    mp.spawn(_two_process_run, args=(2, _free_port(), str(env)), nprocs=2, join=True)
    ddp = json.loads((env / "ddp.json").read_text())
    protocol, applied, models = _generation_setup(env)
    single = _run(protocol, applied, models, env / "single")
    assert ddp["processes"] == 2 and ddp["counts"] == single["counts"]
    assert ddp["results"] == pytest.approx(single["results"], rel=1e-6)


def test_the_synthetic_detector_separates_real_from_corrupted_clips():
    """A quickly trained detector: the distance to real clips grows with the noise added to them."""
    from larp.data.synthetic import SyntheticVideos
    from larp.evaluation.video_classifier import train_video_classifier

    config = VideoClassifierConfig(num_classes=4, width=8, num_stages=2, norm_groups=2, feature_dim=32)
    classifier = train_video_classifier(SyntheticVideos(num_videos=512, seed=0), config=config, steps=25, batch_size=32)
    real = torch.stack([SyntheticVideos(num_videos=128, seed=1)[i]["video"] for i in range(128)])
    other = torch.stack([SyntheticVideos(num_videos=128, seed=2)[i]["video"] for i in range(128)])
    noise = torch.randn(other.shape, generator=torch.Generator().manual_seed(0))
    reference = extract_features(classifier, real)
    distances = [frechet_distance(reference, extract_features(classifier, (other + s * noise).clamp(0, 1)))
                 for s in (0.0, 0.1, 0.3)]
    assert distances[0] < distances[1] < distances[2]


def test_reconstruction_reports_lpips_when_weights_are_given(env, videos, tiny_tokenizer, tmp_path):
    from larp.losses.perceptual import convert_lpips_weights, load_lpips
    from tests.test_perceptual import fake_lpips_state, fake_vgg16_state

    torch.save(fake_vgg16_state(), tmp_path / "vgg16.pth")
    torch.save(fake_lpips_state(), tmp_path / "vgg.pth")
    weights = convert_lpips_weights(tmp_path / "vgg16.pth", tmp_path / "vgg.pth", tmp_path / "lpips.safetensors")
    out = tmp_path / "r.json"
    assert main(["evaluate", "reconstruction", "--data", str(videos), "--tokenizer",
                 str(tiny_tokenizer.save_pretrained(tmp_path / "tok")), "--set", "size=32", "precision=fp32",
                 "--num-samples", "2", "--detector", "none", "--lpips-weights", str(weights), "-o", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["sources"]["lpips"] is True and record["detector"] is None
    # expected: the mean over clips and frames of LPIPS(reconstruction, clip), computed here on its own
    protocol, _ = resolve_protocol("ucf-recon", {"size": 32, "num_samples": 2})
    real, _ = _clips(ClipSource(str(videos), protocol))
    with torch.no_grad():
        fake = tiny_tokenizer.decode(tiny_tokenizer.encode(real, stochastic=False), num_frames=16, clamp=True)
        expected = load_lpips(weights).forward_video(fake, real).item()
    assert record["results"]["lpips"] == pytest.approx(expected, rel=1e-5)


def test_prediction_scores_the_predicted_frames(env):
    torch.manual_seed(0)
    tokenizer = perturb_(larp.LARPTokenizer.from_preset("larp-tiny"), seed=1).eval()
    generator = perturb_(larp.LARPGenerator.from_preset("ar-fp-tiny"), seed=2).eval()
    protocol, applied = resolve_protocol("synthetic-fp", {"num_samples": 4, "batch_size": 2})
    models = Models(tokenizer=tokenizer, generator=generator, detector=None)
    record = evaluate("prediction", protocol, models, ClipSource("synthetic", protocol), overrides=applied,
                      sources={}, work_dir=env / "fp", progress=False)
    assert record["counts"]["clips"] == 4 and "fvd" not in record["results"]
    assert protocol.condition_frames == 5 and not list((env / "fp").glob("partial-*"))  # removed when complete
    # expected: condition on the first 5 frames (argmax VQ), sample with batch k's seed, PSNR of frames 5..15 only
    real, _ = _clips(ClipSource("synthetic", protocol))
    expected = []
    with torch.no_grad():
        for k, clips in enumerate(real.split(2)):
            rng = torch.Generator().manual_seed(derive_seed(protocol.seed, k))
            cond = tokenizer.encode(condition_clip(clips, 5), stochastic=False, generator=rng)
            fake = tokenizer.decode(generator.generate(cond, generator=rng), num_frames=16, clamp=True)
            expected.append(psnr(clips[:, :, 5:], fake[:, :, 5:]))
    assert record["results"]["psnr"] == pytest.approx(torch.cat(expected).mean().item(), rel=1e-5)
    assert record["results"]["nll_sampled"] > 0 and record["effective_precision"]["generator"] == "fp32"


def test_training_the_synthetic_detector_is_logged_and_recorded(env, caplog):
    protocol, applied = resolve_protocol("synthetic-recon", {"num_samples": 8, "batch_size": 8})
    folder = env / "detector"
    caplog.set_level("INFO", logger="larp.evaluation.runner")
    detector = synthetic_detector(protocol, torch.device("cpu"), folder=folder, steps=1)
    assert f"no synthetic-data detector in {folder}: training one now (1 steps)" in caplog.text
    assert detector.describe() == {"kind": "synthetic-classifier", "name": f"video-classifier:{folder}",
                                   "sha256": detector.sha256, "trained_now": True, "path": str(folder)}
    again = synthetic_detector(protocol, torch.device("cpu"), folder=folder, steps=1)
    assert again.provenance == {"trained_now": False, "path": str(folder)} and again.sha256 == detector.sha256
    tokenizer = perturb_(larp.LARPTokenizer.from_preset("larp-tiny"), seed=1).eval()
    record = evaluate("reconstruction", protocol, Models(tokenizer, detector=detector),
                      ClipSource("synthetic", protocol), overrides=applied, sources={}, work_dir=env / "w",
                      progress=False)
    assert record["detector"]["trained_now"] is True and record["detector"]["path"] == str(folder)

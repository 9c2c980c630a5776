"""``larp evaluate`` and the evaluation runner: records, resuming, two processes, failures, the synthetic detector."""

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
from larp.data.video_io import write_video
from larp.evaluation.detectors import ClassifierDetector
from larp.evaluation.fvd import frechet_distance
from larp.evaluation.protocols import resolve_protocol
from larp.evaluation.runner import ClipSource, Models, evaluate
from larp.evaluation.video_classifier import VideoClassifier, VideoClassifierConfig, extract_features
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


def test_reconstruction_cli_records_metrics_fvd_and_overrides(env, standin, videos, tiny_tokenizer, capsys):
    tokenizer = tiny_tokenizer.save_pretrained(env / "tok")
    out = env / "result.json"
    args = ["evaluate", "reconstruction", "--protocol", "ucf-recon", "--data", str(videos), "--tokenizer", str(tokenizer),
            "--detector", str(standin), "--no-lpips", "--set", "size=32", "--batch-size", "4", "-o", str(out)]
    assert main(args) == 0
    line = capsys.readouterr().out
    assert line.startswith("ucf-recon: FVD") and "PSNR" in line and "SSIM" in line and "6 clips" in line
    record = json.loads(out.read_text())
    assert {"psnr", "ssim", "mse", "fvd", "codebook_usage"} <= set(record["results"])
    assert "lpips" not in record["results"] and record["sources"]["lpips"] is False
    assert record["detector"]["sha256"] == hashlib.sha256(standin.read_bytes()).hexdigest()
    assert record["overrides"] == {"size": 32, "batch_size": 4, "detector": str(standin)}
    assert not record["comparable_to_reference"] and record["protocol"]["size"] == 32
    assert record["counts"] == {"clips": 6, "skipped": 0, "selected": 6, "real_feature_clips": 6}
    assert record["effective_precision"]["tokenizer"] == "bf16"  # fp16 autocast becomes bf16 on a CPU
    # the real statistics are cached: a second run reads them, with the same value
    assert list((env / "cache" / "fvd-stats").glob("ucf-recon-*.safetensors"))
    assert main(args + ["-o", str(env / "again.json")]) == 0
    assert json.loads((env / "again.json").read_text())["results"]["fvd"] == pytest.approx(record["results"]["fvd"])


def test_missing_weights_fail_clearly(env, videos, tiny_tokenizer, capsys):
    tokenizer = str(tiny_tokenizer.save_pretrained(env / "tok"))
    base = ["evaluate", "reconstruction", "--data", str(videos), "--tokenizer", tokenizer, "--set", "size=32"]
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


def test_generation_resumes_to_the_same_result(env):
    protocol, applied, models = _generation_setup(env)
    full = _run(protocol, applied, models, env / "full")
    assert full["counts"]["clips"] == 12 and 0 <= full["results"]["class_accuracy"] <= 1
    assert full["results"]["chance_accuracy"] == 0.25 and full["results"]["nll_sampled"] > 0
    assert full["results"]["nll_real"] > 0
    assert _run(protocol, applied, models, env / "cut", stop_after=2) is None  # "killed" after 2 of 3 batches
    resumed = _run(protocol, applied, models, env / "cut")
    assert resumed["results"] == pytest.approx(full["results"], rel=1e-9)


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
        record = _run(protocol, applied, models, os.path.join(root, "ddp"), info=info,
                      reduce_sum=lambda t: dist.all_reduce_sum(t, info))
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
    classifier = train_video_classifier(SyntheticVideos(num_videos=512, seed=0), config=config, steps=40, batch_size=32)
    real = torch.stack([SyntheticVideos(num_videos=256, seed=1)[i]["video"] for i in range(256)])
    other = torch.stack([SyntheticVideos(num_videos=256, seed=2)[i]["video"] for i in range(256)])
    noise = torch.randn(other.shape, generator=torch.Generator().manual_seed(0))
    reference = extract_features(classifier, real)
    distances = [frechet_distance(reference, extract_features(classifier, (other + s * noise).clamp(0, 1)))
                 for s in (0.0, 0.1, 0.3)]
    assert distances[0] < distances[1] < distances[2]


def test_reconstruction_reports_lpips_when_weights_are_given(env, videos, tiny_tokenizer, tmp_path):
    from larp.losses.perceptual import convert_lpips_weights
    from tests.test_perceptual import fake_lpips_state, fake_vgg16_state

    torch.save(fake_vgg16_state(), tmp_path / "vgg16.pth")
    torch.save(fake_lpips_state(), tmp_path / "vgg.pth")
    weights = convert_lpips_weights(tmp_path / "vgg16.pth", tmp_path / "vgg.pth", tmp_path / "lpips.safetensors")
    out = tmp_path / "r.json"
    assert main(["evaluate", "reconstruction", "--data", str(videos), "--tokenizer",
                 str(tiny_tokenizer.save_pretrained(tmp_path / "tok")), "--set", "size=32", "--detector", "none",
                 "--lpips-weights", str(weights), "-o", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["results"]["lpips"] > 0 and record["sources"]["lpips"] is True


def test_prediction_scores_the_predicted_frames(env):
    torch.manual_seed(0)
    tokenizer = perturb_(larp.LARPTokenizer.from_preset("larp-tiny"), seed=1).eval()
    generator = perturb_(larp.LARPGenerator.from_preset("ar-fp-tiny"), seed=2).eval()
    protocol, applied = resolve_protocol("synthetic-fp", {"num_samples": 4, "batch_size": 2})
    models = Models(tokenizer=tokenizer, generator=generator, detector=None)
    record = evaluate("prediction", protocol, models, ClipSource("synthetic", protocol), overrides=applied,
                      sources={}, work_dir=env / "fp", progress=False)
    assert record["counts"]["clips"] == 4 and record["results"]["psnr"] > 0 and "fvd" not in record["results"]
    assert protocol.condition_frames == 5 and not list((env / "fp").glob("partial-*"))  # removed when complete
